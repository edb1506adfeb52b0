"""Client keys, in process: no key or a wrong one is a 401 that never reaches the upstream,
database keys that were revoked or expired are refused as such, and an address that keeps
guessing is slowed down while good keys from it are still served.
(tests/e2e/test_access_control.py: the same and more across real replicas.)"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import anthropic
import pytest

from claude_proxy.store.keys import revoke_key
from tests.helpers import make_key
from tests.inprocess.harness import (
    CLIENT_KEY,
    HELLO,
    MODEL,
    PACKAGE_LOOP,
    TAG,
    VERSION,
    Stack,
    proxy_error,
)

pytestmark = PACKAGE_LOOP

BODY = {"model": MODEL, "max_tokens": 16, "messages": HELLO}


def address() -> str:
    """A client address of the test's own: the bad-key throttle counts per address."""
    n = uuid.uuid4().int
    return f"10.{n % 256}.{n // 256 % 256}.{n // 65536 % 254 + 1}"


async def test_no_key_is_a_401_and_nothing_goes_upstream(stack: Stack) -> None:
    tag = uuid.uuid4().hex
    r = await stack.http(address()).post("/v1/messages", json=BODY, headers={**VERSION, TAG: tag})
    assert r.status_code == 401
    doc = proxy_error(r.content, r.headers)
    assert doc["error"] == {
        "type": "authentication_error",
        "message": "x-api-key header is required",
    }
    assert await stack.upstream(tag) == []
    row = await stack.row(doc["request_id"])
    assert (row["status_code"], row["refusal"], row["key_id"]) == (401, "missing_key", None)


async def test_a_wrong_key_is_a_401_in_either_header_and_is_never_echoed(stack: Stack) -> None:
    wrong = "sk-proxy-wrong-" + uuid.uuid4().hex
    tag = uuid.uuid4().hex
    http = stack.http(address())
    for header in ({"x-api-key": wrong}, {"authorization": f"Bearer {wrong}"}):
        r = await http.post("/v1/messages", json=BODY, headers={**VERSION, **header, TAG: tag})
        assert r.status_code == 401
        doc = proxy_error(r.content, r.headers)
        assert doc["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
        assert wrong not in r.text
        row = await stack.row(doc["request_id"])
        assert (row["refusal"], row["key_id"]) == ("invalid_key", None)
    assert await stack.upstream(tag) == []
    # What the official SDK makes of it.
    async with stack.sdk(wrong, client_ip=address()) as client:
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await client.messages.create(**BODY)  # type: ignore[arg-type]
    assert refused.value.status_code == 401 and "invalid x-api-key" in refused.value.message


async def test_database_keys_work_until_revoked_or_expired(stack: Stack) -> None:
    """Keys made in the proxy's database after it started: found by a lookup."""
    _, good = make_key(stack.engine, "good")
    gone_id, revoked = make_key(stack.engine, "gone")
    revoke_key(stack.engine, gone_id, actor="test")
    _, expired = make_key(stack.engine, "old", expires_at=datetime.now(UTC) - timedelta(minutes=1))

    async with stack.sdk(good, client_ip=address()) as client:
        assert (await client.messages.create(**BODY)).content  # type: ignore[arg-type]
    http = stack.http(address())
    for secret, reason, message in (
        (revoked, "revoked_key", "This API key has been revoked."),
        (expired, "expired_key", "This API key has expired."),
    ):
        r = await http.post("/v1/messages", json=BODY, headers={**VERSION, "x-api-key": secret})
        assert r.status_code == 401, r.text
        doc = proxy_error(r.content, r.headers)
        assert doc["error"] == {"type": "authentication_error", "message": message}
        row = await stack.row(doc["request_id"])
        assert row["refusal"] == reason


async def test_an_address_that_keeps_guessing_is_throttled_but_good_keys_still_pass(
    stack: Stack,
) -> None:
    """CLAUDE_PROXY_BAD_KEY_BURST=3 and _PER_MINUTE=6 here: 3 failed checks, then one per
    10 s; the fourth guess is refused without a key check, with a retry-after."""
    guesser = address()
    http = stack.http(guesser)
    codes = []
    for i in range(5):
        headers = {**VERSION, "x-api-key": f"sk-proxy-guess-{i}-{uuid.uuid4().hex}"}
        r = await http.post("/v1/messages", json=BODY, headers=headers)
        codes.append(r.status_code)
        if r.status_code == 429:
            doc = proxy_error(r.content, r.headers)
            assert doc["error"]["type"] == "rate_limit_error"
            assert "invalid API keys" in doc["error"]["message"]
            assert 1 <= int(r.headers["retry-after"]) <= 10
            row = await stack.row(doc["request_id"])
            assert row["refusal"] == "bad_key_throttled"
    assert codes == [401, 401, 401, 429, 429]
    # The same address with a good key: served. Another address: still a plain 401.
    good = await http.post("/v1/messages", json=BODY, headers={**VERSION, "x-api-key": CLIENT_KEY})
    assert good.status_code == 200
    other = await stack.http(address()).post(
        "/v1/messages", json=BODY, headers={**VERSION, "x-api-key": "sk-proxy-guess-x"}
    )
    assert other.status_code == 401
