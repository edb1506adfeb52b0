"""Per-request cost in USD from the usage buckets the API reports.

The price table is data (`prices.json`, packaged) so a price change is a file edit, not a
release; `CLAUDE_PROXY_PRICES_FILE` layers a user's file over it. The app builds one
`PriceTable` at startup and asks it for the cost of each finished request. Money is `Decimal`
end to end: the DB column is numeric and float rounding would drift over millions of rows.

Ids are matched exactly (canonical id or listed alias), plus one rule for dated snapshots:
`<id>-YYYYMMDD` is priced as `<id>` when `<id>` is in the table, because the API echoes
snapshot ids such as `claude-sonnet-4-5-20250929` in `model`. Nothing is priced by id prefix:
point releases (5 vs 5.1 vs 5.5) have different prices.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation, localcontext
from pathlib import Path
from typing import Any

from claude_proxy.store.records import MAX_MODEL_CHARS, Usage, bounded

__all__ = ["ModelPrice", "PriceTable", "PromptTier", "Rates"]

log = logging.getLogger("claude_proxy.pricing")

PACKAGED_FILE = "prices.json"
_MTOK = Decimal(1_000_000)
# USD per MTok -> nano-dollars per token.
_NANO_PER_MTOK_UNIT = Decimal(1000)
_QUANTUM = Decimal("1E-8")  # what the numeric cost_usd column keeps
# Exact arithmetic for any realistic token count, independent of the caller's decimal context.
_CTX = Context(prec=50, rounding=ROUND_HALF_UP)
_SNAPSHOT = re.compile(r"^(?P<base>.+)-20\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])$")
# A client sending endless made-up model ids must not grow memory or flood the log.
_MAX_WARNED = 1000

_RATE_FIELDS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
_ENTRY_FIELDS = frozenset({*_RATE_FIELDS, "aliases", "tiers", "batch_multiplier", "source"})
_TIER_FIELDS = frozenset({*_RATE_FIELDS, "above_prompt_tokens"})
_TOP_FIELDS = frozenset(
    {
        "schema_version",
        "currency",
        "unit",
        "as_of",
        "source",
        "batch_multiplier",
        "unpriced",
        "models",
    }
)


@dataclass(frozen=True)
class Rates:
    """USD per million tokens for each billed bucket."""

    input: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    output: Decimal
    # The rates in nano-dollars per token (USD per MTok x 1000) when every one is a whole
    # number of them, as every packaged price is: cost is then integer arithmetic, exact,
    # without a Decimal context per request (the writer prices every request). None: a
    # finer rate from a user's file, priced with Decimal.
    nano: tuple[int, int, int, int, int] | None = field(
        init=False, repr=False, compare=False, default=None
    )

    def __post_init__(self) -> None:
        scaled = [rate * _NANO_PER_MTOK_UNIT for rate in self._values()]
        if all(x == x.to_integral_value() for x in scaled):
            nano = tuple(int(x) for x in scaled)
            object.__setattr__(self, "nano", nano)

    def _values(self) -> tuple[Decimal, Decimal, Decimal, Decimal, Decimal]:
        return (self.input, self.cache_write_5m, self.cache_write_1h, self.cache_read, self.output)


@dataclass(frozen=True)
class PromptTier(Rates):
    """Rates that replace the base ones once the prompt exceeds `above_prompt_tokens`."""

    above_prompt_tokens: int


@dataclass(frozen=True)
class ModelPrice(Rates):
    """A model's base rates plus its prompt-length tiers and batch multiplier."""

    model: str = ""  # canonical id in the table
    aliases: tuple[str, ...] = ()
    batch_multiplier: Decimal = Decimal("0.5")
    tiers: tuple[PromptTier, ...] = ()  # ascending by above_prompt_tokens
    source: str = ""

    def rates(self, prompt_tokens: int) -> Rates:
        """The rates for a request whose prompt (input + cache writes + reads) has this size.

        The highest tier whose threshold the prompt strictly exceeds wins (Haiku 5.5:
        100,000 tokens is still the base tier, 100,001 is not).
        """
        chosen: Rates = self
        for tier in self.tiers:
            if prompt_tokens > tier.above_prompt_tokens:
                chosen = tier
        return chosen


