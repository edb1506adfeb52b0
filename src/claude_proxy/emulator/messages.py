"""What the emulated model "says": the content blocks of a reply, as Message JSON or as SSE events.

One `Reply` is built per request and rendered either way, so streaming and non-streaming answers
carry the same blocks and usage. Content, in order:
- a thinking block, when the request has `thinking.type` "enabled" or "adaptive";
- a text block with deterministic text (`events` deltas of `text_bytes` characters), or, for a
  structured-output request (`output_config.format` json_schema), JSON matching the schema;
- a tool_use block, when `tool_choice` forces a tool or the fault spec says `tool`.
`max_tokens` truncates the output (stop_reason "max_tokens") as the real API does.

SSE follows the API's wire format exactly: `event:` + `data:` + blank line, LF
only, `{"type": "ping"}` (with the space) right after the first content_block_start, real input
and cache counts in message_start with `output_tokens: 1`, cumulative usage in the single
message_delta, then message_stop. Each event is framed as one HTTP chunk. The text deltas, which
dominate long streams, are encoded once and reused for replies up to CACHE_LIMIT characters, and
generated lazily beyond that, so memory stays flat for any stream length.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import orjson

from claude_proxy.emulator.cache import InputUsage
from claude_proxy.emulator.tokens import tokens_for
from claude_proxy.emulator.wire import chunk, new_id

DEFAULT_EVENTS = 10
DEFAULT_TEXT_BYTES = 12
# ASCII without quotes or backslashes, so any slice of it is valid JSON string content as is.
BASE_TEXT = (
    "Hello! This is the claude-proxy emulator, a stand-in for the Anthropic API. "
    "Its replies are deterministic, so tests can rely on them. "
)
THINKING_DELTAS = (
    "The user sent a message. ",
    "I am the emulator, so I answer with ",
    "my fixed, deterministic reply.",
)
THINKING_TEXT = "".join(THINKING_DELTAS)
SIGNATURE = "Eu" + base64.b64encode(hashlib.sha256(THINKING_TEXT.encode()).digest() * 3).decode()
DEFAULT_TOOL = "get_weather"
DEFAULT_TOOL_INPUT: dict[str, Any] = {"location": "San Francisco, CA"}
# Replies with at most this much text have their encoded text (JSON and SSE frames) cached.
CACHE_LIMIT = 64 * 1024


def _event(name: bytes, data: bytes) -> bytes:
    return chunk(b"event: " + name + b"\ndata: " + data + b"\n\n")


PING = _event(b"ping", b'{"type": "ping"}')
MESSAGE_STOP = _event(b"message_stop", b'{"type":"message_stop"}')


@lru_cache(maxsize=64)
def _block_stop(index: int) -> bytes:
    return _event(b"content_block_stop", b'{"type":"content_block_stop","index":%d}' % index)


@lru_cache(maxsize=64)
def _text_start(index: int) -> bytes:
    return _event(
        b"content_block_start",
        b'{"type":"content_block_start","index":%d,"content_block":{"type":"text","text":""}}'
        % index,
    )


def text_for(events: int, text_bytes: int) -> str:
    """The whole reply text for `events` deltas of `text_bytes` characters."""
    n = events * text_bytes
    reps = n // len(BASE_TEXT) + 1
    return (BASE_TEXT * reps)[:n]


def iter_deltas(text_len: int, size: int) -> Iterator[str]:
    """The text deltas of a reply of `text_len` characters, generated lazily (O(size) memory)."""
    period = len(BASE_TEXT)
    ring = BASE_TEXT * (size // period + 2)
    for start in range(0, text_len, size):
        off = start % period
        yield ring[off : off + min(size, text_len - start)]


def _text_delta(index: int, text: str) -> bytes:
    return _event(
        b"content_block_delta",
        orjson.dumps(
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "text_delta", "text": text},
            }
        ),
    )


@lru_cache(maxsize=256)
def _text_frames(index: int, text_len: int, size: int) -> tuple[bytes, ...]:
    return tuple(_text_delta(index, t) for t in iter_deltas(text_len, size))


def _thinking_frames() -> tuple[bytes, ...]:
    start = _event(
        b"content_block_start",
        b'{"type":"content_block_start","index":0,"content_block":'
        b'{"type":"thinking","thinking":"","signature":""}}',
    )
    deltas = tuple(
        _event(
            b"content_block_delta",
            orjson.dumps(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "thinking_delta", "thinking": t},
                }
            ),
        )
        for t in THINKING_DELTAS
    )
    signature = _event(
        b"content_block_delta",
        orjson.dumps(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": SIGNATURE},
            }
        ),
    )
    return (start, PING, *deltas, signature, _block_stop(0))


THINKING_FRAMES = _thinking_frames()
THINKING_TOKENS = tokens_for(len(THINKING_TEXT))


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    input: dict[str, Any]
    json: str


@dataclass(slots=True)
class Reply:
    model: str
    id: str
    thinking: bool
    thinking_tokens: int
    text_len: int  # characters of text; 0 = no text block (when thinking used up max_tokens)
    text_bytes: int  # characters per text delta
    tool: ToolCall | None
    stop_reason: str
    usage: InputUsage
    output_tokens: int
    service_tier: str = "standard"
    speed: str | None = None
    custom_text: str | None = None  # structured output: JSON text instead of BASE_TEXT

    @property
    def cacheable(self) -> bool:
        """Whether the text is the standard one, small enough to use the encoded caches."""
        return self.custom_text is None and self.text_len <= CACHE_LIMIT

    def text(self) -> str:
        if self.custom_text is not None:
            return self.custom_text[: self.text_len]
        return (BASE_TEXT * (self.text_len // len(BASE_TEXT) + 1))[: self.text_len]

    def deltas(self) -> Iterator[str]:
        if self.custom_text is None:
            return iter_deltas(self.text_len, self.text_bytes)
        text, size = self.custom_text[: self.text_len], self.text_bytes
        return (text[i : i + size] for i in range(0, len(text), size))


def _example(schema: Any, name: str) -> Any:
    if not isinstance(schema, dict):
        return "example"
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        return _object_example(schema)
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if name in ("location", "city", "place", "address"):
        return "San Francisco, CA"
    return "example"


def _object_example(schema: dict[str, Any]) -> dict[str, Any]:
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        return {}
    required = schema.get("required")
    names = [n for n in required if n in props] if isinstance(required, list) else []
    if not names:
        names = [next(iter(props))]
    return {n: _example(props[n], n) for n in names}


def _output_schema(params: dict[str, Any]) -> Any:
    """The JSON schema of a structured-output request (`output_config.format`, or the older
    beta `output_format`), if any: the reply text is then JSON matching it."""
    config = params.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else params.get("output_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return fmt.get("schema", {})
    return None


def _tool_call(params: dict[str, Any], forced: bool) -> ToolCall | None:
    tools = params.get("tools")
    tools = tools if isinstance(tools, list) else []
    choice = params.get("tool_choice")
    choice_type = choice.get("type") if isinstance(choice, dict) else None
    if choice_type == "none" and not forced:
        return None
    name: str | None = None
    if choice_type == "tool" and isinstance(choice, dict) and isinstance(choice.get("name"), str):
        name = choice["name"]
    elif choice_type == "any" or forced:
        first = next((t for t in tools if isinstance(t, dict) and "name" in t), None)
        name = str(first["name"]) if first is not None else DEFAULT_TOOL
    if name is None:
        return None
    tool = next((t for t in tools if isinstance(t, dict) and t.get("name") == name), None)
    if tool is not None and isinstance(tool.get("input_schema"), dict):
        args = _object_example(tool["input_schema"])
    elif name == DEFAULT_TOOL:
        args = dict(DEFAULT_TOOL_INPUT)
    else:
        args = {}
    return ToolCall(new_id("toolu_"), name, args, orjson.dumps(args).decode())


def build_reply(
    params: dict[str, Any],
    usage: InputUsage,
    *,
    events: int | None = None,
    text_bytes: int | None = None,
    force_tool: bool = False,
    service_tier: str = "standard",
) -> Reply:
    """The reply to a validated `/v1/messages` body (model, max_tokens, messages present)."""
    n_events = DEFAULT_EVENTS if events is None else events
    size = DEFAULT_TEXT_BYTES if text_bytes is None else text_bytes
    max_tokens: int = params["max_tokens"]
    thinking = params.get("thinking")
    has_thinking = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    tool = (
        _tool_call(params, force_tool)
        if force_tool or params.get("tool_choice") is not None
        else None
    )
    schema = _output_schema(params)
    custom = orjson.dumps(_example(schema, "")).decode() if schema is not None else None
    text_len = n_events * size if custom is None else len(custom)
    thinking_tokens = THINKING_TOKENS if has_thinking else 0
    tool_tokens = tokens_for(len(tool.json) + len(tool.name)) if tool is not None else 0
    output = thinking_tokens + tokens_for(text_len) + tool_tokens
    stop_reason = "tool_use" if tool is not None else "end_turn"
    if output > max_tokens:
        # Truncate like the real API: thinking first, then text; a cut-off tool call is dropped.
        stop_reason = "max_tokens"
        tool = None
        thinking_tokens = min(thinking_tokens, max_tokens)
        text_len = min(text_len, (max_tokens - thinking_tokens) * 4)
        output = max_tokens
    speed = params.get("speed")
    return Reply(
        model=params["model"],
        id=new_id("msg_"),
        thinking=has_thinking,
        thinking_tokens=thinking_tokens,
        text_len=text_len,
        text_bytes=size,
        tool=tool,
        stop_reason=stop_reason,
        usage=usage,
        output_tokens=max(output, 1),
        service_tier=service_tier,
        speed=speed if speed in ("fast", "standard") else None,
        custom_text=custom,
    )


def _usage_start(r: Reply, output_tokens: int, *, final: bool) -> dict[str, Any]:
    u = r.usage
    usage: dict[str, Any] = {
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_creation,
        "cache_read_input_tokens": u.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u.cache_creation_5m,
            "ephemeral_1h_input_tokens": u.cache_creation_1h,
        },
        "output_tokens": output_tokens,
    }
    if final:
        usage["output_tokens_details"] = {"thinking_tokens": r.thinking_tokens}
        usage["server_tool_use"] = {"web_search_requests": 0, "web_fetch_requests": 0}
    usage["service_tier"] = r.service_tier
    usage["inference_geo"] = "not_available"
    if r.speed is not None:
        usage["speed"] = r.speed
    return usage


def content_blocks(r: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if r.thinking:
        thinking = THINKING_TEXT if r.thinking_tokens == THINKING_TOKENS else ""
        blocks.append({"type": "thinking", "thinking": thinking, "signature": SIGNATURE})
    if r.text_len or not r.thinking:
        blocks.append({"type": "text", "text": r.text()})
    if r.tool is not None:
        blocks.append(
            {
                "type": "tool_use",
                "id": r.tool.id,
                "name": r.tool.name,
                "input": r.tool.input,
                "caller": {"type": "direct"},
            }
        )
    return blocks


def message(r: Reply) -> dict[str, Any]:
    """The non-streaming Message object, keys in the real API's order."""
    return {
        "model": r.model,
        "id": r.id,
        "type": "message",
        "role": "assistant",
        "content": content_blocks(r),
        "container": None,
        "stop_reason": r.stop_reason,
        "stop_sequence": None,
        "stop_details": None,
        "usage": _usage_start(r, r.output_tokens, final=True),
        "diagnostics": None,
        "context_management": None,
    }


