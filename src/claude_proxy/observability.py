"""Logging setup, shared by the proxy process and its writer process."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging() -> None:
    level = os.environ.get("CLAUDE_PROXY_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # Alembic narrates every step at INFO; our own line says what was migrated.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))
