"""What the benchmark talks to: the emulator, the proxy, nginx, and the machine they run on.

Everything listens on 127.0.0.1 with a port picked by the kernel. The proxy and nginx are pinned
to core 0; the emulator, wrk and the stream client share core 1, so direct and proxied runs give
the emulator and the load generator the same CPU and the proxy a core of its own.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import procs

UPSTREAM_KEY = "sk-ant-bench-upstream"
CLIENT_KEY = "sk-proxy-bench-client"
PROXY_CORES = [0]
SIDE_CORES = [1]  # emulator, wrk, stream client
EMU_READY = re.compile(r"listening on (http://\S+)")
PROXY_READY = re.compile(r"ready on (http://[^\s\"]+)")


class Target(NamedTuple):
    """Something to send load to; `pid` is the server process to measure (None: the emulator)."""

    label: str
    url: str
    key: str
    pid: int | None


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _first_line(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {
            pkg: _version(pkg)
            for pkg in ("claude-proxy", "uvicorn", "httptools", "uvloop", "orjson")
        },
        # The proxy under test: the commit, and whether the work tree differed from it.
        "git_commit": _first_line(["git", "-C", str(procs.REPO), "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(_first_line(["git", "-C", str(procs.REPO), "status", "--porcelain"])),
        "wrk": _first_line(["wrk", "-v"]),
        "nginx": _first_line(["nginx", "-v"]) if shutil.which("nginx") else None,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_emulator(wd: Path) -> procs.Proc:
    argv = [procs.PYTHON, "-m", "claude_proxy", "emulator", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--api-key", UPSTREAM_KEY]
    env = {"CLAUDE_PROXY_LOG_LEVEL": "WARNING"}
    return procs.start("emulator", argv, env=env, cores=SIDE_CORES, ready=EMU_READY, workdir=wd)


def start_proxy(
    wd: Path,
    name: str,
    upstream: str,
    level: str,
    workers: int,
    request_log: bool = True,
    database_url: str | None = None,
    source: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> procs.Proc:
    """A proxy worker on the proxy core; `source`: run the package from that src/ instead
    (another checkout, for a same-run comparison with `bench/run.py --baseline`)."""
    argv = [procs.PYTHON, "-m", "claude_proxy", "serve", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--workers", str(workers)]
    env = {
        "ANTHROPIC_API_KEY": UPSTREAM_KEY,
        "ANTHROPIC_BASE_URL": upstream,
        "CLAUDE_PROXY_API_KEYS": CLIENT_KEY,
        "CLAUDE_PROXY_LOG_LEVEL": level,
        # The request log stays on (as in production), in a throw-away SQLite file.
        "DATABASE_URL": database_url or f"sqlite:///{wd / (name + '.db')}",
        "CLAUDE_PROXY_SPILL_DIR": str(wd / f"{name}-spill"),
        "CLAUDE_PROXY_LOG_REQUESTS": "true" if request_log else "false",
        "CLAUDE_PROXY_PRE_STOP_SECONDS": "0",  # no load balancer to wait for at stop
    }
    if source is not None:
        env["PYTHONPATH"] = str(source)  # ahead of the installed (editable) package
    env.update(extra_env or {})
    proc = procs.start(name, argv, env=env, cores=PROXY_CORES, ready=PROXY_READY, workdir=wd)
    # The request log's writer process inherited core 0. On a 2-vCPU task the kernel runs
    # it beside the worker, so here it shares the side core with the emulator and wrk (its
    # CPU still counts in the proxy's CPU per request: /proc is read for the whole tree).
    for pid in procs.tree(proc.pid):
        if pid != proc.pid:
            procs.pin_pid(pid, SIDE_CORES)
    return proc


_NGINX_CONF = """
worker_processes 1;
daemon off;
pid %(wd)s/nginx.pid;
error_log %(wd)s/nginx-error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path %(wd)s/nginx-body;
  proxy_temp_path %(wd)s/nginx-proxy;
  fastcgi_temp_path %(wd)s/nginx-fastcgi;
  uwsgi_temp_path %(wd)s/nginx-uwsgi;
  scgi_temp_path %(wd)s/nginx-scgi;
  upstream emulator { server %(upstream)s; keepalive 1024; }
  server {
    listen 127.0.0.1:%(port)d backlog=4096;
    location / {
      proxy_pass http://emulator;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
    }
  }
}
"""


def start_nginx(wd: Path, upstream: str) -> procs.Proc | None:
    """nginx proxy_pass as the reference limit; None (with a printed line) if not installed."""
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None:
        print("nginx is not installed: skipping the nginx reference row", flush=True)
        return None
    port = _free_port()
    conf = wd / "nginx.conf"
    hostport = upstream.removeprefix("http://")
    conf.write_text(_NGINX_CONF % {"wd": wd, "upstream": hostport, "port": port})
    proc = procs.start(
        "nginx", [binary, "-p", str(wd), "-c", str(conf)], cores=PROXY_CORES, workdir=wd
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            proc.url = f"http://127.0.0.1:{port}"
            return proc
        if proc.popen.poll() is not None:
            break
        time.sleep(0.05)
    print(f"nginx did not start, skipping it:\n{proc.log_tail()}", flush=True)
    proc.stop()
    return None
