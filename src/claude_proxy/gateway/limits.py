"""Model allowlists, RPM/TPM limits and budgets, shared by every replica through the database.

Nothing here touches the database on the request path. Each process counts its own
admissions exactly, per key and per second, and a background task every
`sync_interval` seconds:

- writes this process's counts of the last minute to `rate_usage` (absolute values,
  so a retried write never counts twice) and a heartbeat to `proxy_instances`;
- reads every other process's counts, the number of live processes N, and the
  spend of the keys with budgets from `key_spend` (which the log writer adds to in
  the same transaction as the rows it inserts).

RPM and TPM are sliding 60-second windows (1-second buckets, a bucket counts until
it is wholly outside the window, so the window errs on the strict side). What one
process cannot see is what the others admitted since their last write, so between
two syncs each process may admit at most its share of what was left, ceil(left/N):
the replicas together cannot overshoot by N times. Stated bounds are in
docs/access-control.md.

While the database is unreachable, counting goes on locally: the others' last
known counts still count until they slide out of the window, each process admits
at most ceil(limit/N) on its own, and the counts are written when the database is
back. Spend keeps adding up locally from this process's own requests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from claude_proxy.gateway.errors import ProxyError, refusal
from claude_proxy.gateway.levels import Level
from claude_proxy.gateway.people import Caller
from claude_proxy.gateway.window import SlidingCounts
from claude_proxy.store.columns import current_period
from claude_proxy.store.limits import leave, sync_counts
from claude_proxy.store.records import MAX_MODEL_CHARS, Pricer, RequestRecord, bounded

log = logging.getLogger("claude_proxy.limits")

WINDOW = 60  # seconds: "per minute"
_PRUNE_EVERY = 30.0  # seconds between deletions of old rate_usage rows
_STALE_AFTER = 3  # sync intervals without a good sync: counting is local only


@dataclass
class _Others:
    """Every other process's counts for one key, as of the last sync."""

    buckets: list[tuple[int, int, int]] = field(default_factory=list)  # oldest first
    at_second: int = -1
    requests: int = 0
    tokens: int = 0

    def totals(self, now_s: int) -> tuple[int, int]:
        if now_s != self.at_second:  # buckets slide out of the window as time passes
            cut = now_s - WINDOW
            self.requests = sum(r for s, r, _ in self.buckets if s > cut)
            self.tokens = sum(t for s, _, t in self.buckets if s > cut)
            self.at_second = now_s
        return self.requests, self.tokens


@dataclass
class _SyncResult:
    others: dict[str, _Others]
    instances: int
    spend: dict[tuple[str, str], float]


