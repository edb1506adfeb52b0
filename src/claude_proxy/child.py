"""Entry points of the proxy's child processes.

- `python -m claude_proxy.child writer FD`: the log writer, one per worker
  (store/writer_process.py runs it; here it gets its costing, access line and metrics).
- `python -m claude_proxy.child migrate`: the schema migration (store/migrate.py).

They live at the root, with the other entry points, so that `store/` stays a leaf: the
store runs the process, this module says what it costs, logs and counts.
"""

from __future__ import annotations

import sys
from decimal import Decimal
from typing import Any

from claude_proxy.formats.anthropic.pricing import PriceTable
from claude_proxy.store import writer_process
from claude_proxy.store.records import RequestRecord
from claude_proxy.store.writer import DurableFn, LogWriter
from claude_proxy.store.writer_db import WriterDatabase
from claude_proxy.store.writer_process import Report, WriterConfig
from claude_proxy.telemetry.access_log import log_access
from claude_proxy.telemetry.logs import setup_logging
from claude_proxy.telemetry.tally import RecordTally

WRITER_PROCESS = (sys.executable, "-m", "claude_proxy.child", "writer")
MIGRATE_PROCESS = (sys.executable, "-m", "claude_proxy.child", "migrate")


def build_writer(
    cfg: WriterConfig,
    prices: PriceTable,
    on_durable: DurableFn | None,
    tally: RecordTally | None = None,
) -> LogWriter:
    """The LogWriter of a writer process (or, with `on_durable` None, the worker's own
    fallback, which only spills)."""

    def cost(record: RequestRecord) -> Decimal | None:
        if record.cost_usd is not None:  # decided by the proxy (a message batch's ledger)
            return Decimal(record.cost_usd)
        return prices.cost(record.model, record.usage, batch=False)

    def on_record(record: RequestRecord, cost_usd: Decimal | None) -> None:
        log_access(record, cost_usd)
        if tally is not None:
            tally.observe(record, cost_usd)

    return LogWriter(
        WriterDatabase(cfg.database),
        cfg.spill_dir,
        cost_fn=cost,
        on_record=on_record,
        on_durable=on_durable,
        # The proxy bounds what is in flight (log_queue_size); here the queue must never
        # spill on its own, or acknowledgements would run ahead of older records.
        queue_size=None,
        batch_size=cfg.batch_size,
        flush_interval=cfg.flush_interval,
        statement_timeout=cfg.statement_timeout,
    )


def _writer_parts(cfg: WriterConfig, ack: DurableFn) -> tuple[LogWriter, Report]:
    prices = PriceTable.load(cfg.prices_file)
    tally = RecordTally(known_model=prices.__contains__)

    def with_metrics(stats: dict[str, Any]) -> dict[str, Any]:
        return stats | {"metrics": tally.take(stats)}

    return build_writer(cfg, prices, ack, tally), with_metrics


def main(argv: list[str]) -> int:
    setup_logging()
    if argv[:1] == ["writer"] and len(argv) == 2:
        writer_process.run(int(argv[1]), _writer_parts)
        return 0
    if argv == ["migrate"]:
        # Only here: the writer process must not load SQLAlchemy (store/writer_db.py).
        from claude_proxy.store import migrate

        return migrate.main()
    print("usage: python -m claude_proxy.child writer FD | migrate", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
