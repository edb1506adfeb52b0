"""The OpenAI-compatible endpoint: `POST /v1/chat/completions`, as the Anthropic API serves it.

A Chat Completions request is translated into the `/v1/messages` request it stands for
(system and developer messages hoisted into `system`, joined with a newline, as the API
documents; tools, tool calls and tool results as blocks), then answered by the same
`build_reply` and counted by the same token estimate, so a prompt costs the same tokens
through either endpoint. The reply is rendered in OpenAI's shapes:

- `chat.completion` JSON: one choice, `finish_reason` mapped from the stop reason
  (end_turn/stop_sequence → stop, max_tokens → length, tool_use → tool_calls), usage with
  `prompt_tokens`, `completion_tokens`, `total_tokens`. No `prompt_tokens_details`: the API
  documents it as always empty (prompt caching is not offered through this endpoint).
- SSE: `data: {chat.completion.chunk}` events (a role chunk, content deltas, tool-call
  deltas, a finish chunk), then `data: [DONE]`. With `stream_options.include_usage` every
  chunk carries `"usage":null` and one more chunk, with `choices: []`, carries the usage.
- Errors: OpenAI's shape, `{"error": {"code", "message", "type", "param"}}`, with the
  Anthropic error type and message the same request gets from `/v1/messages`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import orjson

from claude_proxy.emulator import catalog
from claude_proxy.emulator.messages import Reply
from claude_proxy.emulator.wire import ApiError, check_messages_and_stream, chunk

PATH = b"/v1/chat/completions"
DEFAULT_MAX_TOKENS = 4096
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}
DONE = chunk(b"data: [DONE]\n\n")
_HOISTED = ("system", "developer")


def error_body(error_type: str, message: str) -> bytes:
    """The endpoint's error body: OpenAI's shape, Anthropic's error type as type and code."""
    return orjson.dumps(
        {"error": {"code": error_type, "message": message, "type": error_type, "param": None}}
    )


def error_frame() -> bytes:
    """A mid-stream error (overloaded), as an OpenAI stream carries one: a data event."""
    return chunk(b"data: " + error_body("overloaded_error", "Overloaded") + b"\n\n")


# --- the request -----------------------------------------------------------------------


