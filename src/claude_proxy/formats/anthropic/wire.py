"""The Messages API as a wire format: where a request names its model, how a response
reports its usage (observer.py)."""

from __future__ import annotations

from typing import Any

from claude_proxy.formats.anthropic.observer import ResponseObserver
from claude_proxy.gateway.wire_format import note_model
from claude_proxy.store.records import (
    MAX_METADATA_USER_ID_CHARS,
    RequestRecord,
    bounded,
)


class AnthropicFormat:
    """`/v1/messages` and the endpoints shaped like it (count_tokens, batches' requests)."""

    __slots__ = ()

    def note_request(self, record: RequestRecord, body: dict[str, Any]) -> str | None:
        model = note_model(record, body)
        meta = body.get("metadata")
        if isinstance(meta, dict) and isinstance(meta.get("user_id"), str):
            record.metadata_user_id = bounded(meta["user_id"], MAX_METADATA_USER_ID_CHARS)
        return model

    def unmetered(self, body: dict[str, Any]) -> str | None:
        return None  # every response reports its usage, streamed or not

    def observer(self, content_encoding: str | None) -> ResponseObserver:
        return ResponseObserver(content_encoding)


ANTHROPIC = AnthropicFormat()