_MESSAGE_TEMPLATE = (
    b'{"model":%b,"id":"%b","type":"message","role":"assistant","content":%b,'
    b'"container":null,"stop_reason":"%b","stop_sequence":null,"stop_details":null,'
    b'"usage":{"input_tokens":%d,"cache_creation_input_tokens":%d,"cache_read_input_tokens":%d,'
    b'"cache_creation":{"ephemeral_5m_input_tokens":%d,"ephemeral_1h_input_tokens":%d},'
    b'"output_tokens":%d,"output_tokens_details":{"thinking_tokens":%d},'
    b'"server_tool_use":{"web_search_requests":0,"web_fetch_requests":0},'
    b'"service_tier":"%b","inference_geo":"not_available"%b},'
    b'"diagnostics":null,"context_management":null}'
)


@lru_cache(maxsize=256)
def _content_json(thinking: bool, thinking_tokens: int, text_len: int) -> bytes:
    probe = Reply("", "", thinking, thinking_tokens, text_len, 1, None, "", _NO_USAGE, 0)
    return orjson.dumps(content_blocks(probe))


_NO_USAGE = InputUsage(0)


def message_json(r: Reply) -> bytes:
    """`orjson.dumps(message(r))`, from a template when the content is the cached kind."""
    if r.tool is not None or not r.cacheable:
        return orjson.dumps(message(r))
    u = r.usage
    return _MESSAGE_TEMPLATE % (
        orjson.dumps(r.model),
        r.id.encode(),
        _content_json(r.thinking, r.thinking_tokens, r.text_len),
        r.stop_reason.encode(),
        u.input_tokens,
        u.cache_creation_5m + u.cache_creation_1h,
        u.cache_read,
        u.cache_creation_5m,
        u.cache_creation_1h,
        r.output_tokens,
        r.thinking_tokens,
        r.service_tier.encode(),
        b',"speed":"%b"' % r.speed.encode() if r.speed is not None else b"",
    )


