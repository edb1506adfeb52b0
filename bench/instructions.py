"""Instructions per request in the proxy worker, under callgrind: this build against another.

CPU time per request moves by ±15 % between runs of the same code on a shared machine;
the count of instructions the worker executes does not. Each build's worker runs under
`valgrind --tool=callgrind` with collection off; after a warm-up, collection is switched on
for a wrk run at concurrency 50 and the total is divided by the requests completed. The
writer process is not traced (it is a child valgrind does not follow). Needs valgrind and
wrk (`apt-get install -y valgrind wrk`).

    git worktree add /tmp/main main
    .venv/bin/python bench/instructions.py --baseline /tmp/main/src
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import load
import procs
from targets import CLIENT_KEY, PROXY_READY, SIDE_CORES, UPSTREAM_KEY, start_emulator


def instructions_per_request(
    wd: Path, name: str, upstream: str, source: Path | None, seconds: float
) -> tuple[int, int]:
    """(instructions per request, requests) for one build's worker."""
    out = wd / f"{name}.callgrind"
    env = {
        "ANTHROPIC_API_KEY": UPSTREAM_KEY,
        "ANTHROPIC_BASE_URL": upstream,
        "CLAUDE_PROXY_API_KEYS": CLIENT_KEY,
        "CLAUDE_PROXY_LOG_LEVEL": "WARNING",
        "DATABASE_URL": f"sqlite:///{wd / (name + '.db')}",
        "CLAUDE_PROXY_SPILL_DIR": str(wd / f"{name}-spill"),
        "CLAUDE_PROXY_PRE_STOP_SECONDS": "0",
    }
    if source is not None:
        env["PYTHONPATH"] = str(source)
    argv = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
        procs.PYTHON, "-m", "claude_proxy", "serve", "--host", "127.0.0.1", "--port", "0",
    ]  # fmt: skip
    proxy = procs.start(name, argv, env=env, cores=[0], ready=PROXY_READY, workdir=wd, timeout=300)
    script = load.write_script(wd, name, CLIENT_KEY)
    control = ["callgrind_control"]
    try:
        load.run_wrk(proxy.url, script, concurrency=50, seconds=5, cores=SIDE_CORES)  # warm-up
        subprocess.run([*control, "-i", "on", str(proxy.pid)], check=True, capture_output=True)
        run = load.run_wrk(proxy.url, script, concurrency=50, seconds=seconds, cores=SIDE_CORES)
        subprocess.run([*control, "-i", "off", str(proxy.pid)], check=True, capture_output=True)
        subprocess.run([*control, "-d", str(proxy.pid)], check=True, capture_output=True)
    finally:
        proxy.stop(timeout=30)
    total = 0
    for f in wd.glob(f"{name}.callgrind*"):
        found = re.search(r"^totals: (\d+)", f.read_text(errors="replace"), re.MULTILINE)
        total = max(total, int(found.group(1)) if found else 0)
    return total // max(1, run.requests), run.requests


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--baseline", type=Path, help="the src/ of another checkout to compare with")
    p.add_argument("--seconds", type=float, default=20.0, help="measured wrk seconds per build")
    a = p.parse_args()
    if not shutil.which("valgrind") or not load.have_wrk():
        print("needs valgrind and wrk: apt-get install -y valgrind wrk", file=sys.stderr)
        return 2
    wd = procs.workdir()
    emu = start_emulator(wd)
    try:
        this, n = instructions_per_request(wd, "this", emu.url, None, a.seconds)
        print(f"this build: {this:,} instructions per request ({n:,} requests)")
        if a.baseline is not None:
            base, m = instructions_per_request(wd, "baseline", emu.url, a.baseline, a.seconds)
            print(f"baseline:   {base:,} instructions per request ({m:,} requests)")
            print(f"change:     {(this / base - 1) * 100:+.1f} %")
    finally:
        emu.stop()
    shutil.rmtree(wd, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
