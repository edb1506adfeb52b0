"""The real API is HTTPS: the relay must speak TLS upstream, verify the certificate, and relay
bodies far larger than one read (the upstream client reads at most 4 KiB at a time)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anthropic
import pytest

from tests.conftest import PROXY_KEY, start_emulator, start_proxy

pytestmark = pytest.mark.e2e

MODEL = "claude-sonnet-4-6"
HELLO = [{"role": "user", "content": "Hello"}]
BIG = {"x-emulator-fault": "events=80 text-bytes=1000"}  # an 80 KB text in 80 events


def self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_relay_over_tls_verifies_the_upstream_and_relays_large_bodies(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    emu = start_emulator(["--tls-cert", str(cert), "--tls-key", str(key)])
    try:
        assert emu.url.startswith("https://")
        trusted = start_proxy(emu.url, {"SSL_CERT_FILE": str(cert)}, tmp_path / "trusted")
        untrusted = start_proxy(emu.url, {}, tmp_path / "untrusted")
        try:
            c = anthropic.Anthropic(base_url=trusted.url, api_key=PROXY_KEY, max_retries=0)
            msg = c.messages.create(
                model=MODEL, max_tokens=20_100, messages=HELLO, extra_headers=BIG
            )
            assert msg.content[0].type == "text" and len(msg.content[0].text) == 80_000
            with c.messages.stream(
                model=MODEL, max_tokens=20_100, messages=HELLO, extra_headers=BIG
            ) as stream:
                text = stream.get_final_text()
            assert len(text) == 80_000

            # Without the certificate trusted, the proxy refuses to talk to that upstream.
            bad = anthropic.Anthropic(base_url=untrusted.url, api_key=PROXY_KEY, max_retries=0)
            with pytest.raises(anthropic.APIStatusError) as err:
                bad.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
            assert err.value.status_code == 502
            assert "certificate" in err.value.message.lower()
        finally:
            trusted.process.stop()
            untrusted.process.stop()
    finally:
        emu.process.stop()
