"""A signed-in developer's bearer endpoints: `/managed/settings` (Claude Code's
`availableModels`, with a checksum and an ETag), the OTLP paths it exports telemetry to,
and the developer's own view (`/me`, personal keys under `/me/keys`).

They take the proxy-minted access token (`Authorization: Bearer` or `x-api-key`) and
answer Anthropic-shaped errors.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import Response

from claude_proxy.gateway.errors import ProxyError
from claude_proxy.gateway.keys import KeyCache
from claude_proxy.gateway.limits import Limiter
from claude_proxy.gateway.people import Caller, People
from claude_proxy.gateway.tokens import TokenClaims, TokenSigner
from claude_proxy.signin.common import api_error, json_response, know_user, read_body
from claude_proxy.store.columns import money_text
from claude_proxy.store.keys import KeySpec, create_key, list_keys

log = logging.getLogger("claude_proxy.signin")

MAX_JSON_BYTES = 16 * 1024
MAX_OTLP_BYTES = 16 * 1024 * 1024
MAX_BEARER_CHARS = 4096
MAX_PERSONAL_KEYS = 20  # active personal keys per user
MAX_KEY_NAME_CHARS = 100


@dataclass(frozen=True, slots=True)
class _Bearer:
    claims: TokenClaims
    caller: Caller


@dataclass(kw_only=True, eq=False, repr=False)
class DeveloperEndpoints:
    """The bearer endpoints: what `build_signin_app` gave them."""

    engine: Engine
    signer: TokenSigner
    people: People
    limiter: Limiter
    keys: KeyCache

    async def _bearer(self, request: Request) -> _Bearer | Response:
        """The caller of a bearer endpoint, or the Anthropic-shaped 401."""
        raw = request.headers.get("authorization", "")
        scheme, _, token = raw.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if not token:
            token = request.headers.get("x-api-key", "").strip()
        if not token or len(token) > MAX_BEARER_CHARS:
            return api_error(request, "authentication_error", "invalid token")
        claims = self.signer.verify(token.encode())
        if claims is None:
            return api_error(request, "authentication_error", "invalid token")
        caller = self.people.caller_for_token(claims)
        if caller is None:  # signed in a moment ago through another replica
            await know_user(self.people, claims.user_id)
            caller = self.people.caller_for_token(claims)
        if caller is None:
            return api_error(request, "authentication_error", "invalid token")
        if isinstance(caller, ProxyError):
            return api_error(request, caller.error_type, caller.message)
        return _Bearer(claims, caller)

    async def managed_settings(self, request: Request) -> Response:
        found = await self._bearer(request)
        if isinstance(found, Response):
            return found
        models = available_models(self.people.allowed_models(found.claims.user_id))
        if models is None:
            return api_error(request, "not_found_error", "no managed settings apply to this user")
        settings = {"availableModels": models}
        digest = settings_checksum(settings)
        etag = f'"{digest}"'
        if _etag_matches(request.headers.get("if-none-match", ""), digest):
            return Response(status_code=304, headers={"etag": etag})
        return json_response(
            200, {"uuid": digest, "checksum": digest, "settings": settings}, extra={"etag": etag}
        )

    async def otlp(self, request: Request) -> Response:
        """Claude Code's telemetry, when it is on: accepted and dropped (a 404 would make
        its exporter log every flush)."""
        found = await self._bearer(request)
        if isinstance(found, Response):
            return found
        if await read_body(request, MAX_OTLP_BYTES, keep=False) is None:
            return api_error(request, "request_too_large", "telemetry batch too large")
        return json_response(200, {})

    async def me(self, request: Request) -> Response:
        found = await self._bearer(request)
        if isinstance(found, Response):
            return found
        uid = found.claims.user_id
        info = self.people.user(uid)
        if info is None:  # removed since the token was checked
            return api_error(request, "authentication_error", "invalid token")
        now = time.time()
        levels = []
        tightest: dict[str, Any] | None = None
        for level in self.people.levels_for_user(uid):
            entry: dict[str, Any] = {
                "id": level.id,
                "kind": level.kind,
                "name": level.name,
                "models": list(level.models) if level.models is not None else None,
                "rpm": level.rpm,
                "tpm": level.tpm,
                "budget_usd": _money(level.budget_usd),
                "budget_period": level.budget_period,
                "spent_usd": None,
                "remaining_usd": None,
            }
            if level.budget_usd is not None:
                period = level.budget_period or "total"
                spent = self.limiter.spent(level.id, period, now)
                left = max(0.0, level.budget_usd - spent)
                entry["spent_usd"] = _money(spent)
                entry["remaining_usd"] = _money(left)
                if tightest is None or left < tightest["_left"]:
                    tightest = {
                        "id": level.id,
                        "kind": level.kind,
                        "name": level.name,
                        "budget_period": period,
                        "_left": left,
                    }
            levels.append(entry)
        if tightest is not None:
            tightest["remaining_usd"] = _money(tightest.pop("_left"))
        group = info.policy_group_id
        return json_response(
            200,
            {
                "user": {
                    "id": info.id,
                    "email": info.email,
                    "name": info.name,
                    "subject": info.subject,
                    "groups": list(info.groups),
                    "policy_group": (
                        {"id": group, "name": self.people.group_name(group)} if group else None
                    ),
                },
                "allowed_models": _list_or_none(self.people.allowed_models(uid)),
                "levels": levels,
                "tightest": tightest,
                "token_expires_at": int(found.claims.expires_at),
            },
        )

    async def my_keys(self, request: Request) -> Response:
        found = await self._bearer(request)
        if isinstance(found, Response):
            return found
        rows = await asyncio.to_thread(
            list_keys, self.engine, include_revoked=False, user_id=found.claims.user_id
        )
        return json_response(200, {"data": [_key_json(r.public()) for r in rows]})

    async def create_my_key(self, request: Request) -> Response:
        """A personal key: within the user's own policy (a request with it passes the
        user's levels too, so it cannot widen them)."""
        found = await self._bearer(request)
        if isinstance(found, Response):
            return found
        uid = found.claims.user_id
        raw = await read_body(request, MAX_JSON_BYTES)
        if raw is None:
            return api_error(
                request, "request_too_large", f"the body is over {MAX_JSON_BYTES} bytes"
            )
        try:
            spec = self._key_spec(raw, self.people.allowed_models(uid))
        except ValueError as exc:
            return api_error(request, "invalid_request_error", str(exc))
        info = self.people.user(uid)
        actor = f"oidc:{found.claims.subject} {info.email if info else found.claims.email}"

        def create() -> tuple[Any, str] | None:
            mine = list_keys(self.engine, include_revoked=False, user_id=uid)
            if sum(1 for r in mine if r.status == "active") >= MAX_PERSONAL_KEYS:
                return None
            return create_key(self.engine, spec, actor=actor, user_id=uid)

        try:
            made = await asyncio.to_thread(create)
        except ValueError as exc:
            return api_error(request, "invalid_request_error", str(exc))
        if made is None:
            return api_error(
                request,
                "invalid_request_error",
                f"you have {MAX_PERSONAL_KEYS} active personal keys; revoke one first",
            )
        row, secret = made
        self.keys.apply(row)  # usable at once on this replica; others within a refresh
        log.info("personal key %s created for %s", row.id, uid)
        return json_response(201, {**_key_json(row.public()), "key": secret})

    @staticmethod
    def _key_spec(raw: bytes, allowed: tuple[str, ...] | None) -> KeySpec:
        try:
            body = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError:
            raise ValueError("the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        unknown = set(body) - {"name", "models", "budget_usd", "budget_period", "rpm", "tpm"}
        if unknown:
            raise ValueError(f"unknown fields: {', '.join(sorted(unknown))[:200]}")
        name = body.get("name", "personal")
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_KEY_NAME_CHARS:
            raise ValueError(f"name is 1 to {MAX_KEY_NAME_CHARS} characters")
        models = body.get("models")
        if models is not None:
            if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
                raise ValueError("models is a list of model ids or patterns")
            outside = [m for m in models if not within_models(m, allowed)]
            if outside:
                raise ValueError(f"not within your allowed models: {', '.join(outside)[:300]}")
        budget = body.get("budget_usd")
        if budget is not None:
            if isinstance(budget, bool) or not isinstance(budget, (int, float, str)):
                raise ValueError("budget_usd is an amount in USD")
            try:
                budget = Decimal(str(budget))
            except ArithmeticError:
                raise ValueError("budget_usd is an amount in USD") from None
        for field in ("rpm", "tpm"):
            value = body.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{field} is a whole number")
        period = body.get("budget_period")
        if period is not None and not isinstance(period, str):
            raise ValueError("budget_period is day, week, month or total")
        return KeySpec(
            name=name.strip(),
            models=tuple(models) if models is not None else None,
            rpm=body.get("rpm"),
            tpm=body.get("tpm"),
            budget_usd=budget,
            budget_period=period,
        )


# --------------------------------------------------------------- pure functions


def available_models(allowed: tuple[str, ...] | None) -> list[str] | None:
    """Claude Code's `availableModels` for an allowlist of ids and shell patterns; None
    when nothing is restricted. A pattern becomes the prefix before its first wildcard
    ("claude-haiku-*" → "claude-haiku", which the client reads as the family's models);
    a pattern that starts with a wildcard restricts nothing the client can express."""
    if allowed is None:
        return None
    out: list[str] = []
    for pattern in allowed:
        cut = min((i for i, ch in enumerate(pattern) if ch in "*?["), default=len(pattern))
        prefix = pattern[:cut].rstrip("-")
        if not prefix:
            return None
        if prefix not in out:
            out.append(prefix)
    return out


def settings_checksum(settings: dict[str, Any]) -> str:
    """ "sha256:" + hex SHA-256 of the settings as JSON.stringify writes them with object
    keys sorted: the client hashes its cached copy the same way for If-None-Match."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def within_models(requested: str, allowed: tuple[str, ...] | None) -> bool:
    """Whether a personal key's model pattern asks for nothing outside the allowlist:
    an exact id an allowed pattern matches, an allowed pattern itself, or a narrower
    pattern under an allowed "prefix*"."""
    if not requested.strip() or len(requested) > 200:
        return False
    if allowed is None:
        return True
    wild = any(ch in requested for ch in "*?[")
    for pattern in allowed:
        if requested == pattern:
            return True
        if not wild and fnmatch.fnmatchcase(requested, pattern):
            return True
        head = pattern[:-1]
        if (
            pattern.endswith("*")
            and not any(ch in head for ch in "*?[")
            and requested.startswith(head)
        ):
            return True
    return False


def _etag_matches(header: str, digest: str) -> bool:
    if not header or len(header) > 1024:
        return False
    if header.strip() == "*":
        return True
    for part in header.split(","):
        tag = part.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        if tag.strip('"') == digest:
            return True
    return False


def _money(value: float | None) -> str | None:
    if value is None:
        return None
    return money_text(Decimal(repr(value)))


def _list_or_none(values: tuple[str, ...] | None) -> list[str] | None:
    return list(values) if values is not None else None


def _key_json(public: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in public.items():
        if isinstance(v, Decimal):
            out[k] = money_text(v)
        elif hasattr(v, "isoformat"):
            out[k] = v.isoformat()
        else:
            out[k] = v
    return out