def _int_field(params: dict[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if type(value) is not int:
        raise ApiError(400, f"{name}: Input should be a valid integer")
    if value < 1:
        raise ApiError(400, f"{name}: Input should be greater than or equal to 1")
    return value


def _text_of(content: Any, where: str) -> str:
    """The text of a system/developer/tool message: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    if content is None:
        return ""
    raise ApiError(400, f"{where}: Input should be a valid string or list")


def _parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    """User or assistant content as Messages content: a string stays a string; parts become
    blocks (text, image_url); audio, files and refusals are dropped, as the API ignores them."""
    if isinstance(content, str):
        return content
    if content is None:
        return []
    if not isinstance(content, list):
        raise ApiError(400, f"{where}: Input should be a valid string or list")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or "type" not in part:
            raise ApiError(400, f"{where}.{j}.type: Field required")
        kind = part["type"]
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            blocks.append({"type": "image", "source": {"type": "url", "url": str(url)}})
    return blocks


def _tool_uses(calls: Any) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for call in calls if isinstance(calls, list) else ():
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict):
            continue
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = {}
        blocks.append(
            {
                "type": "tool_use",
                "id": str(call.get("id", "")),
                "name": str(fn.get("name", "")),
                "input": args if isinstance(args, dict) else {},
            }
        )
    return blocks


def _tools(params: dict[str, Any]) -> list[dict[str, Any]] | None:
    raw = params.get("tools")
    functions = params.get("functions")  # the deprecated form of tools
    if raw is None and functions is None:
        return None
    fns: list[Any] = []
    if isinstance(raw, list):
        fns += [t.get("function") for t in raw if isinstance(t, dict)]
    elif raw is not None:
        raise ApiError(400, "tools: Input should be a valid list")
    if isinstance(functions, list):
        fns += functions
    tools = []
    for fn in fns:
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            tool: dict[str, Any] = {"name": fn["name"]}
            if isinstance(fn.get("description"), str):
                tool["description"] = fn["description"]
            schema = fn.get("parameters")
            tool["input_schema"] = (
                schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
            )
            tools.append(tool)
    return tools


def _tool_choice(params: dict[str, Any]) -> dict[str, Any] | None:
    choice = params.get("tool_choice", params.get("function_call"))
    if choice is None:
        return None
    if choice == "none":
        return {"type": "none"}
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict):
        fn = choice.get("function", choice)  # tool_choice, or the older function_call
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return {"type": "tool", "name": fn["name"]}
    raise ApiError(400, "tool_choice: Input should be 'none', 'auto', 'required' or a function")


def to_messages(params: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
    """Validate a Chat Completions body; return its model, the `/v1/messages` body it stands
    for, and whether the client asked for usage in the stream."""
    model = params.get("model")
    if model is None:
        raise ApiError(400, "model: Field required")
    if not isinstance(model, str):
        raise ApiError(400, "model: Input should be a valid string")
    messages = check_messages_and_stream(params)
    n = params.get("n")
    if n is not None and n != 1:
        raise ApiError(400, "n: Must be exactly 1")
    limit = _int_field(params, "max_completion_tokens") or _int_field(params, "max_tokens")
    options = params.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    if not model.startswith("claude-"):
        raise ApiError(404, f"model: {model}")

    system: list[str] = []
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, f"messages.{i}: Input should be a valid dictionary")
        role = message.get("role")
        where = f"messages.{i}.content"
        if role in _HOISTED:
            system.append(_text_of(message.get("content"), where))
        elif role in ("user", "assistant"):
            content = _parts(message.get("content"), where)
            if role == "assistant" and message.get("tool_calls"):
                blocks = (
                    [{"type": "text", "text": content}] if isinstance(content, str) else content
                )
                content = [b for b in blocks if b.get("text") != ""] + _tool_uses(
                    message["tool_calls"]
                )
            out.append({"role": role, "content": content})
        elif role in ("tool", "function"):
            result = {
                "type": "tool_result",
                "tool_use_id": str(message.get("tool_call_id") or message.get("name") or ""),
                "content": _text_of(message.get("content"), where),
            }
            out.append({"role": "user", "content": [result]})
        elif role is None:
            raise ApiError(400, f"messages.{i}.role: Field required")
        else:
            raise ApiError(
                400,
                f"messages.{i}.role: Input should be 'system', 'developer', 'user', "
                "'assistant', 'tool' or 'function'",
            )
    if not out:
        raise ApiError(400, "messages: at least one non-system message is required")

    known = catalog.lookup(model)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": limit or (known.max_tokens if known is not None else DEFAULT_MAX_TOKENS),
        "messages": out,
    }
    if system:
        body["system"] = "\n".join(system)
    tools = _tools(params)
    if tools is not None:
        body["tools"] = tools
    choice = _tool_choice(params)
    if choice is not None:
        body["tool_choice"] = choice
    if isinstance(params.get("thinking"), dict):  # extra_body, as the API documents
        body["thinking"] = params["thinking"]
    return model, body, include_usage


# --- the reply -------------------------------------------------------------------------


def _usage(r: Reply) -> dict[str, int]:
    prompt = r.usage.total  # no prompt caching here: all of it is plain input
    return {
        "prompt_tokens": prompt,
        "completion_tokens": r.output_tokens,
        "total_tokens": prompt + r.output_tokens,
    }


def _tool_calls(r: Reply) -> list[dict[str, Any]]:
    t = r.tool
    if t is None:
        return []
    return [{"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.json}}]


def completion(r: Reply, created: int) -> bytes:
    """The non-streaming `chat.completion` object."""
    message: dict[str, Any] = {"role": "assistant", "content": r.text() if r.text_len else None}
    calls = _tool_calls(r)
    if calls:
        message["tool_calls"] = calls
    return orjson.dumps(
        {
            "id": r.id,
            "object": "chat.completion",
            "created": created,
            "model": r.model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": FINISH_REASONS[r.stop_reason]}
            ],
            "usage": _usage(r),
        }
    )


def chunks(r: Reply, created: int, include_usage: bool) -> tuple[int, Iterator[bytes]]:
    """How many SSE events the stream has, and the events, each one HTTP chunk, made lazily."""
    head = b'{"id":"%b","object":"chat.completion.chunk","created":%d,"model":%b,"choices":[' % (
        r.id.encode(),
        created,
        orjson.dumps(r.model),
    )
    tail = b'],"usage":null}' if include_usage else b"]}"

    def frame(choice: bytes) -> bytes:
        return chunk(b"data: " + head + choice + tail + b"\n\n")

    def delta(d: dict[str, Any]) -> bytes:
        return frame(b'{"index":0,"delta":%b,"finish_reason":null}' % orjson.dumps(d))

    first = [delta({"role": "assistant", "content": ""})]
    text: Iterator[bytes] = iter(())
    n_text = 0
    if r.text_len:
        n_text = -(-r.text_len // r.text_bytes)
        text = (delta({"content": t}) for t in r.deltas())
    calls: list[bytes] = []
    if r.tool is not None:
        t = r.tool
        opening = {"index": 0, "id": t.id, "type": "function"}
        calls.append(
            delta({"tool_calls": [opening | {"function": {"name": t.name, "arguments": ""}}]})
        )
        half = max(1, len(t.json) // 2)
        for part in (p for p in (t.json[:half], t.json[half:]) if p):
            calls.append(delta({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}))
    reason = FINISH_REASONS[r.stop_reason].encode()
    last = [frame(b'{"index":0,"delta":{},"finish_reason":"%b"}' % reason)]
    if include_usage:
        usage = b'{"id":"%b","object":"chat.completion.chunk","created":%d,"model":%b,' % (
            r.id.encode(),
            created,
            orjson.dumps(r.model),
        )
        last.append(
            chunk(b"data: " + usage + b'"choices":[],"usage":%b}\n\n' % orjson.dumps(_usage(r)))
        )
    last.append(DONE)
    count = len(first) + n_text + len(calls) + len(last)
    return count, itertools.chain(first, text, calls, last)
