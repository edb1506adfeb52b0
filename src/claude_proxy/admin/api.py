"""Placeholder: being written."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from claude_proxy.auth import KeyCache


def build_admin_app(engine: Engine, keys: KeyCache, admin_token: str) -> Any:
    raise NotImplementedError
