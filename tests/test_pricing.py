"""Cost from usage buckets, checked against hand-computed amounts (rates are USD per MTok)."""

from __future__ import annotations

import json
import logging
import random
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from claude_proxy.formats.anthropic.pricing import ModelPrice, PriceTable
from claude_proxy.store.records import Usage

UNVERIFIED = {"claude-fable-5-2", "claude-mythos-5-2"}
NO_PRICE_IN_REFERENCE = {"claude-mythos-preview"}  # no published price; end of life 2026-06-30


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


def usage(
    inp: int | None = None,
    out: int | None = None,
    *,
    cw: int | None = None,
    cw5: int | None = None,
    cw1: int | None = None,
    read: int | None = None,
) -> Usage:
    return Usage(
        input_tokens=inp,
        output_tokens=out,
        cache_creation_input_tokens=cw,
        cache_creation_5m_input_tokens=cw5,
        cache_creation_1h_input_tokens=cw1,
        cache_read_input_tokens=read,
    )


def rates(p: ModelPrice | None) -> tuple[str, ...]:
    assert p is not None
    return tuple(
        str(x) for x in (p.input, p.cache_write_5m, p.cache_write_1h, p.cache_read, p.output)
    )


# --- the table -----------------------------------------------------------------------------


def test_reference_rates(table: PriceTable) -> None:
    assert rates(table.price_for("claude-opus-5-5")) == ("4", "5", "8", "0.20", "20")
    assert rates(table.price_for("claude-sonnet-5-5")) == ("2", "2.50", "4", "0.10", "10")
    assert rates(table.price_for("claude-sonnet-4-6")) == ("3", "3.75", "6", "0.30", "15")
    assert rates(table.price_for("claude-haiku-4-5")) == ("1", "1.25", "2", "0.10", "5")
    assert rates(table.price_for("claude-fable-5-1")) == ("10", "12.50", "20", "0.25", "50")
    assert rates(table.price_for("claude-fable-5")) == ("10", "12.50", "20", "1.00", "50")
    assert rates(table.price_for("claude-3-haiku-20240307")) == (
        "0.25",
        "0.30",
        "0.50",
        "0.03",
        "1.25",
    )


def test_every_entry_follows_the_cache_write_multipliers(table: PriceTable) -> None:
    """5m writes are 1.25x and 1h writes 2x base input, for every model and tier (the API's
    published ratios).

    Claude 3 Haiku is the exception: the pricing page publishes rounded $0.30 (not 0.3125).
    """
    for mid, p in table.prices.items():
        if p.model == "claude-3-haiku-20240307":
            continue
        for r in (p, *p.tiers):
            assert r.cache_write_5m == r.input * Decimal("1.25"), mid
            assert r.cache_write_1h == r.input * 2, mid
        assert p.batch_multiplier == Decimal("0.5"), mid


def test_aliases_and_snapshot_ids(table: PriceTable) -> None:
    assert table.price_for("claude-opus-4-5-20251101") is table.price_for("claude-opus-4-5")
    assert table.price_for("claude-sonnet-4-0") is table.price_for("claude-sonnet-4-20250514")
    assert table.price_for("claude-opus-4-0") is table.price_for("claude-opus-4-20250514")
    assert table.price_for("claude-sonnet-4-5-20250929") is table.price_for("claude-sonnet-4-5")
    # A dated snapshot of a listed id maps to it, as the API echoes snapshot ids in `model`.
    assert table.price_for("claude-opus-5-5-20260922") is table.price_for("claude-opus-5-5")
    assert table.price_for("claude-sonnet-4-6-20260217") is table.price_for("claude-sonnet-4-6")
    c = table.cost("claude-sonnet-4-6-20260217", usage(1_000, 1_000))
    assert c == Decimal("0.018")
    # ... but nothing is priced by prefix or by a malformed date.
    assert table.price_for("claude-opus-4-20991231") is None  # "claude-opus-4" is not an id
    assert table.price_for("claude-opus-5-5-2026092") is None
    assert table.price_for("claude-opus-5-5-20261399") is None
    assert table.price_for("claude-opus-5-5-fast") is None
    assert table.price_for("claude-opus") is None
    assert table.price_for("claude-fable-5-2-20261104") is None


def test_unverified_models_are_left_out(table: PriceTable) -> None:
    for mid in UNVERIFIED | NO_PRICE_IN_REFERENCE:
        assert table.price_for(mid) is None
        assert mid in table.unpriced
        assert table.cost(mid, usage(10, 10)) is None


