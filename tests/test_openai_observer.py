"""The Chat Completions observer: usage, finish reason, ids and errors from the raw bytes of
`/v1/chat/completions` responses, however they are cut, and what the row's cost becomes."""

from __future__ import annotations

import ast
import gzip
import zlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from claude_proxy.formats.anthropic.pricing import PriceTable
from claude_proxy.formats.body_copy import MAX_EVENT_BYTES
from claude_proxy.formats.openai import observer as observer_module
from claude_proxy.formats.openai.observer import ChatObserver
from claude_proxy.formats.openai.wire import OPENAI_CHAT
from claude_proxy.store.records import MAX_METADATA_USER_ID_CHARS, RequestRecord, Usage

MODEL = "claude-haiku-4-5"
ID = "msg_011CabcdefghijklmnopqrST"
HEAD = {"id": ID, "object": "chat.completion.chunk", "created": 1796000000, "model": MODEL}


def data(obj: dict[str, Any] | str) -> bytes:
    return b"data: " + (obj.encode() if isinstance(obj, str) else orjson.dumps(obj)) + b"\n\n"


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return data(HEAD | {"choices": [choice]} | extra)


def stream(*, include_usage: bool, cached: int | None = None, done: bool = True) -> bytes:
    """A stream as the endpoint sends one; with include_usage every chunk says "usage":null
    and a last chunk with no choices carries the usage."""
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    parts = [chunk({"role": "assistant", "content": ""}, **extra)]
    # Content that looks like the markers the observer scans for must not fool it.
    for text in ("Hello! ", 'a "finish_reason": "x", ', '"usage": {"a": 1} ', "[DONE] error"):
        parts.append(chunk({"content": text}, **extra))
    parts.append(chunk({}, "stop", **extra))
    if include_usage:
        usage: dict[str, Any] = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}
        if cached is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        parts.append(data(HEAD | {"choices": [], "usage": usage}))
    if done:
        parts.append(data("[DONE]"))
    return b"".join(parts)


def fed(raw: bytes, step: int | None = None, encoding: str | None = None) -> ChatObserver:
    obs = ChatObserver(encoding)
    step = step or len(raw)
    for i in range(0, len(raw), step):
        obs.feed_sse(raw[i : i + step])
    return obs


def test_stream_with_include_usage() -> None:
    obs = fed(stream(include_usage=True))
    assert (obs.model, obs.message_id, obs.stop_reason) == (MODEL, ID, "stop")
    assert obs.usage == Usage(input_tokens=120, output_tokens=30, cache_read_input_tokens=0)
    assert obs.stream_complete and obs.error_type is None


def test_every_split_point_and_byte_at_a_time() -> None:
    raw = stream(include_usage=True, cached=100)
    whole = fed(raw)
    for cut in range(1, len(raw)):
        obs = ChatObserver()
        obs.feed_sse(raw[:cut])
        obs.feed_sse(raw[cut:])
        assert (obs.usage, obs.stop_reason, obs.message_id) == (
            whole.usage,
            "stop",
            ID,
        ), cut
    assert fed(raw, step=1).usage == whole.usage


def test_crlf_framing() -> None:
    raw = stream(include_usage=True).replace(b"\n", b"\r\n")
    obs = fed(raw, step=1)
    assert obs.usage.output_tokens == 30 and obs.stream_complete


def test_stream_without_include_usage_has_no_usage_but_ends() -> None:
    """Without stream_options.include_usage the endpoint sends no usage at all: the usage
    stays unknown (None, never a made-up 0), and [DONE] still ends the stream."""
    obs = fed(stream(include_usage=False))
    assert obs.usage == Usage()
    assert obs.stop_reason == "stop" and obs.message_id == ID and obs.stream_complete


def test_cached_tokens_are_taken_out_of_the_input() -> None:
    """OpenAI's prompt_tokens includes the cached part; Anthropic's input_tokens does not."""
    obs = fed(stream(include_usage=True, cached=100))
    assert obs.usage == Usage(input_tokens=20, output_tokens=30, cache_read_input_tokens=100)
    # Never negative, whatever an upstream says.
    obs = ChatObserver()
    obs.feed_json(
        orjson.dumps(
            {
                "id": ID,
                "choices": [],
                "usage": {"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}},
            }
        )
    )
    obs.finish_json()
    assert (obs.usage.input_tokens, obs.usage.cache_read_input_tokens) == (0, 5)


def test_cached_tokens_are_billed_at_the_read_rate() -> None:
    """The row's cost under Anthropic's prices: 20 input at $1, 100 reads at $0.10, 30
    output at $5 per MTok (Haiku 4.5), not 120 input plus 100 reads."""
    obs = fed(stream(include_usage=True, cached=100))
    cost = PriceTable.load().cost(MODEL, obs.usage)
    assert cost == (Decimal(20) * 1 + Decimal(100) * Decimal("0.10") + Decimal(30) * 5) / 10**6


def test_plain_completion() -> None:
    body = {
        "id": ID,
        "object": "chat.completion",
        "created": 1796000000,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi", "tool_calls": []},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
    raw = orjson.dumps(body)
    obs = ChatObserver()
    for i in range(0, len(raw), 10):
        obs.feed_json(raw[i : i + 10])
    obs.finish_json()
    assert (obs.model, obs.message_id, obs.stop_reason) == (MODEL, ID, "tool_calls")
    assert obs.usage == Usage(input_tokens=12, output_tokens=7, cache_read_input_tokens=0)
    assert obs.error_type is None


def test_gzip_and_deflate() -> None:
    raw = stream(include_usage=True, cached=100)
    for encoding, packed in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw))):
        obs = fed(packed, step=7, encoding=encoding)
        assert obs.usage.input_tokens == 20 and obs.stream_complete, encoding
    body = orjson.dumps({"id": ID, "model": MODEL, "choices": [], "usage": {"prompt_tokens": 3}})
    obs = ChatObserver("gzip")
    obs.feed_json(gzip.compress(body))
    obs.finish_json()
    assert obs.usage.input_tokens == 3


