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


# Providers as OpenTelemetry names them, by our provider name (the `provider` of a record).
GENAI = {p.name: p for p in (MistralProvider, ElevenLabsProvider)}


def genai_names(provider: str | None, endpoint: str, agent: bool) -> tuple[str, str]:
    """(gen_ai.provider.name, gen_ai.operation.name) of a call. An endpoint with no GenAI
    operation (files, models, voices, moderations...) keeps its own kind as the operation,
    as the semantic conventions allow for a provider-specific one; an unknown provider is
    named as we name it."""
    kind = GENAI.get(provider or "mistral")
    if kind is None:
        return str(provider), endpoint
    operation = kind.genai_operations.get(endpoint, endpoint)
    if operation == "chat" and endpoint == "conversations" and agent:
        operation = "invoke_agent"
    return kind.genai_name, operation


class UnknownProvider(Conflict, LookupError):
    """A record names a provider this gateway does not have (a spool or database written by
    another version): never parsed as some other vendor's call."""


def provider_named(providers: dict[str, Provider], name: str) -> Provider:
    try:
        return providers[name]
    except KeyError:
        known = ", ".join(sorted(providers))
        raise UnknownProvider(f"no provider named {name!r} (known: {known})") from None