def test_every_catalog_model_has_a_price(table: PriceTable) -> None:
    catalog = pytest.importorskip("claude_proxy.emulator.catalog")
    ids = {m.id for m in catalog.MODELS} | {a for m in catalog.MODELS for a in m.aliases}
    missing = sorted(i for i in ids - UNVERIFIED - NO_PRICE_IN_REFERENCE if i not in table)
    assert missing == []


# --- cost ------------------------------------------------------------------------------------


def test_opus_5_5(table: PriceTable) -> None:
    # 2,000*4 + 1,500*5 + 500*8 + 10,000*0.20 + 1,000*20 = 41,500 per MTok -> $0.0415
    u = usage(2_000, 1_000, cw=2_000, cw5=1_500, cw1=500, read=10_000)
    assert table.cost("claude-opus-5-5", u) == Decimal("0.04150000")


def test_sonnet_4_6_cache_5m_1h_and_read_to_the_cent(table: PriceTable) -> None:
    # 1,234*3 = 3,702; 10,000*3.75 = 37,500; 20,000*6 = 120,000; 123,456*0.30 = 37,036.8;
    # 5,678*15 = 85,170. Sum 283,408.8 per MTok -> $0.2834088.
    u = usage(1_234, 5_678, cw=30_000, cw5=10_000, cw1=20_000, read=123_456)
    c = table.cost("claude-sonnet-4-6", u)
    assert c == Decimal("0.28340880")
    assert str(c) == "0.28340880"
    assert c is not None and c.quantize(Decimal("0.01")) == Decimal("0.28")


def test_streamed_usage_from_the_observer(table: PriceTable) -> None:
    """The same request as the observer accumulates it: breakdown only in message_start."""
    u = Usage()
    u.merge(
        {
            "input_tokens": 1_234,
            "output_tokens": 1,
            "cache_creation_input_tokens": 30_000,
            "cache_read_input_tokens": 123_456,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 10_000,
                "ephemeral_1h_input_tokens": 20_000,
            },
        }
    )
    u.merge({"output_tokens": 5_678, "cache_creation_input_tokens": 30_000})
    assert table.cost("claude-sonnet-4-6", u) == Decimal("0.28340880")


def test_haiku_4_5(table: PriceTable) -> None:
    # 100,000*1 + 20,000*5 + 7*0.10 = 200,000.7 per MTok
    assert table.cost("claude-haiku-4-5", usage(100_000, 20_000, read=7)) == Decimal("0.2000007")
    assert table.cost("claude-haiku-4-5-20251001", usage(100_000, 20_000, read=7)) == Decimal(
        "0.2000007"
    )


def test_haiku_5_5_tier_boundary(table: PriceTable) -> None:
    # Prompt = 60,000 input + 10,000 cache write (total only -> 5m) + 30,000 read = 100,000.
    # Base tier: 60,000*0.10 + 10,000*0.125 + 30,000*0.01 + 1,000*0.50 = 8,050 -> $0.00805
    at = usage(60_000, 1_000, cw=10_000, read=30_000)
    assert table.cost("claude-haiku-5-5", at) == Decimal("0.00805000")
    # One more token -> 100,001 > 100K: 60,001*0.50 + 10,000*0.625 + 30,000*0.05 + 1,000*2.50
    # = 30,000.5 + 6,250 + 1,500 + 2,500 = 40,250.5 -> $0.0402505 (all buckets at the tier).
    over = usage(60_001, 1_000, cw=10_000, read=30_000)
    assert table.cost("claude-haiku-5-5", over) == Decimal("0.04025050")


def test_haiku_5_5_prompt_counts_cache_tokens(table: PriceTable) -> None:
    # 50,000 uncached + 50,001 read = 100,001 prompt tokens -> tier rates although input < 100K.
    # 50,000*0.50 + 50,001*0.05 = 27,500.05 -> $0.02750005
    assert table.cost("claude-haiku-5-5", usage(50_000, 0, read=50_001)) == Decimal("0.02750005")
    # Output does not count toward the prompt.
    assert table.cost("claude-haiku-5-5", usage(100_000, 50_000)) == Decimal("0.035")


def test_fable_5_1_reads_at_0_025x(table: PriceTable) -> None:
    p = table.price_for("claude-fable-5-1")
    assert p is not None and p.cache_read == p.input * Decimal("0.025")
    assert table.cost("claude-fable-5-1", usage(read=1_000_000)) == Decimal("0.25")
    assert table.cost("claude-mythos-5-1", usage(read=1_000_000)) == Decimal("0.25")
    assert table.cost("claude-fable-5", usage(read=1_000_000)) == Decimal("1")


def test_cache_write_without_breakdown_is_5m(table: PriceTable) -> None:
    # Sonnet 4.6: 5,000*3.75 = 18,750 -> $0.01875
    assert table.cost("claude-sonnet-4-6", usage(cw=5_000)) == Decimal("0.01875")