class Limiter:
    """`check` → `admit` → (request runs) → `finish`, all on the event loop and cheap."""

    def __init__(
        self,
        *,
        engine: Engine | None,
        prices: Pricer,
        sync_interval: float = 1.0,
        spend_lag: float = 3.0,
        instance_id: str | None = None,
        budgets: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self._engine = engine
        self._prices = prices
        # The keys with budgets that this process knows of (the key cache): their spend is
        # read at every sync, so the first request after a restart already sees it.
        self._known_budgets = budgets
        self._sync_interval = sync_interval
        # Spend of a finished request reaches key_spend within about the writer's flush
        # interval; until a snapshot read this long after it, it is counted locally too.
        self._spend_lag = spend_lag
        self.instance_id = (
            instance_id or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        )
        self._started_at = datetime.now(UTC)
        self._own: dict[str, SlidingCounts] = {}  # per key: requests, tokens
        self._dirty: set[tuple[str, int]] = set()
        self._others: dict[str, _Others] = {}
        self._instances = 1
        self._generation = 0  # successful syncs so far
        self._allowance: dict[str, tuple[int, int]] = {}  # key -> (generation, admissions left)
        self._synced_at = float("-inf")  # monotonic
        self._spend_db: dict[tuple[str, str], float] = {}
        self._spend_local: dict[str, _RecentSpend] = {}
        self._budget_keys: dict[str, str] = {}  # key id -> budget period, seen here
        self._healthy = True
        self._next_prune = 0.0
        self._task: asyncio.Task[None] | None = None

    # ----------------------------------------------------------- request path

    def check_models(self, caller: Caller, models: list[str]) -> ProxyError | None:
        """A refusal if a level may not use one of these models (known once the body is read)."""
        for level in caller.levels:
            for model in models:
                if not level.allows_model(model):
                    allowed = ", ".join(level.models or ())
                    shown = bounded(model, MAX_MODEL_CHARS)
                    return refusal(
                        "model_not_allowed",
                        "permission_error",
                        f"This {_whose(level)} may not use model '{shown}'. "
                        f"Allowed models: {allowed}.",
                    )
        return None

    def check_all(self, caller: Caller, now: float) -> ProxyError | None:
        """`check` at every level, then `admit` at every level once all passed."""
        levels = caller.levels
        for level in levels:
            refused = self.check(level, now)
            if refused is not None:
                return refused
        for level in levels:
            self.admit(level, now)
        return None

    def remaining(self, caller: Caller, now: float) -> tuple[Level, float] | None:
        """The level with the least budget left, and how much (USD); None without budgets."""
        tightest: tuple[Level, float] | None = None
        for level in caller.levels:
            if level.budget_usd is None:
                continue
            left = level.budget_usd - self.spent(level.id, level.budget_period or "total", now)
            if tightest is None or left < tightest[1]:
                tightest = (level, left)
        return tightest

    def check(self, level: Level, now: float) -> ProxyError | None:
        """The first limit (budget, RPM, TPM) this request would break, or None to let it
        through; needs nothing from the body, so it runs before the body is read."""
        if not level.limited:
            return None
        if level.budget_usd is not None:
            refused = self._check_budget(level, now)
            if refused is not None:
                return refused
        if level.rpm is None and level.tpm is None:
            return None
        now_s = int(now)
        own = self._window(level.id, now_s)
        others = self._others.get(level.id)
        o_req, o_tok = others.totals(now_s) if others is not None else (0, 0)
        own_req, own_tok = own.totals
        if level.rpm is not None:
            used = own_req + o_req
            if used >= level.rpm:
                wait = _seconds_until_below(own, others, level.rpm, 1, now, now_s)
                return _rate_refusal("rpm", f"{level.rpm} requests per minute", level, wait)
            if not self._within_share(level, level.rpm, used, own_req, now):
                return _rate_refusal(
                    "rpm",
                    f"{level.rpm} requests per minute",
                    level,
                    max(1, round(self._sync_interval)),
                )
        if level.tpm is not None and own_tok + o_tok >= level.tpm:
            wait = _seconds_until_below(own, others, level.tpm, 2, now, now_s)
            return _rate_refusal("tpm", f"{level.tpm} tokens per minute", level, wait)
        return None

    def admit(self, level: Level, now: float) -> None:
        """Count a request that passed `check` (as one request in this second)."""
        if level.rpm is None and level.tpm is None:
            if level.budget_usd is not None:
                self._budget_keys[level.id] = level.budget_period or "total"
            return
        now_s = int(now)
        self._window(level.id, now_s).add(now_s, 1, 0)
        self._dirty.add((level.id, now_s))
        gen_left = self._allowance.get(level.id)
        if gen_left is not None:
            self._allowance[level.id] = (gen_left[0], gen_left[1] - 1)
        if level.budget_usd is not None:
            self._budget_keys[level.id] = level.budget_period or "total"

    def check_reservation(self, level: Level, usd: float, now: float) -> ProxyError | None:
        """A refusal if reserving `usd` (a message batch's estimate) would cross the key's
        budget: a batch runs later, so its whole estimate must fit in what is left now."""
        if level.budget_usd is None or usd <= 0:
            return None
        period = level.budget_period or "total"
        spent = self.spent(level.id, period, now)
        left = max(0.0, level.budget_usd - spent)
        if usd <= left:
            return None
        msg = (
            f"Budget too small for this batch on {_whose(level)}: its estimated cost is "
            f"{format_usd(usd)} (input estimated from the body, max_tokens as output, at batch "
            f"prices) and {format_usd(left)} of {format_usd(level.budget_usd)} is left. Submit "
            "fewer requests, lower max_tokens, or raise the budget."
        )
        return refusal("budget", "rate_limit_error", msg, headers=((b"x-should-retry", b"false"),))

    def reserve(self, level: Level, usd: float, tokens: int, now: float) -> None:
        """Count a reservation (a batch's estimate; negative to give one back) at once, in
        this process, until the request log's spend reaches the next snapshot; and its
        tokens against TPM."""
        if level.budget_usd is not None and usd:
            self._budget_keys[level.id] = level.budget_period or "total"
            self._recent(level.id).add(now, usd)
        if level.tpm is not None and tokens > 0:
            now_s = int(now)
            self._window(level.id, now_s).add(now_s, 0, tokens)
            self._dirty.add((level.id, now_s))

    def finish(self, level: Level, record: RequestRecord, now: float) -> None:
        """Count what a finished request used: its tokens (TPM) and its cost (budget)."""
        if level.tpm is not None:
            u = record.usage
            # Like the API's input limits, cache reads do not count; cache writes do.
            tokens = (
                (u.input_tokens or 0)
                + (u.cache_creation_input_tokens or 0)
                + (u.output_tokens or 0)
            )
            if tokens:
                now_s = int(now)
                self._window(level.id, now_s).add(now_s, 0, tokens)
                self._dirty.add((level.id, now_s))
        if level.budget_usd is not None and record.model:
            cost = self._prices.cost(record.model, record.usage, batch=False)
            if cost:
                self._recent(level.id).add(now, float(cost))

    # ------------------------------------------------------------- the checks

    def _window(self, key_id: str, now_s: int) -> SlidingCounts:
        w = self._own.get(key_id)
        if w is None:
            w = self._own[key_id] = SlidingCounts(WINDOW)
        else:
            w.expire(now_s)
        return w

    def _within_share(self, level: Level, limit: int, used: int, own_used: int, now: float) -> bool:
        """With N processes, admit at most ceil(left/N) between two syncs."""
        n = self._instances
        if n <= 1:
            return True
        if self.local_only():
            # The database is unreachable: nobody sees anybody; each keeps to its share.
            return own_used < math.ceil(limit / n)
        gen_left = self._allowance.get(level.id)
        if gen_left is None or gen_left[0] != self._generation:
            gen_left = (self._generation, math.ceil(max(0, limit - used) / n))
            self._allowance[level.id] = gen_left
        return gen_left[1] > 0

    def _check_budget(self, level: Level, now: float) -> ProxyError | None:
        assert level.budget_usd is not None
        period = level.budget_period or "total"
        self._budget_keys[level.id] = period
        spent = self.spent(level.id, period, now)
        if spent < level.budget_usd:
            return None
        if period == "total":
            when = "It does not reset: raise the budget to continue."
            span = "in total"
        else:
            when = f"It resets at {_period_end(period, now)}."
            span = f"this {period}"
        msg = (
            f"Budget exhausted for {_whose(level)}: "
            f"{format_usd(spent)} of {format_usd(level.budget_usd)} spent {span}. {when}"
        )
        return refusal("budget", "rate_limit_error", msg, headers=((b"x-should-retry", b"false"),))

    def spent(self, key_id: str, period: str, now: float) -> float:
        """Spend in the current period: the last snapshot plus this process's recent costs."""
        db = self._spend_db.get((key_id, current_period(period, _utc(now))), 0.0)
        local = self._spend_local.get(key_id)
        return db + (local.total if local is not None else 0.0)

    def _recent(self, level_id: str) -> _RecentSpend:
        found = self._spend_local.get(level_id)
        if found is None:
            found = self._spend_local[level_id] = _RecentSpend()
        return found

    # --------------------------------------------------------------- syncing

    async def start(self) -> None:
        if self._engine is None:
            return
        await self.sync()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Write the last counts and leave `proxy_instances`, so N drops at once."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._engine is not None:
            dirty = self._collect_dirty()
            try:
                await asyncio.to_thread(self._leave, dirty)
            except Exception as exc:
                log.warning("limits: final sync failed (%s)", type(exc).__name__)

    def healthy(self) -> bool:
        return self._engine is None or self._healthy

    def local_only(self) -> bool:
        """True while no sync has succeeded lately: each process keeps to its share."""
        return time.monotonic() - self._synced_at > _STALE_AFTER * self._sync_interval

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._sync_interval)
            await self.sync()

    async def sync(self) -> bool:
        """One round: write own counts, read the others' and the spend. False on failure."""
        assert self._engine is not None
        dirty = self._collect_dirty()
        now = time.time()
        budget_keys = dict(self._budget_keys)
        if self._known_budgets is not None:
            budget_keys.update(self._known_budgets())
        try:
            result = await asyncio.to_thread(self._sync_db, dirty, budget_keys, now)
        except Exception as exc:
            self._dirty.update((k, s) for k, s, _, _ in dirty)  # written next time
            if self._healthy:
                log.warning(
                    "limits: database unreachable (%s); counting locally, each process "
                    "keeps to its share",
                    type(exc).__name__,
                )
            self._healthy = False
            return False
        if not self._healthy:
            log.info("limits: database reachable again; counts reconciled")
        self._healthy = True
        self._others = result.others
        self._instances = max(1, result.instances)
        self._spend_db = result.spend
        self._generation += 1
        self._synced_at = time.monotonic()
        self._prune_local_spend(now - self._spend_lag)
        return True

    def _collect_dirty(self) -> list[tuple[str, int, int, int]]:
        """(key, second, requests, tokens) for every bucket changed since the last write."""
        out = []
        for key_id, second in self._dirty:
            w = self._own.get(key_id)
            if w is None:
                continue
            for s, r, t in w.buckets:
                if s == second:
                    out.append((key_id, s, r, t))
                    break
        self._dirty = set()
        return out

    def _prune_local_spend(self, before: float) -> None:
        for key_id in list(self._spend_local):
            if not self._spend_local[key_id].drop_before(before):
                del self._spend_local[key_id]

    def _sync_db(
        self, dirty: list[tuple[str, int, int, int]], budget_keys: dict[str, str], now: float
    ) -> _SyncResult:
        """Runs in a thread: the shared counts' SQL (store/limits.py)."""
        assert self._engine is not None
        prune = time.monotonic() >= self._next_prune
        if prune:
            self._next_prune = time.monotonic() + _PRUNE_EVERY
        shared = sync_counts(
            self._engine,
            instance_id=self.instance_id,
            started_at=self._started_at,
            dirty=dirty,
            budget_keys=budget_keys,
            now=_utc(now),
            window=WINDOW,
            prune=prune,
        )
        others = {k: _Others(buckets=b) for k, b in shared.others.items()}
        return _SyncResult(others, shared.instances, shared.spend)

    def _leave(self, dirty: list[tuple[str, int, int, int]]) -> None:
        assert self._engine is not None
        self._sync_db(dirty, {}, time.time())
        leave(self._engine, self.instance_id)

    def stats(self) -> dict[str, Any]:
        return {
            "instances": self._instances,
            "healthy": self._healthy,
            "keys_counted": len(self._own),
        }


