"""Chat Completions as a wire format (placeholder: the model is read, usage is not yet)."""

from __future__ import annotations

from typing import Any

from claude_proxy.formats.anthropic.observer import ResponseObserver
from claude_proxy.store.records import MAX_MODEL_CHARS, RequestRecord, bounded


class OpenAIChatFormat:
    __slots__ = ()

    def note_request(self, record: RequestRecord, body: dict[str, Any]) -> str | None:
        model = body.get("model")
        if not isinstance(model, str):
            return None
        record.model = bounded(model, MAX_MODEL_CHARS)
        record.stream = body.get("stream") is True
        return model

    def observer(self, content_encoding: str | None) -> ResponseObserver:
        return ResponseObserver(content_encoding)


OPENAI_CHAT = OpenAIChatFormat()
