"""Logging for every process of the proxy (workers, writer processes, the supervisor).

`CLAUDE_PROXY_LOG_FORMAT=json` (the default): one JSON object per line on stdout,
`{"time", "level", "logger", "message", ...fields}`, which CloudWatch Logs Insights
reads field by field. `console`: `time LEVEL logger message key=value ...` for people.
A log call adds fields with `extra={"fields": {...}}` (the access line does). The
messages keep the runbook's words: "Streaming error" for every stream that ended
abnormally, "Timeout (connect|first byte|idle|total)" for every timeout.

Read from the environment, not Settings: the writer process logs without loading them.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

# prometheus_client reads this when it is imported, so `serve` sets it before any import.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
FIELDS = "fields"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if fields:
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, FIELDS, None)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return line


def setup_logging() -> None:
    level = os.environ.get("CLAUDE_PROXY_LOG_LEVEL", "INFO").upper()
    fmt = os.environ.get("CLAUDE_PROXY_LOG_FORMAT", "json").lower()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ConsoleFormatter() if fmt == "console" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic narrates every step at INFO; our own line says what was migrated.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    # httpx logs every request's URL at INFO: an alert webhook's URL carries its secret,
    # and the identity provider's calls are sign-in's own to report.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def prepare_metrics_directory(path: str | None) -> str:
    """Point this process and its children at an empty Prometheus samples directory
    (a restart must not bring back the counts of processes that are gone)."""
    if path:
        directory = Path(path)
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
    else:
        directory = Path(tempfile.mkdtemp(prefix="claude-proxy-metrics-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    return str(directory)


def _iso(created: float) -> str:
    ms = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"