class PriceTable:
    """Model id → price, with the cost rule. Build once (`PriceTable.load`) and share.

    Its only mutable state is the set of unknown ids already warned about, so the warning
    is once per model id for the life of the table (the app builds one per process).
    """

    def __init__(
        self, prices: Mapping[str, ModelPrice], unpriced: Mapping[str, str] | None = None
    ) -> None:
        self.prices: Mapping[str, ModelPrice] = dict(prices)
        # Ids deliberately left without a price, with the reason (shown in the warning).
        self.unpriced: Mapping[str, str] = dict(unpriced or {})
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"PriceTable({len(self.prices)} ids)"

    # --- loading -----------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> PriceTable:
        """The packaged table, with the file at `path` (CLAUDE_PROXY_PRICES_FILE) merged over it.

        Merge, not replace, so a user can add or fix one model without copying the whole
        table. The override uses the packaged schema (`{"models": {...}}`); per entry:
        - a new id adds a model;
        - an existing canonical id replaces that whole entry (all rates and tiers); it keeps
          the packaged aliases unless it lists its own `aliases`;
        - ids in the override (canonical or alias) win over the same ids in the package;
        - `null` removes the id (and, for a packaged canonical id, its aliases): cost NULL.
        A top-level `batch_multiplier` in a file is the default for that file's entries only.
        Any problem (unreadable, bad JSON, unknown or missing field, bad rate) raises
        ValueError naming the file, so a typo fails startup instead of mis-billing.
        """
        packaged_name = f"packaged {PACKAGED_FILE}"
        try:
            # Beside this module (importlib.resources would cost the writer process ~5 MB).
            packaged_text = Path(__file__).with_name(PACKAGED_FILE).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"price file {packaged_name}: cannot read: {exc}") from exc
        base = _parse(packaged_text, packaged_name, allow_null=False)
        by_id = _index(base.entries)
        unpriced = dict(base.unpriced)
        if path is not None:
            name = os.fspath(path)
            try:
                with open(name, encoding="utf-8") as f:
                    text = f.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"price file {name}: cannot read: {exc}") from exc
            over = _parse(text, name, allow_null=True)
            unpriced.update(over.unpriced)
            for key in over.removed:
                by_id.pop(key, None)
                old = base.entries.get(key)
                if old is not None:
                    for alias in old.aliases:
                        by_id.pop(alias, None)
            entries = dict(over.entries)
            for key, price in entries.items():
                old = base.entries.get(key)
                if old is not None and key not in over.explicit_aliases:
                    entries[key] = replace(price, aliases=old.aliases)
            by_id.update(_index(entries))
        return cls(by_id, {k: v for k, v in unpriced.items() if k not in by_id})

    # --- lookup and cost ---------------------------------------------------------------

    def price_for(self, model: str) -> ModelPrice | None:
        """Exact id or alias; else a dated snapshot `<id>-YYYYMMDD` of a listed id; else None."""
        price = self.prices.get(model)
        if price is not None:
            return price
        m = _SNAPSHOT.match(model)
        if m is not None:
            return self.prices.get(m.group("base"))
        return None

    def __contains__(self, model: object) -> bool:
        return isinstance(model, str) and self.price_for(model) is not None

    def cost(self, model: str | None, usage: Usage, *, batch: bool = False) -> Decimal | None:
        """USD for one request, quantized to 1e-8; None (and one warning) if the model is unknown.

        - `input_tokens` (uncached input) at the input rate; `output_tokens` (includes
          thinking) at the output rate; `cache_read_input_tokens` at the read rate.
        - Cache writes by TTL from the `cache_creation` breakdown. Without a breakdown the
          total is billed as 5m (the API default TTL); if the breakdown sums to less than the
          total, the remainder is billed as 5m too.
        - The prompt-length tier is chosen on input + cache writes + cache reads.
        - `batch`: the model's batch multiplier (50%) on every bucket, since the Batch API
          discount and the cache multipliers stack.
        Missing (None) buckets count as zero, so partial usage from a cut stream still prices.
        """
        if not model:
            return None
        price = self.price_for(model)
        if price is None:
            self._warn_unknown(model)
            return None
        inp = _tokens(usage.input_tokens)
        out = _tokens(usage.output_tokens)
        read = _tokens(usage.cache_read_input_tokens)
        write_5m = _tokens(usage.cache_creation_5m_input_tokens)
        write_1h = _tokens(usage.cache_creation_1h_input_tokens)
        write_5m += max(0, _tokens(usage.cache_creation_input_tokens) - write_5m - write_1h)
        rates = price.rates(inp + write_5m + write_1h + read)
        nano = rates.nano
        if nano is not None and not batch:
            # Nano-dollars, exact; rounded half up to the column's 1e-8 as the Decimal path.
            n = inp * nano[0] + write_5m * nano[1] + write_1h * nano[2] + read * nano[3]
            n += out * nano[4]
            return Decimal((n + 5) // 10).scaleb(-8, _CTX)
        with localcontext(_CTX):
            amount = (
                inp * rates.input
                + write_5m * rates.cache_write_5m
                + write_1h * rates.cache_write_1h
                + read * rates.cache_read
                + out * rates.output
            )
            if batch:
                amount *= price.batch_multiplier
            return (amount / _MTOK).quantize(_QUANTUM)

    def _warn_unknown(self, model: str) -> None:
        # Capped before it is kept or logged: a model id is whatever a client sent.
        model = bounded(model, MAX_MODEL_CHARS)
        if model in self._warned or len(self._warned) > _MAX_WARNED:
            return
        self._warned.add(model)
        if len(self._warned) > _MAX_WARNED:
            log.warning("over %d unpriced model ids seen; not warning about more", _MAX_WARNED)
            return
        m = _SNAPSHOT.match(model)
        reason = self.unpriced.get(model) or (self.unpriced.get(m.group("base")) if m else None)
        log.warning(
            "no price for model %r, cost_usd will be NULL%s (prices can be added with %s)",
            model,
            f": {reason}" if reason else "",
            "CLAUDE_PROXY_PRICES_FILE",
        )


# --- parsing -----------------------------------------------------------------------------


class _Invalid(Exception):
    """A schema problem; turned into ValueError with the file name by `_parse`."""


def _tokens(value: int | None) -> int:
    """A usage count as a non-negative int; None (or junk from a misbehaving upstream) is 0."""
    if type(value) is int:  # the common case first (bool is not int's type)
        return value if value > 0 else 0
    if value is None or isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and value.is_integer():
        return max(int(value), 0)
    return 0


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Invalid(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise _Invalid(f"{name} is not a valid amount")


@dataclass
class _Parsed:
    entries: dict[str, ModelPrice]  # canonical id -> price
    unpriced: dict[str, str]
    removed: set[str]  # ids given as null (override files only)
    explicit_aliases: set[str]  # entries that list `aliases` themselves (even empty)


def _index(entries: Mapping[str, ModelPrice]) -> dict[str, ModelPrice]:
    """Every id and alias → price; aliases first, so a canonical id always wins."""
    by_id: dict[str, ModelPrice] = {}
    for price in entries.values():
        for alias in price.aliases:
            by_id[alias] = price
    by_id.update(entries)
    return by_id


def _parse(text: str, name: str, *, allow_null: bool) -> _Parsed:
    try:
        return _parse_inner(text, allow_null=allow_null)
    except _Invalid as exc:
        raise ValueError(f"price file {name}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"price file {name}: not valid JSON: {exc}") from None


def _parse_inner(text: str, *, allow_null: bool) -> _Parsed:
    data = json.loads(
        text,
        parse_float=Decimal,
        parse_constant=_reject_constant,
        object_pairs_hook=_no_duplicate_keys,
    )
    if not isinstance(data, dict):
        raise _Invalid("top level must be a JSON object")
    unknown = sorted(k for k in data if k not in _TOP_FIELDS and not _is_comment(k))
    if unknown:
        raise _Invalid(f"unknown top-level field(s) {unknown}")
    models = data.get("models")
    if not isinstance(models, dict):
        raise _Invalid('"models" must be an object of model id -> prices')
    default_batch = _amount(data.get("batch_multiplier", "0.5"), "batch_multiplier")
    unpriced = data.get("unpriced", {})
    if not isinstance(unpriced, dict) or not all(isinstance(v, str) for v in unpriced.values()):
        raise _Invalid('"unpriced" must be an object of model id -> reason')

    out = _Parsed({}, dict(unpriced), set(), set())
    seen: dict[str, str] = {}
    for key, raw in models.items():
        where = f"models.{key}"
        if not key:
            raise _Invalid("empty model id")
        if raw is None:
            if not allow_null:
                raise _Invalid(f"{where}: null (remove) is only allowed in an override file")
            out.removed.add(key)
            continue
        price = _entry(key, raw, where, default_batch)
        for mid in (key, *price.aliases):
            if mid in seen:
                raise _Invalid(f"{where}: id {mid!r} already used by models.{seen[mid]}")
            seen[mid] = key
        out.entries[key] = price
        if "aliases" in raw:
            out.explicit_aliases.add(key)
    return out


def _is_comment(key: str) -> bool:
    return key.startswith(("_", "comment"))


def _entry(key: str, raw: Any, where: str, default_batch: Decimal) -> ModelPrice:
    if not isinstance(raw, dict):
        raise _Invalid(f"{where}: must be an object (or null in an override)")
    rates = _rates(raw, where, _ENTRY_FIELDS)
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise _Invalid(f"{where}.aliases: must be a list of model ids")
    source = raw.get("source", "")
    if not isinstance(source, str):
        raise _Invalid(f"{where}.source: must be a string")
    batch = _amount(raw.get("batch_multiplier", default_batch), f"{where}.batch_multiplier")
    tiers_raw = raw.get("tiers", [])
    if not isinstance(tiers_raw, list):
        raise _Invalid(f"{where}.tiers: must be a list")
    tiers: list[PromptTier] = []
    for i, t in enumerate(tiers_raw):
        twhere = f"{where}.tiers[{i}]"
        if not isinstance(t, dict):
            raise _Invalid(f"{twhere}: must be an object")
        above = t.get("above_prompt_tokens")
        if isinstance(above, bool) or not isinstance(above, int) or above < 0:
            raise _Invalid(f"{twhere}.above_prompt_tokens: must be a non-negative integer")
        if tiers and above <= tiers[-1].above_prompt_tokens:
            raise _Invalid(f"{twhere}.above_prompt_tokens: tiers must be in ascending order")
        tr = _rates(t, twhere, _TIER_FIELDS)
        tiers.append(PromptTier(**_fields(tr), above_prompt_tokens=above))
    return ModelPrice(
        **_fields(rates),
        model=key,
        aliases=tuple(aliases),
        batch_multiplier=batch,
        tiers=tuple(tiers),
        source=source,
    )


def _fields(rates: Rates) -> dict[str, Decimal]:
    return {name: getattr(rates, name) for name in _RATE_FIELDS}


def _rates(raw: dict[str, Any], where: str, allowed: frozenset[str]) -> Rates:
    unknown = sorted(k for k in raw if k not in allowed and not _is_comment(k))
    if unknown:
        raise _Invalid(f"{where}: unknown field(s) {unknown}")
    missing = [f for f in _RATE_FIELDS if f not in raw]
    if missing:
        raise _Invalid(f"{where}: missing rate(s) {missing}")
    values = {f: _amount(raw[f], f"{where}.{f}") for f in _RATE_FIELDS}
    return Rates(**values)


def _amount(value: Any, where: str) -> Decimal:
    """A non-negative finite USD amount from a decimal string or a JSON number."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise _Invalid(f"{where}: must be a decimal string or number, got {value!r}")
    try:
        d = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        raise _Invalid(f"{where}: {value!r} is not a decimal number") from None
    if not d.is_finite() or d < 0:
        raise _Invalid(f"{where}: {value!r} must be a finite, non-negative amount")
    return d