def sse_frames(r: Reply) -> tuple[int, Iterator[bytes]]:
    """How many SSE events the stream has, and the events, each framed as one HTTP chunk.

    Frames are produced lazily, so a stream of a million deltas costs no more memory than one.
    """
    start = {
        "type": "message_start",
        "message": {
            "model": r.model,
            "id": r.id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "container": None,
            "stop_reason": None,
            "stop_sequence": None,
            "stop_details": None,
            "usage": _usage_start(r, 1, final=False),
            "diagnostics": None,
            "context_management": None,
        },
    }
    head: list[bytes] = [_event(b"message_start", orjson.dumps(start))]
    index = 0
    if r.thinking:
        if r.thinking_tokens == THINKING_TOKENS:
            head.extend(THINKING_FRAMES)
        else:  # truncated by max_tokens: only the signature survives
            head.extend((THINKING_FRAMES[0], PING, THINKING_FRAMES[-2], THINKING_FRAMES[-1]))
        index = 1
    text: tuple[bytes, ...] | Iterator[bytes] = ()
    n_text = 0
    tail: list[bytes] = []
    if r.text_len or not r.thinking:
        head.append(_text_start(index))
        if index == 0:
            head.append(PING)
        n_text = -(-r.text_len // r.text_bytes)
        if r.cacheable:
            text = _text_frames(index, r.text_len, r.text_bytes)
        else:
            text = map(partial(_text_delta, index), r.deltas())  # binds index now
        tail.append(_block_stop(index))
        index += 1
    if r.tool is not None:
        tail.extend(_tool_frames(index, r.tool))
    u = r.usage
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": r.stop_reason, "stop_sequence": None, "stop_details": None},
        "usage": {
            "input_tokens": u.input_tokens,
            "cache_creation_input_tokens": u.cache_creation,
            "cache_read_input_tokens": u.cache_read,
            "output_tokens": r.output_tokens,
        },
        "context_management": {"applied_edits": []},
    }
    tail.append(_event(b"message_delta", orjson.dumps(delta)))
    tail.append(MESSAGE_STOP)
    return len(head) + n_text + len(tail), itertools.chain(head, text, tail)


def _tool_frames(index: int, t: ToolCall) -> list[bytes]:
    frames = [
        _event(
            b"content_block_start",
            orjson.dumps(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {
                        "type": "tool_use",
                        "id": t.id,
                        "name": t.name,
                        "input": {},
                        "caller": {"type": "direct"},
                    },
                }
            ),
        )
    ]
    half = max(1, len(t.json) // 2)
    # The first input_json_delta is empty, as the real API's often is.
    for part in ("", *(p for p in (t.json[:half], t.json[half:]) if p)):
        frames.append(
            _event(
                b"content_block_delta",
                orjson.dumps(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": part},
                    }
                ),
            )
        )
    frames.append(_block_stop(index))
    return frames


def error_frame(request_id: str) -> bytes:
    """The mid-stream `event: error` (overloaded), as the real API sends it."""
    return _event(
        b"error",
        orjson.dumps(
            {
                "type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"},
                "request_id": request_id,
            }
        ),
    )
