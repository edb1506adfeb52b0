"""`claude-proxy serve | emulator`: the command line."""

from __future__ import annotations

import argparse
import functools
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import SecretStr, ValidationError

from claude_proxy import __version__
from claude_proxy.telemetry.logs import setup_logging

if TYPE_CHECKING:
    from claude_proxy.settings import Settings

DEMO_UPSTREAM_KEY = "sk-ant-demo-emulator-upstream"


def _fail(message: str) -> None:
    print(f"claude-proxy: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _config_errors(exc: ValidationError) -> str:
    """What is wrong with the settings, one line each, never the values given: pydantic's
    own text quotes the input, and the input holds the secrets."""
    from pydantic import AliasChoices

    from claude_proxy.settings import Settings

    lines = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in err["loc"])
        field = Settings.model_fields.get(where.lower())
        alias = field.validation_alias if field is not None else None
        if isinstance(alias, AliasChoices):
            name = str(alias.choices[0])
        else:
            name = f"CLAUDE_PROXY_{where.upper()}" if where else "settings"
        lines.append(f"  {name}: {err['msg']}")
    return "\n".join(lines)


def _bind(host: str, port: int) -> socket.socket:
    """Bind and listen before workers start, so the real port is known even for --port 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror}")
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _start_demo(settings: Settings) -> tuple[Settings, Callable[[], None]]:
    """No upstream key: run the built-in emulator as upstream, with a printed demo key."""
    from claude_proxy.emulator import start_in_thread

    url, stop = start_in_thread("127.0.0.1", 0)
    demo: dict[str, object] = {
        "anthropic_base_url": url,
        "anthropic_api_key": SecretStr(DEMO_UPSTREAM_KEY),
        "demo": True,
    }
    if not settings.client_keys():
        demo["api_keys"] = SecretStr("sk-proxy-demo-" + secrets.token_urlsafe(18))
    return settings.model_copy(update=demo), stop


def _demo_banner(url: str, key: str) -> str:
    return f"""
  claude-proxy demo mode: no ANTHROPIC_API_KEY is set, so the upstream is the
  built-in emulator (fake answers, no cost). Set ANTHROPIC_API_KEY for the real API.

  demo key: {key}

  curl {url}/v1/messages \\
    -H "x-api-key: {key}" -H "anthropic-version: 2023-06-01" \\
    -H "content-type: application/json" \\
    -d '{{"model":"claude-sonnet-4-6","max_tokens":256,"messages":[{{"role":"user","content":"Hello"}}]}}'

  python -c 'import anthropic; c = anthropic.Anthropic(base_url="{url}", api_key="{key}"); print(c.messages.create(model="claude-sonnet-4-6", max_tokens=256, messages=[{{"role": "user", "content": "Hello"}}]).content[0].text)'
"""


def _database_has_keys(database_url: str) -> bool:
    """True if `api_keys` holds a key that can still be used (so the proxy is not open)."""
    from sqlalchemy import inspect

    from claude_proxy.store.engine import make_engine
    from claude_proxy.store.keys import list_keys

    engine = make_engine(database_url)
    try:
        if not inspect(engine).has_table("api_keys"):
            return False
        return any(row.status == "active" for row in list_keys(engine, include_revoked=False))
    except Exception:
        return False
    finally:
        engine.dispose()


def cmd_serve(args: argparse.Namespace) -> None:
    from claude_proxy.settings import Settings

    setup_logging()
    stop_demo: Callable[[], None] | None = None
    has_key = bool(os.environ.get("ANTHROPIC_API_KEY"))
    has_base = bool(os.environ.get("ANTHROPIC_BASE_URL"))
    if not has_key and has_base:
        _fail(
            "ANTHROPIC_BASE_URL is set but ANTHROPIC_API_KEY is not; set both, or neither for demo mode."
        )
    try:
        settings = Settings()
    except ValidationError as exc:
        _fail(f"invalid configuration:\n{_config_errors(exc)}")
        raise  # unreachable; keeps type checkers sure `settings` is bound
    if not has_key:
        settings, stop_demo = _start_demo(settings)
    keys = settings.client_keys()
    admin = settings.admin_token()
    if admin and admin in keys:
        _fail("CLAUDE_PROXY_ADMIN_KEY must not also be a client key in CLAUDE_PROXY_API_KEYS.")
    if admin and len(admin) < 16:
        _fail("CLAUDE_PROXY_ADMIN_KEY is too short to be a secret: use at least 16 characters.")
    if not keys and not admin and not _database_has_keys(settings.database_url):
        _fail(
            "refusing to start: no client keys are configured, and the proxy is never open by "
            "default. Create one with `claude-proxy keys create --name NAME`, set "
            "CLAUDE_PROXY_API_KEYS=key1,key2, set CLAUDE_PROXY_ADMIN_KEY to manage keys over "
            "the admin API, or unset ANTHROPIC_API_KEY for demo mode."
        )

    from claude_proxy.telemetry.logs import prepare_metrics_directory

    # Before anything imports prometheus_client, in this process or the workers.
    metrics_dir = prepare_metrics_directory(settings.metrics_dir)
    sock = _bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{port}"
    settings = settings.model_copy(update={"listen_url": url})
    if settings.demo:
        print(_demo_banner(url, keys[0]), flush=True)

    from claude_proxy.http.runner import serve
    from claude_proxy.wiring import run_worker

    try:
        # The settings travel to each worker as an object (pickled into the spawned process).
        code = serve(sock, args.workers, functools.partial(run_worker, settings))
    finally:
        if stop_demo is not None:
            stop_demo()
        if not settings.metrics_dir:  # our own temporary directory: leave nothing behind
            shutil.rmtree(metrics_dir, ignore_errors=True)
    if code:
        raise SystemExit(code)


def cmd_emulator(args: argparse.Namespace) -> None:
    from claude_proxy.emulator import run, tls_context

    setup_logging()
    if bool(args.tls_cert) != bool(args.tls_key):
        _fail("--tls-cert and --tls-key go together")
    tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    run(args.host, args.port, api_key=args.api_key, tls=tls)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="claude-proxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"claude-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--host", default=os.environ.get("CLAUDE_PROXY_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("CLAUDE_PROXY_PORT", "8000")))
    serve.add_argument(
        "--workers", type=int, default=int(os.environ.get("CLAUDE_PROXY_WORKERS", "1"))
    )
    serve.set_defaults(func=cmd_serve)

    emu = sub.add_parser("emulator", help="run the Anthropic API emulator")
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--port", type=int, default=8100)
    emu.add_argument("--api-key", default=None, help="accept only this key (default: any key)")
    emu.add_argument("--tls-cert", default=None, help="serve HTTPS with this PEM certificate")
    emu.add_argument("--tls-key", default=None, help="... and this PEM private key")
    emu.set_defaults(func=cmd_emulator)

    from claude_proxy.cli import keys, logs, people, signin

    logs.add_commands(sub)
    keys.add_commands(sub)
    people.add_commands(sub)
    signin.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)