def test_cache_write_breakdown_remainder_is_5m(table: PriceTable) -> None:
    # Total 5,000 but breakdown 3,000 + 1,000: the missing 1,000 is billed as 5m.
    # (3,000 + 1,000)*3.75 + 1,000*6 = 21,000 -> $0.021
    assert table.cost("claude-sonnet-4-6", usage(cw=5_000, cw5=3_000, cw1=1_000)) == Decimal(
        "0.021"
    )
    # Only the 1h part known: the rest of the total is 5m.
    assert table.cost("claude-sonnet-4-6", usage(cw=5_000, cw1=1_000)) == Decimal("0.021")
    # A breakdown larger than a stale total wins: 3,000*3.75 + 2,000*6 = 23,250.
    assert table.cost("claude-sonnet-4-6", usage(cw=0, cw5=3_000, cw1=2_000)) == Decimal("0.02325")


def test_batch_halves_every_bucket(table: PriceTable) -> None:
    u = usage(1_234, 5_678, cw=30_000, cw5=10_000, cw1=20_000, read=123_456)
    # 283,408.8 / 2 = 141,704.4 per MTok
    assert table.cost("claude-sonnet-4-6", u, batch=True) == Decimal("0.14170440")
    # Haiku 5.5 base tier batch: $0.05 in / $0.25 out per MTok.
    assert table.cost("claude-haiku-5-5", usage(100_000, 100_000), batch=True) == Decimal("0.03")
    # Above the tier the discount applies to the tier rates: 100,001*0.25 = 25,000.25
    assert table.cost("claude-haiku-5-5", usage(100_001, 0), batch=True) == Decimal("0.02500025")


def test_quantized_to_1e_8_half_up(table: PriceTable) -> None:
    # One 5m cache-write token on Haiku 5.5: 0.125 / 1e6 = 0.000000125 -> 0.00000013
    c = table.cost("claude-haiku-5-5", usage(cw=1))
    assert c == Decimal("0.00000013")
    assert c is not None and c.as_tuple().exponent == -8


def test_empty_usage_costs_zero(table: PriceTable) -> None:
    assert table.cost("claude-opus-5-5", Usage()) == Decimal(0)


def test_legacy_sonnet_long_context_tier(table: PriceTable) -> None:
    # > 200K prompt on Sonnet 4/4.5 (1M beta): $6 in / $22.50 out.
    assert table.cost("claude-sonnet-4-5", usage(200_000, 1_000)) == Decimal("0.615")
    assert table.cost("claude-sonnet-4-5", usage(200_001, 1_000)) == Decimal("1.2225060")
    # No such tier on 4.6 and later.
    assert table.cost("claude-sonnet-4-6", usage(500_000, 0)) == Decimal("1.5")


def test_unknown_model_warns_once(table: PriceTable, caplog: pytest.LogCaptureFixture) -> None:
    fresh = PriceTable.load()
    with caplog.at_level(logging.WARNING, logger="claude_proxy.pricing"):
        assert fresh.cost("claude-nonexistent-9", usage(10, 10)) is None
        assert fresh.cost("claude-nonexistent-9", usage(20, 20)) is None
        assert fresh.cost(None, usage(10, 10)) is None
    records = [r for r in caplog.records if r.name == "claude_proxy.pricing"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "claude-nonexistent-9" in records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="claude_proxy.pricing"):
        assert fresh.cost("claude-fable-5-2", usage(1, 1)) is None
        assert fresh.cost("claude-fable-5-2", usage(1, 1)) is None
    assert len(caplog.records) == 1
    assert "UNVERIFIED" in caplog.records[0].getMessage()


# --- override file -----------------------------------------------------------------------


def write(tmp_path: Path, data: Any, name: str = "prices.json") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


RATES = {"input": "1", "cache_write_5m": "1.25", "cache_write_1h": "2", "cache_read": "0.1"}


