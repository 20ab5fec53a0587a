"""Vendor knowledge behind a small interface: one module per provider."""

from __future__ import annotations

from gateway.errors import Conflict
from gateway.providers.base import Provider
from gateway.providers.elevenlabs import ElevenLabsProvider
from gateway.providers.mistral import MistralProvider
from gateway.settings import Settings


def make_providers(settings: Settings) -> dict[str, Provider]:
    return {
        "mistral": MistralProvider(),
        "elevenlabs": ElevenLabsProvider(settings.elevenlabs_usd_per_credit),
    }


class UnknownProvider(Conflict, LookupError):
    """A record names a provider this gateway does not have (a spool or database written by
    another version): never parsed as some other vendor's call."""


def provider_named(providers: dict[str, Provider], name: str) -> Provider:
    try:
        return providers[name]
    except KeyError:
        known = ", ".join(sorted(providers))
        raise UnknownProvider(f"no provider named {name!r} (known: {known})") from None
