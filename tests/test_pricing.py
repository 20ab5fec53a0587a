"""The cost model: bundled prices, the 10% cached discount, unit pricing and --prices files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.capture.pricing import PriceFileError, PriceTable

TABLE = PriceTable.load()


def test_bundled_table_has_date_and_source() -> None:
    assert TABLE.as_of == "2026-08-21"
    assert "docs.mistral.ai" in TABLE.source
    api = TABLE.to_api()
    assert set(api) == {"models", "as_of", "source", "fine_tuning"}
    assert api["models"]["mistral-large-latest"]["input_per_mtok"] == 0.5


@pytest.mark.parametrize(
    ("model", "inp", "out"),
    [
        ("mistral-medium-3-5", 1.50, 7.50),
        ("mistral-medium-latest", 1.50, 7.50),  # the alias moved off the 0.40/2.00 of -2508
        ("mistral-medium-2508", 0.40, 2.00),
        ("mistral-large-2512", 0.50, 1.50),
        ("mistral-large-latest", 0.50, 1.50),
        ("mistral-small-2603", 0.15, 0.60),
        ("mistral-small-latest", 0.15, 0.60),
        ("ministral-14b-latest", 0.20, 0.20),
        ("ministral-8b-2512", 0.15, 0.15),
        ("ministral-3b-latest", 0.10, 0.10),
        ("codestral-latest", 0.30, 0.90),
        ("mistral-embed", 0.10, 0.0),
        ("voxtral-small-latest", 0.10, 0.40),
        ("magistral-medium-latest", 2.0, 5.0),
        ("devstral-medium-latest", 0.40, 2.00),
        ("open-mistral-nemo", 0.15, 0.15),
        ("ministral-3b-2410", 0.04, 0.04),
        ("mistral-moderation-2603", 0.0, 0.0),
    ],
)
def test_known_models(model: str, inp: float, out: float) -> None:
    entry = TABLE.price(model)
    assert entry is not None
    assert (entry["input_per_mtok"], entry["output_per_mtok"]) == (inp, out)


@pytest.mark.parametrize(
    ("model", "prompt", "completion", "cached", "expected"),
    [
        ("mistral-large-latest", 1_000_000, 1_000_000, None, 2.0),
        ("mistral-medium-latest", 1000, 500, None, 0.00525),
        ("mistral-small-latest", 2000, None, None, 0.0003),  # missing completion counts as 0
        ("mistral-small-latest", None, 1000, None, 0.0006),
        # cached tokens are part of prompt_tokens and cost 10% of input by default
        ("mistral-large-latest", 1000, 0, 400, (600 * 0.5 + 400 * 0.05) / 1e6),
        ("mistral-medium-latest", 1_000_000, 0, 1_000_000, 0.15),
        # explicit cached price
        ("zai-glm-5-2", 1000, 100, 500, (500 * 1.4 + 500 * 0.14 + 100 * 4.4) / 1e6),
        ("mistral-moderation-2603", 5000, 0, None, 0.0),  # free
        (" mistral-large-latest ", 1_000_000, 0, None, 0.5),  # surrounding whitespace
        # unknown or not priceable
        ("mistral-huge-9000", 1000, 1000, None, None),
        ("MISTRAL-LARGE-LATEST", 1000, 1000, None, None),  # case-sensitive
        ("ft:mistral-large-latest:abc", 1000, 1000, None, None),  # exact match only
        (None, 1000, 1000, None, None),
        ("mistral-large-latest", None, None, None, None),
    ],
)
def test_token_cost(
    model: str | None,
    prompt: int | None,
    completion: int | None,
    cached: int | None,
    expected: float | None,
) -> None:
    cost = TABLE.cost(model, prompt, completion, cached)
    if expected is None:
        assert cost is None
    else:
        assert cost == pytest.approx(expected, abs=1e-12)
        assert cost == round(cost, 10)


def test_cached_default_is_ten_percent() -> None:
    for name, entry in TABLE.models.items():
        if name != "zai-glm-5-2" and "input_per_mtok" in entry:
            assert entry["cached_input_per_mtok"] == pytest.approx(0.1 * entry["input_per_mtok"])
    assert TABLE.models["zai-glm-5-2"]["cached_input_per_mtok"] == 0.14


@pytest.mark.parametrize(
    ("model", "tokens", "units", "expected"),
    [
        ("mistral-ocr-latest", (None, None), {"pages": 10}, 0.04),
        ("mistral-ocr-4-1", (None, None), {"pages": 1000}, 4.0),
        ("mistral-ocr-2512", (None, None), {"pages": 3}, 0.006),
        ("mistral-ocr-latest", (None, None), None, None),  # no page count, no cost
        ("voxtral-mini-latest", (None, None), {"audio_seconds": 90}, 0.0045),  # 1.5 min x 0.003
        ("voxtral-mini-2602", (120, 40), {"audio_seconds": 60}, 0.003),  # tokens are not billed
        ("voxtral-mini-transcribe-realtime-2602", (None, None), {"audio_seconds": 30}, 0.003),
        ("voxtral-mini-tts-2603", (None, None), {"characters": 1_000_000}, 16.0),
        # Voxtral Small: text tokens plus audio minutes
        ("voxtral-small-latest", (1000, 100), {"audio_seconds": 120}, 0.0001 + 0.00004 + 0.008),
        ("voxtral-small-2507", (1000, 100), None, 0.0001 + 0.00004),
        ("voxtral-small-2507", (None, None), {"audio_seconds": 60}, 0.004),
    ],
)
def test_unit_cost(
    model: str,
    tokens: tuple[int | None, int | None],
    units: dict[str, float] | None,
    expected: float | None,
) -> None:
    cost = TABLE.cost(model, *tokens, units=units)
    if expected is None:
        assert cost is None
    else:
        assert cost == pytest.approx(expected, abs=1e-12)


OVERRIDE = {
    "as_of": "2026-09-01",
    "source": "our contract",
    "models": {
        "mistral-large-latest": {"input_per_mtok": 0.4, "output_per_mtok": 1.2},
        "my-finetune": {"input_per_mtok": 1, "output_per_mtok": 3, "cached_input_per_mtok": 0.5},
    },
}
OVERRIDE_TOML = """as_of = "2026-09-01"
source = "our contract"
[models]
"mistral-large-latest" = { input_per_mtok = 0.4, output_per_mtok = 1.2 }
[models.my-finetune]
input_per_mtok = 1
output_per_mtok = 3
cached_input_per_mtok = 0.5
"""


@pytest.mark.parametrize(
    ("filename", "text"),
    [
        ("prices.toml", OVERRIDE_TOML),
        ("prices.json", json.dumps(OVERRIDE)),
        ("prices.txt", json.dumps(OVERRIDE)),  # no telling suffix: JSON by its first character
        ("prices", OVERRIDE_TOML),
    ],
)
def test_override_file(tmp_path: Path, filename: str, text: str) -> None:
    path = tmp_path / filename
    path.write_text(text)
    table = PriceTable.load(str(path))
    assert table.price("mistral-large-latest") == {
        "input_per_mtok": 0.4,
        "output_per_mtok": 1.2,
        "cached_input_per_mtok": 0.04,
    }
    assert table.cost("my-finetune", 2_000_000, 1_000_000, 1_000_000) == 4.5
    assert table.price("mistral-large-2512") == TABLE.price("mistral-large-2512")  # untouched
    assert len(table.models) == len(TABLE.models) + 1
    assert table.as_of == "2026-09-01"
    assert table.source == f"{TABLE.source}; overrides: our contract"
    assert TABLE.price("my-finetune") is None  # the bundled table is not changed


def test_override_file_without_header(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[models]\nx = { unit = "page", per_unit_usd = 0.01 }\n')
    table = PriceTable.load(str(path))
    assert table.as_of == TABLE.as_of
    assert table.source.endswith(f"overrides: {path}")
    assert table.cost("x", None, None, units={"pages": 2}) == 0.02


@pytest.mark.parametrize(
    ("filename", "text", "message"),
    [
        ("missing.toml", None, "cannot read price file: No such file or directory"),
        ("bad.toml", "models = [[[", "not valid TOML"),
        ("bad.json", '{"models": ', "not valid JSON"),
        ("list.json", "[1, 2]", "no 'models' table"),
        ("empty.toml", 'as_of = "2026-01-01"\n', "no 'models' table"),
        (
            "neg.toml",
            "[models]\nm = { input_per_mtok = -1, output_per_mtok = 1 }\n",
            "model 'm': input_per_mtok must be a number >= 0, got -1",
        ),
        (
            "str.json",
            '{"models": {"m": {"input_per_mtok": "cheap", "output_per_mtok": 1}}}',
            "model 'm': input_per_mtok must be a number >= 0, got 'cheap'",
        ),
        (
            "bool.json",
            '{"models": {"m": {"input_per_mtok": true, "output_per_mtok": 1}}}',
            "input_per_mtok must be a number >= 0, got True",
        ),
        (
            "nan.toml",
            "[models]\nm = { input_per_mtok = nan, output_per_mtok = 1 }\n",
            "input_per_mtok must be a number >= 0, got nan",
        ),
        (
            "half.toml",
            "[models]\nm = { input_per_mtok = 1 }\n",
            "model 'm': needs both input_per_mtok and output_per_mtok",
        ),
        (
            "typo.toml",
            "[models]\nm = { input_per_mtoks = 1, output_per_mtok = 1 }\n",
            "model 'm': unknown key(s) input_per_mtoks",
        ),
        (
            "unit.toml",
            '[models]\nm = { unit = "token", per_unit_usd = 1 }\n',
            "model 'm': unit must be one of page, audio_minute, character, got 'token'",
        ),
        (
            "nounitprice.toml",
            '[models]\nm = { unit = "page" }\n',
            "model 'm': unit and per_unit_usd go together",
        ),
        ("noprice.toml", "[models]\nm = {}\n", "model 'm': no price"),
        ("entry.json", '{"models": {"m": 3}}', "model 'm': entry must be a table of prices"),
        ("header.json", '{"as_of": 20260101, "models": {}}', "'as_of' must be a string"),
    ],
)
def test_bad_file(tmp_path: Path, filename: str, text: str | None, message: str) -> None:
    path = tmp_path / filename
    if text is not None:
        path.write_text(text)
    with pytest.raises(PriceFileError) as info:
        PriceTable.load(str(path))
    error = str(info.value)
    assert error.startswith(f"{path}: ")
    assert message in error
    assert "\n" not in error
    assert isinstance(info.value, ValueError)


def test_fine_tuning_prices_minimum_fee_and_overrides(tmp_path):
    table = PriceTable.load()
    ft = table.fine_tuning
    assert ft.as_of and ft.minimum_fee_usd == 4.0
    assert ft.job_cost("open-mistral-nemo", None) == 4.0  # tokens unknown: the minimum fee
    assert ft.job_cost("open-mistral-nemo", 1_000) == 4.0  # under the minimum
    assert ft.job_cost("open-mistral-nemo", 10_000_000) == pytest.approx(10.0)
    assert ft.job_cost("no-such-base", 10_000_000) == 4.0
    path = tmp_path / "p.toml"
    path.write_text(
        "[models]\n[fine_tuning]\nminimum_fee_usd = 1.5\n"
        '[fine_tuning.models]\n"x" = { training_per_mtok = 2, storage_per_month_usd = 1 }\n'
    )
    table = PriceTable.load(str(path))
    assert table.fine_tuning.minimum_fee_usd == 1.5
    assert table.fine_tuning.job_cost("x", 1_000_000) == 2.0
    assert table.fine_tuning.job_cost("open-mistral-nemo", None) == 1.5
    path.write_text('[models]\n[fine_tuning.models]\n"x" = { training_per_mtok = -1 }\n')
    with pytest.raises(PriceFileError, match="fine-tuning model 'x'"):
        PriceTable.load(str(path))
