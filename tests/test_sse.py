"""The side observer: usage, stop reason and errors from raw SSE bytes, however they are cut."""

from __future__ import annotations

import gzip

import orjson

from claude_proxy.formats.anthropic.observer import ResponseObserver

START = {
    "type": "message_start",
    "message": {
        "model": "claude-opus-5-5",
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [],
        "stop_reason": None,
        "usage": {
            "input_tokens": 5,
            "cache_creation_input_tokens": 9165,
            "cache_read_input_tokens": 6025,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 9165},
            "output_tokens": 1,
        },
    },
}


def ev(name: str, data: dict[str, object] | bytes) -> bytes:
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    return b"event: " + name.encode() + b"\ndata: " + payload + b"\n\n"


STREAM = b"".join(
    [
        ev("message_start", START),
        ev(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ev("ping", b'{"type": "ping"}'),
        ev(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "usage: fake"},
            },
        ),
        ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ev(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 15},
            },
        ),
        ev(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": None},
                "usage": {"output_tokens": 17, "input_tokens": 5},
            },
        ),
        ev("message_stop", {"type": "message_stop"}),
    ]
)


def check_full(obs: ResponseObserver) -> None:
    assert obs.model == "claude-opus-5-5" and obs.message_id == "msg_1"
    # A later usage-only delta with stop_reason null does not clear the stop reason.
    assert obs.stop_reason == "end_turn"
    u = obs.usage
    assert (u.input_tokens, u.output_tokens) == (5, 17)  # cumulative: last value wins
    assert u.cache_creation_input_tokens == 9165 and u.cache_read_input_tokens == 6025
    assert (u.cache_creation_5m_input_tokens, u.cache_creation_1h_input_tokens) == (0, 9165)
    assert obs.message_stop and obs.stream_complete and obs.error_type is None


def test_whole_stream() -> None:
    obs = ResponseObserver()
    obs.feed_sse(STREAM)
    check_full(obs)


def test_every_split_point() -> None:
    for cut in range(1, len(STREAM)):
        obs = ResponseObserver()
        obs.feed_sse(STREAM[:cut])
        obs.feed_sse(STREAM[cut:])
        check_full(obs)


def test_byte_at_a_time_with_crlf_framing() -> None:
    obs = ResponseObserver()
    for i in range(len(STREAM)):
        obs.feed_sse(STREAM.replace(b"\n", b"\r\n")[i * 2 : i * 2 + 2])
    check_full(obs)


def test_gzip_encoded_stream_is_observed() -> None:
    packed = gzip.compress(STREAM)
    obs = ResponseObserver("gzip")
    for i in range(0, len(packed), 7):
        obs.feed_sse(packed[i : i + 7])
    check_full(obs)


def test_truncated_stream_is_not_complete() -> None:
    obs = ResponseObserver()
    obs.feed_sse(STREAM[: STREAM.index(b"event: message_delta")])
    assert not obs.stream_complete and obs.stop_reason is None
    assert obs.usage.input_tokens == 5 and obs.usage.output_tokens == 1


def test_error_event_is_captured() -> None:
    obs = ResponseObserver()
    obs.feed_sse(ev("message_start", START))
    obs.feed_sse(
        ev(
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )
    )
    assert obs.stream_complete and obs.error_type == "overloaded_error"
    assert obs.error_message == "Overloaded"


def test_unknown_events_and_bad_json_are_tolerated() -> None:
    obs = ResponseObserver()
    obs.feed_sse(ev("future_event", b"{not json") + ev("message_delta", b"{broken"))
    obs.feed_sse(STREAM)
    check_full(obs)


def test_plain_json_message_and_error() -> None:
    body = orjson.dumps({**START["message"], "stop_reason": "max_tokens"})  # type: ignore[dict-item]
    obs = ResponseObserver()
    obs.feed_json(body[:10])
    obs.feed_json(body[10:])
    obs.finish_json()
    assert obs.stop_reason == "max_tokens" and obs.usage.cache_read_input_tokens == 6025
    err = ResponseObserver()
    err.feed_json(b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}')
    err.finish_json()
    assert err.error_type == "rate_limit_error" and err.error_message == "slow down"


def test_marker_words_inside_content_are_not_events() -> None:
    # Text that mentions the event names sits in a content delta's JSON: it is cut out and
    # looked at (it holds a marker) but is no error, no stop and no usage.
    text = {"type": "text_delta", "text": "event: error message_stop message_delta usage"}
    noisy = ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": text})
    at = STREAM.index(b"event: content_block_stop")
    for stream in (STREAM[:at] + noisy * 20 + STREAM[at:], noisy + STREAM):
        obs = ResponseObserver()
        obs.feed_sse(stream)
        check_full(obs)