def test_error_bodies_in_either_shape() -> None:
    openai_shaped = {
        "error": {
            "code": "not_found_error",
            "message": "model: gpt-4o",
            "type": "not_found_error",
            "param": None,
        }
    }
    anthropic_shaped = {
        "type": "error",
        "error": {"type": "permission_error", "message": "no"},
        "request_id": "req_1",
    }
    for body, expected in (
        (openai_shaped, ("not_found_error", "model: gpt-4o")),
        (anthropic_shaped, ("permission_error", "no")),
        (
            {"error": {"code": "invalid_request_error", "message": "x"}},
            ("invalid_request_error", "x"),
        ),
        ({"error": "plain words"}, ("api_error", "plain words")),
    ):
        obs = ChatObserver()
        obs.feed_json(orjson.dumps(body))
        obs.finish_json()
        assert (obs.error_type, obs.error_message) == expected
        assert obs.usage == Usage() and obs.message_id is None


def test_an_error_event_ends_the_stream() -> None:
    head = stream(include_usage=True, done=False).split(b"\n\n")[:3]
    cut = b"\n\n".join(head) + b"\n\n"
    overloaded = {"error": {"message": "Overloaded", "type": "overloaded_error"}}
    for tail in (
        data(overloaded),  # OpenAI's way: a data event with an error
        b"event: error\ndata: "
        + orjson.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "x"}})
        + b"\n\n",  # Anthropic's way (also how the proxy itself breaks a stream)
    ):
        obs = fed(cut + tail)
        assert obs.error_type == "overloaded_error" and obs.stream_complete
        assert obs.message_id == ID and obs.stop_reason is None


def test_a_stream_cut_before_done_is_not_complete() -> None:
    raw = stream(include_usage=True)
    cut = raw[: raw.rindex(b"data: [DONE]")]
    obs = fed(cut)
    assert not obs.stream_complete  # the relay then ends it with an error event
    assert obs.usage.output_tokens == 30  # what it saw is kept for the row
    obs = fed(raw[: raw.index(b'"finish_reason":"stop"')])
    assert not obs.stream_complete and obs.usage == Usage() and obs.stop_reason is None


def test_buffering_is_bounded() -> None:
    obs = ChatObserver()
    big = b"data: " + b"x" * (MAX_EVENT_BYTES + 1)
    obs.feed_sse(big)
    assert obs.gave_up and obs._buf == b""
    obs.feed_sse(data("[DONE]"))  # observation has stopped; forwarding goes on regardless
    assert not obs.done
    obs = ChatObserver()
    obs.feed_json(b" " * (MAX_EVENT_BYTES + 1))
    assert obs.gave_up and not obs._json
    obs.finish_json()
    assert obs.usage == Usage()
    unknown = ChatObserver("br")
    unknown.feed_sse(stream(include_usage=True))
    assert unknown.gave_up and unknown.usage == Usage()


def test_only_the_chunks_that_matter_are_decoded(monkeypatch: Any) -> None:
    """Content deltas (`"finish_reason":null`, `"usage":null`) are never JSON-decoded."""
    decoded: list[bytes] = []
    real = orjson.loads

    def counting(raw: Any) -> Any:
        decoded.append(bytes(raw))
        return real(raw)

    monkeypatch.setattr(observer_module.orjson, "loads", counting)
    extra = {"usage": None}
    raw = (
        chunk({"role": "assistant", "content": ""}, **extra)
        + b"".join(chunk({"content": f"word {i} "}, **extra) for i in range(500))
        + chunk({}, "length", **extra)
        + data(HEAD | {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
        + data("[DONE]")
    )
    obs = fed(raw, step=4096)
    assert obs.stop_reason == "length" and obs.usage.output_tokens == 2 and obs.stream_complete
    assert len(decoded) == 3  # the first chunk, the finish chunk, the usage chunk


def test_note_request() -> None:
    record = RequestRecord(id="r", created_at=0.0, method="POST", endpoint="/v1/chat/completions")
    model = OPENAI_CHAT.note_request(
        record, {"model": MODEL, "stream": True, "user": "u" * 1000, "messages": []}
    )
    assert model == MODEL and record.model == MODEL and record.stream is True
    assert record.metadata_user_id is not None
    assert len(record.metadata_user_id) == MAX_METADATA_USER_ID_CHARS
    assert record.metadata_user_id.startswith("uuu")
    long_model = "claude-" + "x" * 1000
    record = RequestRecord(id="r", created_at=0.0, method="POST", endpoint="/v1/chat/completions")
    # The allowlist gets the model whole; the record keeps it bounded.
    assert OPENAI_CHAT.note_request(record, {"model": long_model, "safety_identifier": "s-1"}) == (
        long_model
    )
    assert record.model is not None and len(record.model) == 256
    assert record.metadata_user_id == "s-1" and record.stream is False
    record = RequestRecord(id="r", created_at=0.0, method="POST", endpoint="/v1/chat/completions")
    assert OPENAI_CHAT.note_request(record, {"model": 5, "user": 7}) is None
    assert record.model is None and record.metadata_user_id is None
    assert isinstance(OPENAI_CHAT.observer("gzip"), ChatObserver)


def test_the_openai_format_imports_nothing_from_the_anthropic_one() -> None:
    package = Path(observer_module.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                assert not name.startswith("claude_proxy.formats.anthropic"), (path.name, name)
