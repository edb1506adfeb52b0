"""How `claude-proxy serve` starts: demo mode, refusing to run open, several workers."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import anthropic
import httpx2
import pytest

from claude_proxy.store.migrate import upgrade
from tests.conftest import PROXY_KEY, UPSTREAM_KEY, Emulator, spawn, start_proxy
from tests.helpers import database, make_key

pytestmark = pytest.mark.e2e


def test_refuses_to_start_without_client_keys(emulator: Emulator) -> None:
    p = spawn(
        ["serve", "--port", "0"],
        {"ANTHROPIC_API_KEY": UPSTREAM_KEY, "ANTHROPIC_BASE_URL": emulator.url},
    )
    assert p.proc.wait(20) == 2
    assert "no client keys are configured" in p.output()


def test_starts_on_database_keys_alone_and_never_with_the_admin_key_as_a_client_key(
    emulator: Emulator, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    upstream = {"ANTHROPIC_API_KEY": UPSTREAM_KEY, "ANTHROPIC_BASE_URL": emulator.url}
    p = spawn(["serve", "--port", "0"], {**upstream, "DATABASE_URL": url})
    assert p.proc.wait(20) == 2  # an empty key table is no better than no keys
    with database(url) as engine:
        upgrade(engine)
        _, secret = make_key(engine, "only-key")
    px = start_proxy(emulator.url, {"CLAUDE_PROXY_API_KEYS": "", "DATABASE_URL": url}, tmp_path)
    try:
        client = anthropic.Anthropic(base_url=px.url, api_key=secret)
        reply = client.messages.create(
            model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.content
    finally:
        px.process.stop()
    same = spawn(
        ["serve", "--port", "0"],
        {**upstream, "CLAUDE_PROXY_API_KEYS": PROXY_KEY, "CLAUDE_PROXY_ADMIN_KEY": PROXY_KEY},
    )
    assert same.proc.wait(20) == 2
    assert "must not also be a client key" in same.output()


def test_refuses_base_url_without_upstream_key(emulator: Emulator) -> None:
    p = spawn(
        ["serve", "--port", "0"],
        {"ANTHROPIC_BASE_URL": emulator.url, "CLAUDE_PROXY_API_KEYS": PROXY_KEY},
    )
    assert p.proc.wait(20) == 2
    assert "ANTHROPIC_API_KEY" in p.output()


def test_bad_database_url_is_a_clear_error() -> None:
    p = spawn(["serve", "--port", "0"], {"DATABASE_URL": "mysql://x", "CLAUDE_PROXY_API_KEYS": "k"})
    assert p.proc.wait(20) == 2
    assert "DATABASE_URL must be sqlite:///path or postgresql://" in p.output()


def test_database_urls_are_accepted_as_written() -> None:
    from claude_proxy.settings import Settings

    for url in (
        "sqlite:///tmp/x.db",
        "postgresql://u:p@aws-0-eu.pooler.supabase.com:6543/postgres",
    ):
        assert Settings(DATABASE_URL=url).database_url == url  # type: ignore[call-arg]


def test_demo_mode_prints_a_working_key_and_snippets(tmp_path: object) -> None:
    p = spawn(["serve", "--host", "127.0.0.1", "--port", "0"])
    try:
        m = p.wait_for(r"claude-proxy ready on (http://[^\s\"]+)")
        url = m.group(1)
        out = p.output()
        key = re.search(r"demo key: (\S+)", out)
        assert key, out
        # The printed curl line works as printed.
        curl = out[out.index("curl ") : out.index("python -c")].strip()
        run = subprocess.run(
            ["bash", "-c", curl + " -s"], capture_output=True, text=True, timeout=20
        )
        assert '"type":"message"' in run.stdout.replace(" ", ""), run.stdout
        # So does the SDK snippet.
        snippet = out[out.index("python -c") :].splitlines()[0]
        snippet = snippet.replace("python -c", f"{sys.executable} -c", 1)
        run = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, timeout=20)
        assert run.returncode == 0 and run.stdout.strip(), run.stderr
        with anthropic.Anthropic(base_url=url, api_key="wrong", max_retries=0) as c:
            with pytest.raises(anthropic.AuthenticationError):
                c.models.list()
    finally:
        p.stop()


def test_several_workers_serve(emulator: Emulator) -> None:
    p = spawn(
        ["serve", "--host", "127.0.0.1", "--port", "0", "--workers", "2"],
        {
            "ANTHROPIC_API_KEY": UPSTREAM_KEY,
            "ANTHROPIC_BASE_URL": emulator.url,
            "CLAUDE_PROXY_API_KEYS": PROXY_KEY,
        },
    )
    try:
        url = p.wait_for(r"claude-proxy ready on (http://[^\s\"]+)").group(1)
        p.wait_for(r"claude-proxy ready on", count=2)  # both workers announce themselves
        with anthropic.Anthropic(base_url=url, api_key=PROXY_KEY, max_retries=0) as c:
            for _ in range(4):
                assert c.messages.count_tokens(
                    model="claude-sonnet-4-6", messages=[{"role": "user", "content": "hi"}]
                ).input_tokens
    finally:
        p.stop()


def test_python_dash_m_and_console_script_both_work() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "claude_proxy", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.startswith("claude-proxy ")
    exe = sys.executable.rsplit("/", 1)[0] + "/claude-proxy"
    run = subprocess.run([exe, "serve", "--help"], capture_output=True, text=True, check=True)
    assert "--workers" in run.stdout


def test_health_answers_while_the_upstream_hangs(emulator: Emulator) -> None:
    """/health never waits on the upstream: 100 streams stalled upstream don't slow it down."""
    px = start_proxy(emulator.url)
    headers = {
        "x-api-key": PROXY_KEY,
        "anthropic-version": "2023-06-01",
        "x-emulator-fault": "midstream=stall after=2",
    }
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 8,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    try:
        with contextlib.ExitStack() as stack:
            http = stack.enter_context(
                httpx2.Client(
                    base_url=px.url, timeout=30, limits=httpx2.Limits(max_connections=200)
                )
            )
            for _ in range(100):  # each stays open: the upstream sent 2 events, then nothing
                r = stack.enter_context(
                    http.stream("POST", "/v1/messages", headers=headers, json=body)
                )
                assert b"message_start" in next(r.iter_bytes())
            with httpx2.Client(base_url=px.url, timeout=2) as probe:
                for _ in range(200):
                    h = probe.get("/health")
                    assert h.status_code == 200 and h.json() == {"status": "ok"}
    finally:
        px.process.stop()
