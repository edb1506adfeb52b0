"""The model catalogue served by `/v1/models`: the ids the Anthropic API lists, newest first.

Release dates are the API's where it publishes them; the rest (and the context sizes) are
plausible placeholders, kept in release order. Lifecycle as the API documents it:
`claude-sonnet-4-5` is deprecated, the models it lists as end-of-life are retired (hidden from
the default listing, still retrievable, as the real API does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


def _support(flag: bool) -> dict[str, bool]:
    return {"supported": flag}


def _capabilities(gen: int) -> dict[str, Any]:
    """gen: the version times ten (30 = Claude 3, 37 = 3.7, 40 = 4.0/4.1, 45 = 4.5, 55 = 5.5)."""
    modern = gen >= 46
    return {
        "batch": _support(True),
        "citations": _support(True),
        "code_execution": _support(gen >= 45),
        "context_management": {
            "clear_thinking_20251015": _support(gen >= 45),
            "clear_tool_uses_20250919": _support(gen >= 40),
            "compact_20260112": _support(modern),
            "supported": gen >= 40,
        },
        "effort": {
            "high": _support(gen >= 45),
            "low": _support(gen >= 45),
            "max": _support(modern),
            "medium": _support(gen >= 45),
            "supported": gen >= 45,
            "xhigh": _support(modern),
        },
        "image_input": _support(True),
        "pdf_input": _support(True),
        "server_tools": {
            "code_execution": _support(gen >= 40),
            "supported": True,
            "web_search": _support(True),
        },
        "structured_outputs": _support(gen >= 45),
        "thinking": {
            "supported": gen >= 37,
            "types": {
                "adaptive": _support(modern),
                "between_tools": _support(modern),
                "disabled": _support(True),
                "enabled": _support(gen >= 37),
            },
        },
    }


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    display_name: str
    created: str  # YYYY-MM-DD
    line: str | None
    gen: int
    max_input_tokens: int
    max_tokens: int
    lifecycle: str = "active"
    deprecated: str | None = None
    retires: str | None = None
    aliases: tuple[str, ...] = ()

    def info(self) -> dict[str, Any]:
        def ts(day: str | None) -> str | None:
            return f"{day}T00:00:00Z" if day else None

        return {
            "type": "model",
            "id": self.id,
            "display_name": self.display_name,
            "created_at": ts(self.created),
            "lifecycle": self.lifecycle,
            "deprecated_at": ts(self.deprecated),
            "retires_at": ts(self.retires),
            "line": self.line,
            "max_input_tokens": self.max_input_tokens,
            "max_tokens": self.max_tokens,
            "capabilities": _capabilities(self.gen),
        }


M = 1_000_000
K = 1000
MODELS: tuple[Model, ...] = (
    Model("claude-fable-5-2", "Claude Fable 5.2", "2026-11-04", "fable", 52, M, 128 * K),
    Model("claude-mythos-5-2", "Claude Mythos 5.2", "2026-10-28", "mythos", 52, M, 128 * K),
    Model("claude-haiku-5-5", "Claude Haiku 5.5", "2026-10-07", "haiku", 55, M, 64 * K),
    Model("claude-sonnet-5-5", "Claude Sonnet 5.5", "2026-09-28", "sonnet", 55, M, 128 * K),
    Model("claude-opus-5-5", "Claude Opus 5.5", "2026-09-22", "opus", 55, M, 128 * K),
    Model("claude-fable-5-1", "Claude Fable 5.1", "2026-09-01", "fable", 51, M, 128 * K),
    Model("claude-mythos-5-1", "Claude Mythos 5.1", "2026-08-31", "mythos", 51, M, 128 * K),
    Model("claude-opus-5", "Claude Opus 5", "2026-07-24", "opus", 50, M, 128 * K),
    Model("claude-sonnet-5", "Claude Sonnet 5", "2026-07-01", "sonnet", 50, M, 128 * K),
    Model("claude-fable-5", "Claude Fable 5", "2026-06-09", "fable", 50, M, 128 * K),
    Model("claude-mythos-5", "Claude Mythos 5", "2026-06-08", "mythos", 50, M, 128 * K),
    Model("claude-opus-4-8", "Claude Opus 4.8", "2026-06-02", "opus", 48, M, 128 * K),
    Model("claude-opus-4-7", "Claude Opus 4.7", "2026-04-16", "opus", 47, M, 128 * K),
    Model(
        "claude-mythos-preview",
        "Claude Mythos Preview",
        "2026-04-07",
        "mythos",
        47,
        M,
        128 * K,
        lifecycle="retired",
        deprecated="2026-05-30",
        retires="2026-06-30",
    ),
    Model("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17", "sonnet", 46, M, 64 * K),
    Model("claude-opus-4-6", "Claude Opus 4.6", "2026-02-05", "opus", 46, M, 128 * K),
    Model(
        "claude-opus-4-5-20251101",
        "Claude Opus 4.5",
        "2025-11-24",
        "opus",
        45,
        200 * K,
        64 * K,
        aliases=("claude-opus-4-5",),
    ),
    Model(
        "claude-haiku-4-5-20251001",
        "Claude Haiku 4.5",
        "2025-10-15",
        "haiku",
        45,
        200 * K,
        64 * K,
        aliases=("claude-haiku-4-5",),
    ),
    Model(
        "claude-sonnet-4-5-20250929",
        "Claude Sonnet 4.5",
        "2025-09-29",
        "sonnet",
        45,
        200 * K,
        64 * K,
        lifecycle="deprecated",
        deprecated="2026-09-30",
        retires="2026-11-30",
        aliases=("claude-sonnet-4-5",),
    ),
    Model(
        "claude-opus-4-1-20250805",
        "Claude Opus 4.1",
        "2025-08-05",
        "opus",
        40,
        200 * K,
        32 * K,
        lifecycle="retired",
        deprecated="2026-02-05",
        retires="2026-08-07",
        aliases=("claude-opus-4-1",),
    ),
    Model(
        "claude-opus-4-20250514",
        "Claude Opus 4",
        "2025-05-22",
        "opus",
        40,
        200 * K,
        32 * K,
        lifecycle="retired",
        deprecated="2025-12-15",
        retires="2026-06-15",
        aliases=("claude-opus-4-0",),
    ),
    Model(
        "claude-sonnet-4-20250514",
        "Claude Sonnet 4",
        "2025-05-22",
        "sonnet",
        40,
        200 * K,
        64 * K,
        lifecycle="retired",
        deprecated="2025-12-15",
        retires="2026-06-15",
        aliases=("claude-sonnet-4-0",),
    ),
    Model(
        "claude-3-7-sonnet-20250219",
        "Claude Sonnet 3.7",
        "2025-02-24",
        "sonnet",
        37,
        200 * K,
        64 * K,
        lifecycle="retired",
        deprecated="2025-10-28",
        retires="2026-02-19",
        aliases=("claude-3-7-sonnet-latest",),
    ),
    Model(
        "claude-3-5-haiku-20241022",
        "Claude Haiku 3.5",
        "2024-10-22",
        "haiku",
        30,
        200 * K,
        8192,
        lifecycle="retired",
        deprecated="2025-12-19",
        retires="2026-02-19",
        aliases=("claude-3-5-haiku-latest",),
    ),
    Model(
        "claude-3-haiku-20240307",
        "Claude Haiku 3",
        "2024-03-07",
        "haiku",
        30,
        200 * K,
        4096,
        lifecycle="deprecated",
        deprecated="2026-02-19",
    ),
)

DEFAULT_LIFECYCLES = frozenset({"active", "deprecated"})

_BY_ID: dict[str, Model] = {}
for _m in MODELS:
    _BY_ID[_m.id] = _m
    for _alias in _m.aliases:
        _BY_ID[_alias] = _m
_INFO: dict[str, dict[str, Any]] = {m.id: m.info() for m in MODELS}
_INFO_JSON: dict[str, bytes] = {k: orjson.dumps(v) for k, v in _INFO.items()}


def lookup(model_id: str) -> Model | None:
    """A model by id or alias."""
    return _BY_ID.get(model_id)


def info(model: Model) -> dict[str, Any]:
    return _INFO[model.id]


def info_json(model: Model) -> bytes:
    return _INFO_JSON[model.id]


def listing(lifecycles: frozenset[str] = DEFAULT_LIFECYCLES) -> list[dict[str, Any]]:
    """ModelInfo objects, newest first, filtered by lifecycle."""
    return [_INFO[m.id] for m in MODELS if m.lifecycle in lifecycles]
