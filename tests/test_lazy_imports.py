"""What a proxy without sign-in does not load: memory is a target (docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = {"jwt", "httpx", "cryptography"}


def test_a_proxy_without_sign_in_loads_no_token_or_http_client_library() -> None:
    """PyJWT with cryptography, and httpx, cost a worker ~14 MB: only sign-in and alert
    webhooks need them, so they are imported when those are on."""
    code = (
        "import sys\n"
        "import claude_proxy.wiring, claude_proxy.app, claude_proxy.cli.main\n"
        f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(HEAVY)!r}))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