def test_override_merges_over_packaged(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "models": {
                "claude-fable-5-2": {**RATES, "input": "10", "output": "50", "source": "mine"},
                "claude-opus-4-5": {**RATES, "output": "7"},
                "claude-sonnet-4-0": {**RATES, "output": 9},
                "claude-haiku-4-5": None,
                "my-model": {**RATES, "output": "3.5", "aliases": ["my-model-latest"]},
            }
        },
    )
    t = PriceTable.load(str(path))
    # Added models.
    fable = t.price_for("claude-fable-5-2")
    assert fable is not None and fable.input == Decimal(10) and fable.source == "mine"
    assert "claude-fable-5-2" not in t.unpriced
    assert t.price_for("my-model-latest") is t.price_for("my-model")
    assert t.cost("my-model", usage(0, 1_000_000)) == Decimal("3.5")
    # A replaced canonical entry keeps its packaged aliases.
    assert t.cost("claude-opus-4-5-20251101", usage(0, 1_000_000)) == Decimal(7)
    # An override of an alias wins for that id only.
    assert t.cost("claude-sonnet-4-0", usage(0, 1_000_000)) == Decimal(9)
    assert t.cost("claude-sonnet-4-20250514", usage(0, 1_000_000)) == Decimal(15)
    # null removes the model and its aliases.
    assert t.price_for("claude-haiku-4-5") is None
    assert t.price_for("claude-haiku-4-5-20251001") is None
    # Everything else is untouched.
    assert t.cost("claude-sonnet-4-6", usage(0, 1_000_000)) == Decimal(15)
    assert t.price_for("claude-mythos-5-2") is None


def test_override_accepts_pathlike_and_tiers(tmp_path: Path) -> None:
    tier = {**RATES, "input": "2", "output": "10", "above_prompt_tokens": 10}
    path = write(tmp_path, {"models": {"m": {**RATES, "output": "5", "tiers": [tier]}}})
    t = PriceTable.load(path)
    assert t.cost("m", usage(10, 0)) == Decimal("0.00001")
    assert t.cost("m", usage(11, 0)) == Decimal("0.000022")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "top level must be a JSON object"),
        ({"prices": {}}, "unknown top-level field"),
        ({}, '"models" must be an object'),
        ({"models": {"m": {**RATES}}}, "models.m: missing rate(s) ['output']"),
        ({"models": {"m": {**RATES, "output": "-1"}}}, "models.m.output"),
        ({"models": {"m": {**RATES, "output": "abc"}}}, "not a decimal number"),
        ({"models": {"m": {**RATES, "output": True}}}, "models.m.output"),
        ({"models": {"m": {**RATES, "output": "1", "cache_write5m": "1"}}}, "unknown field"),
        ('{"models": {"m": {"input": NaN}}}', "NaN"),
        ('{"models": {"m": null, "m": null}}', "duplicate key 'm'"),
        (
            {
                "models": {
                    "a": {**RATES, "output": "1"},
                    "b": {**RATES, "output": "1", "aliases": ["a"]},
                }
            },
            "already used",
        ),
        (
            {"models": {"m": {**RATES, "output": "1", "tiers": [{**RATES, "output": "1"}]}}},
            "above_prompt_tokens",
        ),
    ],
)
def test_invalid_override_raises_naming_file(tmp_path: Path, content: Any, problem: str) -> None:
    path = write(tmp_path, content, "bad-prices.json")
    with pytest.raises(ValueError) as exc:
        PriceTable.load(str(path))
    assert str(path) in str(exc.value)
    assert problem in str(exc.value)


def test_missing_override_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(ValueError, match=r"nope\.json: cannot read"):
        PriceTable.load(str(path))


def test_integer_pricing_equals_decimal_arithmetic_for_every_model(table: PriceTable) -> None:
    """Whole nano-dollar rates are priced with integers: the same amounts, to the 1e-8."""
    rng = random.Random(7)
    for model, price in table.prices.items():
        assert price.nano is not None and all(t.nano is not None for t in price.tiers), model
        for _ in range(200):
            b = [rng.choice((0, 1, 5, rng.randrange(10**7))) for _ in range(5)]
            u = usage(b[0], b[1], cw=b[2] + b[3], cw5=b[2], cw1=b[3], read=b[4])
            r = price.rates(b[0] + b[2] + b[3] + b[4])
            amount = (
                b[0] * r.input
                + b[2] * r.cache_write_5m
                + b[3] * r.cache_write_1h
                + b[4] * r.cache_read
                + b[1] * r.output
            ) / Decimal(1_000_000)
            want = amount.quantize(Decimal("1E-8"), rounding=ROUND_HALF_UP)
            got = table.cost(model, u)
            assert got == want and got is not None and got.as_tuple().exponent == -8, (model, b)


def test_a_rate_finer_than_a_nano_dollar_is_priced_exactly(tmp_path: Path) -> None:
    rates = {"input": "0.0001", "output": "1", "cache_write_5m": "0", "cache_write_1h": "0"}
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"models": {"tiny-model": {**rates, "cache_read": "0"}}}))
    t = PriceTable.load(f)
    assert t.prices["tiny-model"].nano is None
    # (12,345 x 0.0001 + 5 x 1) / 1e6 = 0.0000062345 -> 0.00000623
    assert t.cost("tiny-model", usage(12_345, 5)) == Decimal("0.00000623")
