"""The cost model: what a recorded call cost in USD, from a price table.

Mistral's responses carry token counts (and pages or audio seconds) but never money, so the
gateway prices each call itself. The bundled `prices.toml` holds the published prices with the
date and source of its figures; a user file given by --prices (TOML or JSON, same shape)
replaces or adds entries model by model, so a new model or a price change needs no release.
Unknown models cost None (not 0): the UI lists them as unpriced instead of reporting $0.
"""

from __future__ import annotations

import json
import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import UserError

if TYPE_CHECKING:
    from gateway.providers.base import Parsed

CACHED_SHARE = 0.10  # Mistral bills cached input tokens at 10% of the input price
TOKEN_KEYS = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok")
UNITS = {
    "page": ("pages", 1.0),
    "audio_minute": ("audio_seconds", 60.0),
    "character": ("characters", 1.0),
}  # unit -> (key in `units`, amount per unit)


class PriceFileError(UserError, ValueError):
    """A price file that cannot be read or has a bad entry; the message is one line."""


def _read(path: str, text: str) -> dict[str, Any]:
    try:
        if path.lower().endswith(".json") or (
            not path.lower().endswith(".toml") and text.lstrip().startswith("{")
        ):
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        kind = "JSON" if isinstance(e, json.JSONDecodeError) else "TOML"
        raise PriceFileError(f"{path}: not valid {kind}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise PriceFileError(f"{path}: no 'models' table")
    for key in ("as_of", "source"):
        if key in data and not isinstance(data[key], str):
            raise PriceFileError(f"{path}: '{key}' must be a string")
    return data


def _entry(path: str, name: Any, entry: Any) -> dict[str, float | str]:
    where = f"{path}: model {name!r}"
    if not isinstance(name, str) or not name.strip():
        raise PriceFileError(f"{path}: model names must be non-empty strings, got {name!r}")
    if not isinstance(entry, dict):
        raise PriceFileError(f"{where}: entry must be a table of prices")
    unknown = set(entry) - {*TOKEN_KEYS, "unit", "per_unit_usd"}
    if unknown:
        raise PriceFileError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    out: dict[str, float | str] = {}
    for key, value in entry.items():
        if key == "unit":
            if value not in UNITS:
                raise PriceFileError(
                    f"{where}: unit must be one of {', '.join(UNITS)}, got {value!r}"
                )
            out[key] = value
        elif (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise PriceFileError(f"{where}: {key} must be a number >= 0, got {value!r}")
        else:
            out[key] = float(value)
    if ("unit" in out) != ("per_unit_usd" in out):
        raise PriceFileError(f"{where}: unit and per_unit_usd go together")
    if any(k in out for k in TOKEN_KEYS):
        if "input_per_mtok" not in out or "output_per_mtok" not in out:
            raise PriceFileError(f"{where}: needs both input_per_mtok and output_per_mtok")
        cached = round(float(out["input_per_mtok"]) * CACHED_SHARE, 10)
        out.setdefault("cached_input_per_mtok", cached)
    elif "unit" not in out:
        raise PriceFileError(f"{where}: no price (token prices or unit with per_unit_usd)")
    return out


FINE_TUNING_KEYS = ("training_per_mtok", "storage_per_month_usd")


def _number(where: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PriceFileError(f"{where}: {key} must be a number >= 0, got {value!r}")
    if value < 0:
        raise PriceFileError(f"{where}: {key} must be a number >= 0, got {value!r}")
    return float(value)


def _fine_tuning(path: str, section: Any, into: FineTuningPrices) -> None:
    """A file's [fine_tuning] table over `into`: as_of, minimum_fee_usd, and per base model
    training_per_mtok and storage_per_month_usd."""
    if not isinstance(section, dict):
        raise PriceFileError(f"{path}: fine_tuning must be a table")
    unknown = set(section) - {"as_of", "minimum_fee_usd", "models"}
    if unknown:
        raise PriceFileError(f"{path}: fine_tuning: unknown key(s) {', '.join(sorted(unknown))}")
    if "as_of" in section:
        if not isinstance(section["as_of"], str):
            raise PriceFileError(f"{path}: fine_tuning.as_of must be a string")
        into.as_of = section["as_of"]
    if "minimum_fee_usd" in section:
        into.minimum_fee_usd = _number(
            f"{path}: fine_tuning", "minimum_fee_usd", section["minimum_fee_usd"]
        )
    models = section.get("models", {})
    if not isinstance(models, dict):
        raise PriceFileError(f"{path}: fine_tuning.models must be a table")
    for name, entry in models.items():
        where = f"{path}: fine-tuning model {name!r}"
        if not isinstance(entry, dict) or set(entry) != set(FINE_TUNING_KEYS):
            raise PriceFileError(f"{where}: needs exactly {' and '.join(FINE_TUNING_KEYS)}")
        into.models[str(name).strip()] = {k: _number(where, k, entry[k]) for k in FINE_TUNING_KEYS}


class FineTuningPrices:
    """Training price per base model, the minimum fee per job, storage per model-month."""

    def __init__(self) -> None:
        self.as_of = ""
        self.minimum_fee_usd = 0.0
        self.models: dict[str, dict[str, float]] = {}

    def job_cost(self, base_model: str | None, trained_tokens: int | None) -> float:
        """A job's cost: its trained tokens at the base model's training price, at least the
        minimum fee; the minimum fee alone while the tokens are unknown (or unpriced)."""
        entry = self.models.get((base_model or "").strip())
        if entry is None or trained_tokens is None:
            return self.minimum_fee_usd
        trained = trained_tokens * entry["training_per_mtok"] / 1_000_000
        return round(max(self.minimum_fee_usd, trained), 10)

    def storage_per_month(self, base_model: str) -> float | None:
        """A fine-tuned model's monthly storage fee (by its base model); None: no price."""
        entry = self.models.get(base_model.strip())
        return None if entry is None else entry["storage_per_month_usd"]

    def to_api(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of,
            "minimum_fee_usd": self.minimum_fee_usd,
            "models": dict(self.models),
        }


class PriceTable:
    """Prices per model name (exact, case-sensitive) and the cost of a call."""

    def __init__(self, as_of: str, source: str, models: dict[str, dict[str, float | str]]):
        self.as_of = as_of
        self.source = source
        self.models = models
        self.fine_tuning = FineTuningPrices()

    @classmethod
    def load(cls, path: str | None = None) -> PriceTable:
        """The bundled table, then the user file at `path` (if any) entry by entry over it."""
        bundled = resources.files("gateway.capture").joinpath("prices.toml")
        tables = [("gateway/capture/prices.toml", bundled.read_text(encoding="utf-8"))]
        if path:
            try:
                tables.append((path, Path(path).read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise PriceFileError(f"{path}: cannot read price file: {reason}") from None
        table = cls("", "", {})
        for i, (name, text) in enumerate(tables):
            data = _read(name, text)
            table.models.update({k.strip(): _entry(name, k, v) for k, v in data["models"].items()})
            if "fine_tuning" in data:
                _fine_tuning(name, data["fine_tuning"], table.fine_tuning)
            table.as_of = data.get("as_of", table.as_of)
            source = data.get("source", name)
            table.source = f"{table.source}; overrides: {source}" if i else source
        return table

    def price(self, model: str | None) -> dict[str, float | str] | None:
        """The entry of `model` (exact match after stripping whitespace), or None."""
        if not model:
            return None
        return self.models.get(model.strip())

    def cost(
        self,
        model: str | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cached_tokens: int | None = None,
        units: dict[str, float] | None = None,
    ) -> float | None:
        """USD cost of one call, or None when the model or every billed count is unknown."""
        entry = self.price(model)
        if entry is None:
            return None
        parts: list[float] = []
        if "input_per_mtok" in entry and (
            prompt_tokens is not None or completion_tokens is not None
        ):
            prompt, completion = prompt_tokens or 0, completion_tokens or 0
            cached = min(cached_tokens or 0, prompt)
            parts.append(
                (
                    (prompt - cached) * float(entry["input_per_mtok"])
                    + cached * float(entry["cached_input_per_mtok"])
                    + completion * float(entry["output_per_mtok"])
                )
                / 1_000_000
            )
        if "unit" in entry:
            key, per_unit = UNITS[str(entry["unit"])]
            amount = (units or {}).get(key)
            if isinstance(amount, int | float) and not isinstance(amount, bool):
                parts.append(amount / per_unit * float(entry["per_unit_usd"]))
        return round(sum(parts), 10) if parts else None

    def job_cost(self, parsed: Parsed) -> float | None:
        """A fine-tuning call's cost: the job's (see FineTuningPrices.job_cost) on the call
        that created it, $0 on the calls that only look at or list jobs (they are free)."""
        if not parsed.job_created:
            return 0.0  # a training file's upload, a look at a job, a list of jobs
        return self.fine_tuning.job_cost(parsed.model, parsed.trained_tokens)

    def to_api(self) -> dict[str, Any]:
        """The body of GET /api/prices (the caller adds "unpriced")."""
        return {
            "models": dict(self.models),
            "as_of": self.as_of,
            "source": self.source,
            "fine_tuning": self.fine_tuning.to_api(),
        }
