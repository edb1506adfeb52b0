"""How the long-running servers (the proxy's worker, the emulator) set up the cyclic collector.

Everything loaded at startup lives as long as the process: frozen out of the collector's
view, each full collection walks only what requests allocate. And requests leave no
reference cycles (http/protocol.py, upstream/pool.py), so a young collection finds nothing
to free: at the default threshold (700 more objects alive than at the last one) it ran
every few requests at c=50, 5.5 % of the worker's CPU, and promoted in-flight requests to
the older generations, whose collections stall every open stream (docs/benchmarks.md,
"Measured and rejected"). With this threshold it runs when the live heap grows by that
much (many new streams), not every few requests.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def settle_startup_heap() -> None:
    """Call once startup is done: freeze what it loaded, raise the young threshold."""
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
