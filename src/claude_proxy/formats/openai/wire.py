"""Chat Completions as a wire format: where a request names its model and its end user, how
a response reports its usage (observer.py).

The Anthropic API serves OpenAI's `POST /v1/chat/completions` shapes with the same key; the
relay forwards both ways byte for byte, and this format only reads.
"""

from __future__ import annotations

from typing import Any

from claude_proxy.formats.openai.observer import ChatObserver
from claude_proxy.gateway.wire_format import note_model
from claude_proxy.store.records import (
    MAX_METADATA_USER_ID_CHARS,
    RequestRecord,
    bounded,
)


class OpenAIChatFormat:
    """`/v1/chat/completions`: OpenAI's request and response shapes."""

    __slots__ = ()

    def note_request(self, record: RequestRecord, body: dict[str, Any]) -> str | None:
        model = note_model(record, body)
        # The caller's end user: OpenAI's `user`, or `safety_identifier`, which OpenAI's
        # SDK now offers in its place (the upstream ignores both; the row keeps them).
        user = body.get("user")
        if not isinstance(user, str):
            user = body.get("safety_identifier")
        if isinstance(user, str):
            record.metadata_user_id = bounded(user, MAX_METADATA_USER_ID_CHARS)
        return model

    def unmetered(self, body: dict[str, Any]) -> str | None:
        """A stream reports usage only when `stream_options.include_usage` asks for it."""
        if body.get("stream") is not True:
            return None
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return None
        return (
            "This key has a token limit or a budget, so a streamed chat completion must "
            'report its usage: send "stream_options": {"include_usage": true}.'
        )

    def observer(self, content_encoding: str | None) -> ChatObserver:
        return ChatObserver(content_encoding)


OPENAI_CHAT = OpenAIChatFormat()