class _RecentSpend:
    """One level's costs not yet surely in the snapshot, with their running total: the
    budget check reads the total on every request, so it is kept, not summed."""

    __slots__ = ("costs", "total")

    def __init__(self) -> None:
        self.costs: deque[tuple[float, float]] = deque()  # (unix time, usd)
        self.total = 0.0

    def add(self, now: float, usd: float) -> None:
        self.costs.append((now, usd))
        self.total += usd

    def drop_before(self, before: float) -> bool:
        """Forget costs older than `before`; False once none is left."""
        costs = self.costs
        while costs and costs[0][0] < before:
            self.total -= costs.popleft()[1]
        if not costs:
            self.total = 0.0  # no float drift carried into the next costs
        return bool(costs)


def _rate_refusal(reason: str, what: str, level: Level, wait: int) -> ProxyError:
    msg = f"Rate limit exceeded for {_whose(level)}: {what}. Retry after {wait} seconds."
    return refusal(reason, "rate_limit_error", msg, headers=((b"retry-after", str(wait).encode()),))


def _seconds_until_below(
    own: SlidingCounts, others: _Others | None, limit: int, col: int, now: float, now_s: int
) -> int:
    """Whole seconds until enough old buckets leave the window to get under `limit`."""
    per_second: dict[int, int] = {}
    for b in own.buckets:
        per_second[b[0]] = per_second.get(b[0], 0) + b[col]
    if others is not None:
        cut = now_s - WINDOW
        for b3 in others.buckets:
            if b3[0] > cut:
                per_second[b3[0]] = per_second.get(b3[0], 0) + b3[col]
    excess = sum(per_second.values()) - limit + 1
    freed = 0
    for second in sorted(per_second):
        freed += per_second[second]
        if freed >= excess:
            # Bucket `second` leaves the window when the clock reaches second + WINDOW.
            return max(1, math.ceil(second + WINDOW - now))
    return WINDOW


def _whose(level: Level) -> str:
    """How a refusal names the level it came from: key 'ci', user 'a@b.c', group 'eng'."""
    if level.kind == "org":
        return "the organisation"
    return f"{level.kind} '{level.name or level.id}'"


def format_usd(amount: float) -> str:
    """Cents for ordinary amounts; enough digits that a tiny budget does not read as $0.00."""
    if amount >= 1 or amount == 0:
        return f"${amount:,.2f}"
    digits = f"{amount:.6f}".rstrip("0")
    return "$" + (digits if len(digits.split(".")[1]) >= 2 else f"{amount:.2f}")


def _utc(now: float) -> datetime:
    return datetime.fromtimestamp(now, tz=UTC)


def _period_end(period: str, now: float) -> str:
    t = _utc(now)
    if period == "day":
        end = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    elif period == "week":
        start = (t - timedelta(days=t.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=7)
    else:
        first = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (first + timedelta(days=32)).replace(day=1)
    return end.strftime("%Y-%m-%dT%H:%M:%SZ")
