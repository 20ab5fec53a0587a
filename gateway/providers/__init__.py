"""Vendor knowledge behind a small interface: one module per provider."""

from __future__ import annotations

from gateway.providers.base import Provider
from gateway.providers.elevenlabs import ElevenLabsProvider
from gateway.providers.mistral import MistralProvider
from gateway.settings import Settings


def make_providers(settings: Settings) -> dict[str, Provider]:
    return {
        "mistral": MistralProvider(),
        "elevenlabs": ElevenLabsProvider(settings.elevenlabs_usd_per_credit),
    }
