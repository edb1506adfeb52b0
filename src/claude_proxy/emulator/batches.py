"""Message Batches, in memory: a batch is processed the moment it is created.

Each request's params go through the same validation and reply generator as `/v1/messages`
(usage says `service_tier: "batch"`); invalid params become `errored` results, as the real API
reports them. The batch is returned already `ended`, with `results_url` pointing at the
emulator's own `/v1/messages/batches/{id}/results`, whose JSONL lines are kept pre-encoded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from claude_proxy.emulator.wire import ApiError, error_type_for, new_id, rfc3339

EXPIRY_SECONDS = 24 * 3600
MAX_REQUESTS = 100_000

# (params) -> Message dict; raises ApiError for params the API would reject.
ReplyFn = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(slots=True)
class Batch:
    id: str
    created_at: float
    results_url: str
    lines: list[bytes] = field(default_factory=list)
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0
    ended_at: float | None = None
    cancel_initiated_at: float | None = None

    def ended(self) -> bool:
        return self.ended_at is not None and self.ended_at <= time.time()

    def to_json(self) -> dict[str, Any]:
        ended = self.ended()
        total = self.succeeded + self.errored + self.canceled + self.expired
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            # Counts other than `processing` stay 0 until the whole batch ends, as the API's.
            "request_counts": {
                "processing": 0 if ended else total,
                "succeeded": self.succeeded if ended else 0,
                "errored": self.errored if ended else 0,
                "canceled": self.canceled if ended else 0,
                "expired": self.expired if ended else 0,
            },
            "created_at": rfc3339(self.created_at, micros=True),
            "expires_at": rfc3339(self.created_at + EXPIRY_SECONDS, micros=True),
            "ended_at": rfc3339(self.ended_at, micros=True) if ended and self.ended_at else None,
            "cancel_initiated_at": (
                rfc3339(self.cancel_initiated_at, micros=True) if self.cancel_initiated_at else None
            ),
            "archived_at": None,
            "results_url": self.results_url if ended else None,
        }


class BatchStore:
    __slots__ = ("_batches",)

    def __init__(self) -> None:
        self._batches: dict[str, Batch] = {}

    def clear(self) -> None:
        self._batches.clear()

    def create(
        self, body: dict[str, Any], base_url: str, reply: ReplyFn, processing_seconds: float = 0
    ) -> Batch:
        """Process every request now; the batch reads as ended `processing_seconds` later."""
        requests = body.get("requests")
        if requests is None:
            raise ApiError(400, "requests: Field required")
        if not isinstance(requests, list):
            raise ApiError(400, "requests: Input should be a valid list")
        if not requests:
            raise ApiError(400, "requests: List should have at least 1 item after validation")
        if len(requests) > MAX_REQUESTS:
            raise ApiError(400, f"requests: List should have at most {MAX_REQUESTS} items")
        seen: set[str] = set()
        for i, item in enumerate(requests):
            if not isinstance(item, dict):
                raise ApiError(400, f"requests.{i}: Input should be a valid dictionary")
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                raise ApiError(400, f"requests.{i}.custom_id: Field required")
            if custom_id in seen:
                raise ApiError(400, f"requests.{i}.custom_id: Duplicate custom_id {custom_id!r}")
            seen.add(custom_id)
            if not isinstance(item.get("params"), dict):
                raise ApiError(400, f"requests.{i}.params: Field required")
        now = time.time()
        batch_id = new_id("msgbatch_")
        batch = Batch(batch_id, now, f"{base_url}/v1/messages/batches/{batch_id}/results")
        for item in requests:
            try:
                result: dict[str, Any] = {"type": "succeeded", "message": reply(item["params"])}
                batch.succeeded += 1
            except ApiError as exc:
                result = {
                    "type": "errored",
                    "error": {
                        "type": "error",
                        "error": {
                            "type": exc.error_type or error_type_for(exc.status),
                            "message": exc.message,
                        },
                        "request_id": new_id("req_"),
                    },
                }
                batch.errored += 1
            batch.lines.append(orjson.dumps({"custom_id": item["custom_id"], "result": result}))
        batch.ended_at = time.time() + processing_seconds
        self._batches[batch_id] = batch
        return batch

    def get(self, batch_id: str) -> Batch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise ApiError(404, f"No batch found with id {batch_id!r}")
        return batch

    def newest_first(self) -> list[dict[str, Any]]:
        return [b.to_json() for b in reversed(self._batches.values())]

    def cancel(self, batch_id: str) -> Batch:
        batch = self.get(batch_id)
        if not batch.ended() and batch.cancel_initiated_at is None:
            batch.cancel_initiated_at = time.time()
        return batch

    def delete(self, batch_id: str) -> dict[str, Any]:
        batch = self.get(batch_id)
        if not batch.ended():
            raise ApiError(400, "Batches can only be deleted once they have finished processing")
        del self._batches[batch_id]
        return {"id": batch_id, "type": "message_batch_deleted"}
