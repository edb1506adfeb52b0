"""The proxy's own bearer tokens: short-lived, signed, minted at sign-in and refresh.

An access token is an HS256 JWT signed with `CLAUDE_PROXY_SESSION_SECRET`, shaped like
the Claude apps gateway's (`sub`, `email`, `name`, `groups`, `aud` "claude-gateway",
`iss` the public URL, `kid` the first 8 bytes of SHA-256 of the secret), so Claude Code
reads the developer's identity from it as it does from Anthropic's gateway. The request
path verifies a token once and then finds it in a bounded cache by digest: no database
read per request. Revocation is per user (`users.tokens_valid_after`, a disabled user),
checked against the people cache on every request.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

AUDIENCE = "claude-gateway"
# Admin sessions (the console's and the admin API's cookie) are tokens for another
# audience: an access token is never accepted as a session, nor the reverse.
ADMIN_AUDIENCE = "claude-proxy-admin"
ADMIN_COOKIE = "claude_proxy_admin"
ALGORITHM = "HS256"
# Every minted token starts with this (a JWT header), so a bearer that cannot be one of
# ours is never parsed as a JWT.
JWT_PREFIX = b"eyJ"
_CACHE_MAX = 50_000
_LEEWAY = 5.0  # seconds of clock skew between replicas


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified access token says."""

    user_id: str  # the proxy's users.id (the `uid` claim)
    subject: str  # `sub`: the IdP subject, or the user id for a local user
    email: str
    issued_at: float
    expires_at: float
    token_id: str


class TokenSigner:
    """Mints and verifies access tokens; built once, shared by sign-in and the relay.

    PyJWT (and with it `cryptography`, ~14 MB) is imported only when a signer is built:
    a proxy without sign-in never loads it."""

    def __init__(self, *, secret: str, issuer: str, ttl: float = 3600.0) -> None:
        import jwt

        self._jwt = jwt
        if len(secret) < 32:
            raise ValueError("the session secret must be at least 32 characters")
        self._secret = secret
        self.issuer = issuer
        self.ttl = ttl
        self.kid = hashlib.sha256(secret.encode()).digest()[:8].hex()
        self._verified: OrderedDict[bytes, TokenClaims] = OrderedDict()

    def mint(
        self,
        *,
        user_id: str,
        subject: str,
        email: str,
        name: str | None,
        groups: list[str],
        now: float | None = None,
    ) -> tuple[str, int]:
        """A new access token and its lifetime in seconds."""
        now = time.time() if now is None else now
        ttl = int(self.ttl)
        claims = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": subject,
            "uid": user_id,
            "email": email,
            "name": name or "",
            "groups": groups,
            "iat": int(now),
            # To the millisecond: compared with a revocation made in the same second.
            "iat_ms": int(now * 1000),
            "exp": int(now) + ttl,
            "jti": secrets.token_hex(12),
        }
        token = self._jwt.encode(
            claims, self._secret, algorithm=ALGORITHM, headers={"kid": self.kid}
        )
        return token, ttl

    def mint_admin_session(
        self, *, user_id: str, subject: str, email: str, ttl: float, now: float | None = None
    ) -> str:
        """The signed value of an admin session cookie, valid for `ttl` seconds."""
        now = time.time() if now is None else now
        claims = {
            "iss": self.issuer,
            "aud": ADMIN_AUDIENCE,
            "sub": subject,
            "uid": user_id,
            "email": email,
            "iat": int(now),
            "iat_ms": int(now * 1000),
            "exp": int(now + ttl),
            "jti": secrets.token_hex(12),
        }
        return self._jwt.encode(
            claims, self._secret, algorithm=ALGORITHM, headers={"kid": self.kid}
        )

    def verify_admin_session(self, value: str) -> TokenClaims | None:
        """The claims of a valid admin session cookie; None for anything else. The caller
        still checks that the user is active and in an admin group."""
        return self._decode(value.encode(), audience=ADMIN_AUDIENCE)

    def verify(self, token: bytes, now: float | None = None) -> TokenClaims | None:
        """The claims of a valid, unexpired token of ours; None for anything else."""
        if not token.startswith(JWT_PREFIX):
            return None
        now = time.time() if now is None else now
        digest = hashlib.sha256(token).digest()
        claims = self._verified.get(digest)
        if claims is None:
            claims = self._decode(token)
            if claims is None:
                return None
            self._verified[digest] = claims
            while len(self._verified) > _CACHE_MAX:
                self._verified.popitem(last=False)
        if claims.expires_at + _LEEWAY <= now:
            self._verified.pop(digest, None)
            return None
        return claims

    def _decode(self, token: bytes, audience: str = AUDIENCE) -> TokenClaims | None:
        try:
            raw = self._jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=self.issuer,
                leeway=_LEEWAY,
                options={"require": ["exp", "iat", "sub", "uid"]},
            )
        except self._jwt.PyJWTError:
            return None
        uid, sub = raw.get("uid"), raw.get("sub")
        if not isinstance(uid, str) or not isinstance(sub, str):
            return None
        issued_ms = raw.get("iat_ms")
        issued = issued_ms / 1000 if isinstance(issued_ms, int) else float(raw["iat"])
        return TokenClaims(
            user_id=uid,
            subject=sub,
            email=str(raw.get("email") or ""),
            issued_at=issued,
            expires_at=float(raw["exp"]),
            token_id=str(raw.get("jti") or ""),
        )
