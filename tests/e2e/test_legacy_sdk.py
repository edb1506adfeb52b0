"""An old 0.x SDK (x-api-key, anthropic-version 2023-06-01) in its own venv, through the proxy."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import PROXY_KEY, UPSTREAM_KEY, Emulator, Proxy

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
LEGACY_PYTHON = Path(os.environ.get("CLAUDE_PROXY_LEGACY_PYTHON", ROOT / ".venv-sdk0/bin/python"))

SCRIPT = """
import json, sys, anthropic
c = anthropic.Anthropic(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0,
                        default_headers={"x-marker": sys.argv[3]})
out = {"version": anthropic.__version__}
m = c.messages.create(model="claude-sonnet-4-6", max_tokens=32,
                      messages=[{"role": "user", "content": "hi"}])
out["create"] = [m.stop_reason, m.usage.input_tokens, m.content[0].text]
with c.messages.stream(model="claude-sonnet-4-6", max_tokens=32,
                       messages=[{"role": "user", "content": "hi"}]) as s:
    f = s.get_final_message()
out["stream"] = [f.stop_reason, f.usage.output_tokens, "".join(b.text for b in f.content)]
out["models"] = [x.id for x in c.models.list(limit=2).data]
# Batch results: the SDK fetches the batch's results_url with this client's key, so that URL
# must be the proxy's own (the API's host would refuse the proxy key).
b = c.messages.batches.create(requests=[
    {"custom_id": f"r{i}", "params": {"model": "claude-sonnet-4-6", "max_tokens": 16,
                                      "messages": [{"role": "user", "content": "hi"}]}}
    for i in range(2)])
out["results"] = sorted((r.custom_id, r.result.type) for r in c.messages.batches.results(b.id))
try:
    anthropic.Anthropic(base_url=sys.argv[1], api_key="wrong", max_retries=0).messages.create(
        model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
except anthropic.AuthenticationError as e:
    out["bad_key"] = e.status_code
print(json.dumps(out))
"""


def test_legacy_sdk_through_proxy(proxy: Proxy, emulator: Emulator) -> None:
    assert LEGACY_PYTHON.exists(), (
        f"{LEGACY_PYTHON} is missing: `make test` creates it (pip install anthropic==0.x)"
    )
    marker = f"legacy-{time.time_ns()}"
    run = subprocess.run(
        [str(LEGACY_PYTHON), "-c", SCRIPT, proxy.url, PROXY_KEY, marker],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["version"].startswith("0.")
    assert out["create"][0] == "end_turn" and out["create"][1] > 0 and out["create"][2]
    assert out["stream"][0] == "end_turn" and out["stream"][1] > 0 and out["stream"][2]
    assert len(out["models"]) == 2
    assert out["results"] == [["r0", "succeeded"], ["r1", "succeeded"]]
    assert out["bad_key"] == 401

    seen = [r for r in emulator.requests() if ["x-marker", marker] in r["headers"]]
    # create, stream, models, then the batch: create, retrieve, results (through the proxy);
    # the bad key never reached upstream
    assert len(seen) == 6
    for r in seen:
        headers = {k.lower(): v for k, v in r["headers"]}
        assert headers["anthropic-version"] == "2023-06-01"
        assert headers["x-api-key"] == UPSTREAM_KEY
        assert "authorization" not in headers
        assert PROXY_KEY not in json.dumps(r)
