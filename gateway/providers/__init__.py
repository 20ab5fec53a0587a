"""Vendor knowledge behind a small interface: one module per provider."""

from __future__ import annotations

from gateway.providers.base import Provider
from gateway.providers.mistral import MistralProvider


def make_providers() -> dict[str, Provider]:
    return {"mistral": MistralProvider()}
