"""Message batches through the proxy: what a submission may cost, results that come back
through the proxy, and spend settled to the real cost.

A batch runs, and is billed, hours after it was submitted, and its usage reaches the proxy
only in the results. So its spend is written to the request log as a two-row ledger
(docs/request-logs.md):

- the submission row (`POST /v1/messages/batches`, answered 200) reserves an estimate: each
  request's input at one token per `BYTES_PER_TOKEN` bytes of its params (the API's
  tokenizer gives about four for English, so this errs high) and its `max_tokens` as output,
  at batch prices. Budgets count it at once, so a key cannot submit more than it has left;
- the settlement row (id `cpr_batch_<batch id>`, dated like the submission so that both land
  in the same budget period) carries the real tokens summed over the results and, as its
  cost, the real cost minus the reservation.

The sum of `cost_usd` over a batch's rows is its real cost. The settlement is made when the
results are read through the proxy, or by `BatchSettler` polling the batch until it ends,
whichever comes first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import orjson
from sqlalchemy import Engine

from claude_proxy.formats.anthropic.pricing import PriceTable
from claude_proxy.store.batches import SETTLEMENT_PREFIX, Submission, unsettled_batches
from claude_proxy.store.columns import TOKEN_COLUMNS
from claude_proxy.store.records import MAX_MODEL_CHARS, RecordSink, RequestRecord, Usage, bounded
from claude_proxy.upstream.pool import UpstreamPool

log = logging.getLogger("claude_proxy.batches")

BYTES_PER_TOKEN = 3
# A batch ends within 24 hours; its submission is looked for this far back.
SETTLE_WINDOW_SECONDS = 7 * 24 * 3600
_VERSION = (b"anthropic-version", b"2023-06-01")


@dataclass(slots=True)
class BatchEstimate:
    """What a submission is reserved at: tokens and USD at batch prices."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    models: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def estimate(requests: list[Any], prices: PriceTable) -> BatchEstimate:
    """The reservation for a batch's `requests` (see the module docstring)."""
    est = BatchEstimate()
    for item in requests:
        params = item.get("params") if isinstance(item, dict) else None
        if not isinstance(params, dict):
            continue
        model = params.get("model")
        max_tokens = params.get("max_tokens")
        out = max_tokens if type(max_tokens) is int and max_tokens > 0 else 0
        inp = -(-len(orjson.dumps(params)) // BYTES_PER_TOKEN)
        est.input_tokens += inp
        est.output_tokens += out
        if isinstance(model, str):
            if model not in est.models:
                est.models.append(model)
            cost = prices.cost(model, Usage(input_tokens=inp, output_tokens=out), batch=True)
            est.cost_usd += cost or 0
    return est


def results_path(batch_id: str) -> str:
    return f"/v1/messages/batches/{quote(batch_id, safe='')}/results"


def rewrite_results_urls(body: bytes, base: str) -> tuple[bytes, list[dict[str, Any]]] | None:
    """A batch object or a page of them with every `results_url` on the proxy's own `base`
    (the SDK fetches that URL with the client's key: the API's host would refuse it), and
    the batch objects; None if the body holds no batch object."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    data = doc.get("data")
    items = data if doc.get("type") != "message_batch" and isinstance(data, list) else [doc]
    batches = [
        b
        for b in items
        if isinstance(b, dict) and b.get("type") == "message_batch" and isinstance(b.get("id"), str)
    ]
    if not batches:
        return None
    for b in batches:
        if isinstance(b.get("results_url"), str):
            b["results_url"] = base + results_path(b["id"])
    return orjson.dumps(doc), batches


def public_base(configured: str | None, scheme: str, host: bytes | None) -> str:
    """The proxy's URL as its clients reach it: CLAUDE_PROXY_PUBLIC_URL, else the request's
    scheme (X-Forwarded-Proto from a trusted load balancer) and Host."""
    if configured:
        return configured.rstrip("/")
    name = host.decode("latin-1") if host else ""
    if not name or len(name) > 255 or not all(c.isalnum() or c in ".-:[]" for c in name):
        name = "localhost"
    return f"{scheme}://{name}"


class ResultsTally:
    """Sums usage and cost over a batch's JSON Lines results, fed in any chunks."""

    def __init__(self, prices: PriceTable) -> None:
        self._prices = prices
        self._partial = b""
        self.usage = Usage()
        self.cost = Decimal(0)
        self._cost_by_model: dict[str, Decimal] = {}

    def feed(self, chunk: bytes) -> None:
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for line in lines:
            self._line(line)

    def finish(self) -> None:
        if self._partial.strip():
            self._line(self._partial)
        self._partial = b""

    @property
    def model(self) -> str | None:
        """The model that cost most (a batch row names one model)."""
        if not self._cost_by_model:
            return None
        return max(self._cost_by_model.items(), key=lambda kv: kv[1])[0]

    def _line(self, line: bytes) -> None:
        try:
            doc = orjson.loads(line)
            message = doc["result"]["message"]
            usage = message["usage"]
            model = message["model"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return  # errored, canceled, expired: nothing was billed
        if not isinstance(usage, dict) or not isinstance(model, str):
            return
        one = Usage()
        one.merge(usage)
        for name in TOKEN_COLUMNS:
            n = getattr(one, name)
            if type(n) is int and n > 0:
                setattr(self.usage, name, (getattr(self.usage, name) or 0) + n)
        cost = self._prices.cost(model, one, batch=True) or Decimal(0)
        self.cost += cost
        model = bounded(model, MAX_MODEL_CHARS) or ""
        self._cost_by_model[model] = self._cost_by_model.get(model, Decimal(0)) + cost


class BatchSettler:
    """Settles the batches created through the proxy: when their results are read through
    it (`poke`), and by polling every `poll_seconds` for the ones nobody reads here."""

    def __init__(
        self,
        *,
        engine: Engine,
        upstream: UpstreamPool,
        sink: RecordSink,
        prices: PriceTable,
        poll_seconds: float,
    ) -> None:
        self._engine = engine
        self._upstream = upstream
        self._sink = sink
        self._prices = prices
        self.poll_seconds = poll_seconds
        self._known: dict[str, Submission] = {}  # submitted through this process
        self._settled: set[str] = set()
        self._busy: set[str] = set()  # being settled now
        self._tasks: set[asyncio.Task[None]] = set()
        self.settled_count = 0

    def track(self, submission: Submission) -> None:
        self._known[submission.batch_id] = submission

    def poke(self, batch_id: str) -> None:
        """The batch may have ended (its results were read): settle it soon, once."""
        if batch_id in self._settled or batch_id in self._busy:
            return
        task = asyncio.get_running_loop().create_task(self._settle_by_id(batch_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self.settle_due()
            except Exception:
                log.exception("settling message batches failed; retrying at the next poll")

    async def settle_due(self) -> int:
        """Settle every unsettled batch that has ended; returns how many were settled."""
        due = await asyncio.to_thread(unsettled_batches, self._engine, self._since())
        settled = 0
        for sub in due:
            settled += await self._settle(sub)
        return settled

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _since(self) -> datetime:
        return datetime.fromtimestamp(time.time() - SETTLE_WINDOW_SECONDS, tz=UTC)

    async def _settle_by_id(self, batch_id: str) -> None:
        try:
            sub = self._known.get(batch_id)
            if sub is None:
                found = await asyncio.to_thread(
                    unsettled_batches, self._engine, self._since(), batch_id
                )
                if not found:
                    return  # not created through the proxy, or settled already
                sub = found[0]
            await self._settle(sub)
        except Exception:
            log.exception("settling message batch %s failed; the poll retries it", batch_id)

    async def _settle(self, sub: Submission) -> int:
        batch_id = sub.batch_id
        if batch_id in self._settled or batch_id in self._busy:
            return 0
        self._busy.add(batch_id)
        try:
            return await self._settle_now(sub)
        finally:
            self._busy.discard(batch_id)

    async def _settle_now(self, sub: Submission) -> int:
        batch_id = sub.batch_id
        status, body = await self._get(f"/v1/messages/batches/{quote(batch_id, safe='')}")
        if status != 200:
            log.warning("message batch %s: the upstream answered %d; not settled", batch_id, status)
            return 0
        doc = orjson.loads(body)
        if not isinstance(doc, dict) or doc.get("processing_status") != "ended":
            return 0
        tally = ResultsTally(self._prices)
        status, _ = await self._get(results_path(batch_id), tally.feed)
        if status != 200:
            log.warning("message batch %s: results answered %d; not settled", batch_id, status)
            return 0
        tally.finish()
        self._settled.add(batch_id)
        self._known.pop(batch_id, None)
        record = RequestRecord(
            id=SETTLEMENT_PREFIX + batch_id,
            created_at=sub.created_at,
            method="GET",
            endpoint="/v1/messages/batches/{id}/results",
            key_id=sub.key_id,
            user_id=sub.user_id,
            group_id=sub.group_id,
            model=tally.model or sub.model,
            status_code=200,
            message_id=batch_id,
            usage=tally.usage,
            cost_usd=str(tally.cost - sub.reserved_usd),
        )
        self._sink.submit(record)
        self.settled_count += 1
        log.info(
            "message batch %s settled: $%s (reserved $%s)", batch_id, tally.cost, sub.reserved_usd
        )
        return 1

    async def _get(self, path: str, feed: Any = None) -> tuple[int, bytes]:
        """GET from the upstream with the proxy's own credentials; the body is kept, or fed."""
        resp = await self._upstream.request(b"GET", path.encode(), [_VERSION], b"")
        kept = bytearray()
        try:
            while chunk := await resp.read():
                if feed is not None:
                    feed(chunk)
                else:
                    kept += chunk
        finally:
            resp.release()
        return resp.status, bytes(kept)
