"""The real Claude Code CLI (`claude -p`) through the proxy to the emulator.

Claude Code is pinned in tests/e2e/claude_code/package.json and installed with
`npm ci --prefix tests/e2e/claude_code`. Each run gets an empty HOME and a fresh working
directory, so no user state, settings or CLAUDE.md leak in. With
CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 Claude Code sends no telemetry, error reports,
update checks or `HEAD /api/hello`: a `claude -p` prompt is exactly one
`POST /v1/messages?beta=true`, streamed, which is what these tests expect.

Transparency is judged against a reference: the same invocation is first pointed at a tiny
in-process capture server, and what Claude Code sent there directly is compared with what the
emulator received through the proxy.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from claude_proxy.emulator.messages import DEFAULT_EVENTS, DEFAULT_TEXT_BYTES, text_for
from tests.conftest import PROXY_KEY, UPSTREAM_KEY, Emulator, Proxy

pytestmark = pytest.mark.e2e

CLAUDE_CODE_DIR = Path(__file__).parent / "claude_code"
INSTALL_COMMAND = "npm ci --prefix tests/e2e/claude_code"
PACKAGE = "@anthropic-ai/claude-code"
RUN_TIMEOUT = 60.0
PROMPT = "Say hello"

# Keep Claude Code off the network except for ANTHROPIC_BASE_URL (nothing else is reachable
# here, and a hung DNS lookup must not stall the test).
QUIET_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_BUG_COMMAND": "1",
    # Fail fast and visibly: no client retries (up to 10 by default, with backoff), and a
    # client-side request timeout well inside RUN_TIMEOUT.
    "CLAUDE_CODE_MAX_RETRIES": "0",
    "API_TIMEOUT_MS": "30000",
    # Opt-in gateway hint headers: more x-claude-code-* headers the proxy must pass through.
    "CLAUDE_CODE_GATEWAY_HINT_HEADERS": "1",
}


# --------------------------------------------------------------------------- the CLI


def pinned_version() -> str:
    manifest = json.loads((CLAUDE_CODE_DIR / "package.json").read_text())
    version: str = manifest["dependencies"][PACKAGE]
    return version


def find_claude() -> Path:
    """The native `claude` binary from tests/e2e/claude_code/node_modules, or fail loudly."""
    modules = CLAUDE_CODE_DIR / "node_modules"
    # .bin/claude is the wrapper's bin/claude.exe, which its postinstall replaces with the
    # platform binary. Without the postinstall (--ignore-scripts) it is a tiny stub that exits
    # 1, so fall back to the platform package's binary itself.
    candidates = [modules / ".bin" / "claude"]
    candidates += sorted((modules / "@anthropic-ai").glob("claude-code-*/claude*"))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK) and path.stat().st_size > 1_000_000:
            return path
    pytest.fail(
        f"Claude Code is not installed in {modules} (no native `claude` binary found).\n"
        f"Install it from the repository root with:\n    {INSTALL_COMMAND}",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def claude_bin() -> Path:
    path = find_claude()
    out = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    want = pinned_version()
    if out.returncode != 0 or not out.stdout.startswith(want):
        pytest.fail(
            f"{path} --version gave {out.stdout.strip() or out.stderr.strip()!r}, "
            f"but package.json pins {want}. Reinstall with:\n    {INSTALL_COMMAND}",
            pytrace=False,
        )
    return path


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    result: dict[str, Any]  # the `--output-format json` result object
    proxy: Proxy | None = None

    def __str__(self) -> str:
        """What a failed assertion shows: the outcome, Claude Code's stderr, the proxy's log."""
        r = self.result
        text = (
            f"claude exit {self.returncode}: is_error={r.get('is_error')} "
            f"api_error_status={r.get('api_error_status')} result={r.get('result')!r}"
        )
        if self.stderr.strip():
            text += f"\nclaude stderr:\n{self.stderr[-4000:]}"
        if self.proxy is not None:
            text += f"\nproxy output (tail):\n{self.proxy.output()[-6000:]}"
        return text


def run_claude(
    claude_bin: Path,
    base_url: str | None,
    api_key: str | None,
    workdir: Path,
    session_id: str,
    prompt: str = PROMPT,
    extra_env: dict[str, str] | None = None,
    proxy: Proxy | None = None,
) -> Run:
    home = workdir / "home"
    cwd = workdir / "cwd"
    home.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    # A minimal environment: nothing from the developer's ANTHROPIC_* / CLAUDE_* / HTTP(S)_PROXY.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TERM": "dumb",
        **QUIET_ENV,
        **(extra_env or {}),
    }
    # None: Claude Code finds its endpoint and credential itself (a stored sign-in, its
    # apiKeyHelper, its settings).
    if base_url is not None:
        env["ANTHROPIC_BASE_URL"] = base_url
    if api_key is not None:
        env["ANTHROPIC_API_KEY"] = api_key
    cmd = [
        str(claude_bin),
        "-p",
        prompt,
        "--output-format",
        "json",
        "--max-turns",
        "1",
        "--session-id",
        session_id,
        "--no-session-persistence",
    ]

    def context() -> str:
        return f"\nproxy output:\n{proxy.output()}" if proxy is not None else ""

    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"claude -p did not finish in {RUN_TIMEOUT}s\nstdout: {exc.stdout!r}\n"
            f"stderr: {exc.stderr!r}{context()}",
            pytrace=False,
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        pytest.fail(
            f"claude -p printed no JSON result (exit {proc.returncode})\n"
            f"stdout: {proc.stdout!r}\nstderr: {proc.stderr!r}{context()}",
            pytrace=False,
        )
    return Run(proc.returncode, proc.stdout, proc.stderr, result, proxy)


def headers_of(record: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in record["headers"]}


def session_requests(emulator: Emulator, session_id: str) -> list[dict[str, Any]]:
    return [
        r
        for r in emulator.requests()
        if headers_of(r).get("x-claude-code-session-id") == session_id
    ]


# --------------------------------------------------------------------------- the reference

SSE_REPLY = "".join(
    f"event: {name}\ndata: {json.dumps(data)}\n\n"
    for name, data in [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_reference",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "claude-reference",
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 1, "output_tokens": 1},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "ok"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 1},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
).encode()


@dataclass
class Captured:
    method: str
    target: str  # path and query
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any] | None


class _CaptureHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[Captured]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.seen.append(Captured(self.command, self.path, headers, body))
        if self.command == "POST" and self.path.split("?")[0] == "/v1/messages":
            status, ctype, out = 200, "text/event-stream", SSE_REPLY
        else:
            status, ctype = 404, "application/json"
            out = b'{"type":"error","error":{"type":"not_found_error","message":"not found"}}'
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_HEAD = _handle


@pytest.fixture(scope="session")
def reference(
    claude_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Captured]]:
    """What Claude Code sends with no proxy in between (same flags, same env)."""
    seen: list[Captured] = []
    handler = type("Handler", (_CaptureHandler,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        run = run_claude(
            claude_bin,
            url,
            "sk-ant-reference-key",
            tmp_path_factory.mktemp("ref"),
            str(uuid.uuid4()),
        )
        assert run.returncode == 0 and run.result["result"] == "ok", str(run)
        yield seen
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- the tests


def test_claude_code_prompt_through_proxy(
    claude_bin: Path,
    reference: list[Captured],
    proxy: Proxy,
    emulator: Emulator,
    tmp_path: Path,
) -> None:
    session_id = str(uuid.uuid4())
    run = run_claude(
        claude_bin,
        proxy.url,
        proxy.key,
        tmp_path,
        session_id,
        proxy=proxy,
    )
    res = run.result
    assert run.returncode == 0, str(run)
    assert res["type"] == "result" and res["subtype"] == "success", str(run)
    assert res["is_error"] is False and res["api_error_status"] is None, str(run)
    assert res["session_id"] == session_id
    assert res["num_turns"] == 1 and res["stop_reason"] == "end_turn"
    # The emulator's deterministic reply (its thinking block is not part of the result).
    assert res["result"].strip() == text_for(DEFAULT_EVENTS, DEFAULT_TEXT_BYTES).strip(), res
    usage = res["usage"]
    prompt_tokens = sum(
        usage[k] for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    assert prompt_tokens > 0 and usage["output_tokens"] > 0, usage
    assert isinstance(res["total_cost_usd"], (int, float)) and res["total_cost_usd"] >= 0

    # Claude Code's traffic, directly and through the proxy: the same requests.
    ref = [c for c in reference if c.headers.get("x-claude-code-session-id")]
    assert [(c.method, c.target) for c in ref] == [("POST", "/v1/messages?beta=true")]
    seen = session_requests(emulator, session_id)
    assert [(r["method"], r["path"], r["query"]) for r in seen] == [
        ("POST", "/v1/messages", "beta=true")
    ], seen
    assert seen[0]["status"] == 200 and seen[0]["state"] == "completed", seen

    want = ref[0].headers
    got = headers_of(seen[0])
    # The proxy swaps the credential: upstream key in, client key out.
    assert got.get("x-api-key") == UPSTREAM_KEY
    assert "authorization" not in got
    assert PROXY_KEY not in json.dumps(seen)
    # Everything Anthropic- or Claude-Code-specific arrives verbatim.
    assert got["anthropic-version"] == want["anthropic-version"] == "2023-06-01"
    assert got["anthropic-beta"] == want["anthropic-beta"]
    assert "claude-code-20250219" in got["anthropic-beta"].split(",")
    assert got["x-claude-code-session-id"] == session_id
    forwarded = {k for k in want if k.startswith(("anthropic-", "x-claude-", "x-app"))}
    assert forwarded <= got.keys(), sorted(forwarded - got.keys())
    assert got["x-claude-code-request-class"] == want["x-claude-code-request-class"] == "main"
    assert got["user-agent"] == want["user-agent"]
    assert got["user-agent"].startswith(f"claude-cli/{pinned_version()} ")

    # Neither key shows up in the proxy's own output.
    assert PROXY_KEY not in proxy.output()
    assert UPSTREAM_KEY not in proxy.output()


def test_claude_code_reports_upstream_overload(
    claude_bin: Path, proxy: Proxy, emulator: Emulator, tmp_path: Path
) -> None:
    """A persistent upstream 529 reaches Claude Code as a 529 overloaded_error."""
    session_id = str(uuid.uuid4())
    run = run_claude(
        claude_bin,
        proxy.url,
        proxy.key,
        tmp_path,
        session_id,
        prompt=f"{PROMPT} <<emulator: status=529>>",
        proxy=proxy,
    )
    res = run.result
    assert run.returncode == 1, str(run)
    assert res["is_error"] is True, str(run)
    assert res["api_error_status"] == 529, str(run)
    assert res["api_error_type"] == "overloaded_error", str(run)
    assert "529" in res["result"]
    seen = session_requests(emulator, session_id)
    assert seen and all(r["path"] == "/v1/messages" for r in seen), seen
    assert all(r["status"] == 529 for r in seen), seen
    assert all(headers_of(r).get("x-api-key") == UPSTREAM_KEY for r in seen)
    assert PROXY_KEY not in json.dumps(seen)


def test_claude_code_recovers_from_transient_overload(
    claude_bin: Path, proxy: Proxy, emulator: Emulator, tmp_path: Path
) -> None:
    """One upstream 529, then success: whoever retries (proxy or Claude Code), the prompt works."""
    session_id = str(uuid.uuid4())
    run = run_claude(
        claude_bin,
        proxy.url,
        proxy.key,
        tmp_path,
        session_id,
        prompt=f"{PROMPT} <<emulator: status=529 times=1 key={session_id}>>",
        extra_env={"CLAUDE_CODE_MAX_RETRIES": "1"},
        proxy=proxy,
    )
    res = run.result
    assert run.returncode == 0, str(run)
    assert res["is_error"] is False, str(run)
    assert res["result"].strip() == text_for(DEFAULT_EVENTS, DEFAULT_TEXT_BYTES).strip(), res
    seen = session_requests(emulator, session_id)
    assert [r["status"] for r in seen] == [529, 200], seen
