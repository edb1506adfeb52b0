"""Who may administer the proxy: the admin key, or a signed-in member of an admin group.

Three credentials are accepted, checked before anything else is looked at:

- the admin key (`CLAUDE_PROXY_ADMIN_KEY`) as `Authorization: Bearer`, or as
  `x-api-key` where the Claude apps gateway's tooling sends it (the spend-limit routes),
  compared in constant time; the audit log names it "admin-key";
- a proxy access token (`Authorization: Bearer eyJ...`, minted at sign-in);
- the admin session cookie (`claude_proxy_admin`, minted when an admin signs in with a
  browser), under /admin/ only.

A token or a session counts only while its user is active, was issued at or after the
user's `tokens_valid_after` (a revocation), and the user is in one of
`CLAUDE_PROXY_OIDC_ADMIN_GROUPS`: all read from the people cache, so a disabled admin
loses access as fast as a disabled developer. The audit log names such an admin
"oidc:<sub> <email>".
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from claude_proxy.gateway.people import People
from claude_proxy.gateway.tokens import ADMIN_COOKIE, JWT_PREFIX, TokenClaims, TokenSigner
from claude_proxy.http.asgi import Scope

ADMIN_KEY_ACTOR = "admin-key"
# A cookie or token longer than this is not one of ours: not even parsed.
_MAX_CREDENTIAL_BYTES = 8192
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request may not administer; `login` when it brought no credentials at all
    (a browser may then be sent to sign in)."""

    error_type: str  # authentication_error | permission_error
    message: str
    login: bool = False


@dataclass(frozen=True, slots=True)
class _Presented:
    bearer: bytes | None = None
    api_key: bytes | None = None
    session: str | None = None
    origin: str | None = None
    fetch_site: str | None = None
    host: str | None = None
    malformed_authorization: bool = False


class AdminAuth:
    """Checks a request's admin credentials; built once, shared by the admin API and the
    spend-limit routes."""

    def __init__(
        self,
        *,
        admin_key: str | None,
        signer: TokenSigner | None = None,
        people: People | None = None,
        admin_groups: frozenset[str] = frozenset(),
    ) -> None:
        if not admin_key and signer is None:
            raise ValueError("the admin API needs an admin key or sign-in (a token signer)")
        if signer is not None and people is None:
            raise ValueError("checking signed-in admins needs the people cache")
        self._key = admin_key.encode() if admin_key else None
        self._signer = signer
        self._people = people
        self._groups = admin_groups
        self._own_origin = _origin(signer.issuer) if signer is not None else None

    @property
    def sign_in(self) -> bool:
        """True when admins can sign in (a browser without credentials may be sent to)."""
        return self._signer is not None

    def check(self, scope: Scope, *, cookie: bool, x_api_key: bool) -> str | Refusal:
        """The actor for the audit log, or why not. `cookie`: the admin session counts
        (the admin API, not the spend-limit routes); `x_api_key`: the admin key may come
        in `x-api-key` too."""
        given = _presented(scope)
        if given.bearer is not None:
            return self._bearer(given.bearer)
        if given.malformed_authorization:
            return Refusal("authentication_error", "the Authorization header must be `Bearer ...`")
        if x_api_key and given.api_key is not None:
            if self._is_admin_key(given.api_key):
                return ADMIN_KEY_ACTOR
            return Refusal("authentication_error", "invalid admin key")
        if cookie and given.session is not None and self._signer is not None:
            claims = self._signer.verify_admin_session(given.session)
            if claims is None:  # expired or forged: sign in again
                return Refusal("authentication_error", "the admin session has expired", True)
            if scope.get("method", "GET") not in _SAFE_METHODS and not self._same_origin(given):
                return Refusal(
                    "permission_error",
                    "a change made with the admin session must come from the proxy's own pages",
                )
            return self._person(claims)
        return Refusal("authentication_error", self._missing(x_api_key), True)

    def _bearer(self, token: bytes) -> str | Refusal:
        if self._is_admin_key(token):
            return ADMIN_KEY_ACTOR
        if self._signer is not None and token.startswith(JWT_PREFIX):
            claims = self._signer.verify(token)
            if claims is None:
                return Refusal("authentication_error", "invalid or expired token")
            return self._person(claims)
        if self._key is None:
            return Refusal("authentication_error", "invalid or expired token")
        return Refusal("authentication_error", "invalid admin key")

    def _is_admin_key(self, given: bytes) -> bool:
        return self._key is not None and hmac.compare_digest(given, self._key)

    def _person(self, claims: TokenClaims) -> str | Refusal:
        """A signed-in user's token or session: valid only for an active admin, and only
        if issued after the user's tokens were last revoked (the gateway's own rule)."""
        user = self._people.user(claims.user_id) if self._people is not None else None
        if user is None or not user.active:
            return Refusal("authentication_error", "this user is disabled or unknown")
        if user.tokens_valid_after is not None and claims.issued_at < user.tokens_valid_after:
            return Refusal("authentication_error", "this sign-in was revoked; sign in again")
        if not self._groups.intersection(user.groups):
            return Refusal(
                "permission_error",
                "only members of an admin group (CLAUDE_PROXY_OIDC_ADMIN_GROUPS) may "
                "administer the proxy",
            )
        return f"oidc:{user.subject or claims.subject} {user.email}"

    def _same_origin(self, given: _Presented) -> bool:
        """A change made with a cookie must come from the proxy's own pages: a browser
        says where a request comes from (Sec-Fetch-Site, Origin) on every cross-site
        one. Neither header: not a browser, so no forged cross-site request."""
        if given.fetch_site is not None and given.fetch_site not in ("same-origin", "none"):
            return False
        if given.origin is None:
            return True
        origin = given.origin.lower()
        if origin == self._own_origin:
            return True
        host = (given.host or "").lower()
        return bool(host) and origin in (f"https://{host}", f"http://{host}")

    def _missing(self, x_api_key: bool) -> str:
        ways = ["`Authorization: Bearer <CLAUDE_PROXY_ADMIN_KEY>`"] if self._key else []
        if x_api_key and self._key:
            ways.append("`x-api-key: <CLAUDE_PROXY_ADMIN_KEY>`")
        if self._signer is not None:
            ways.append("the bearer token of a signed-in admin")
            if not x_api_key:
                ways.append("an admin session (sign in at /oauth/login)")
        return "missing admin credentials: send " + " or ".join(ways)


def _presented(scope: Scope) -> _Presented:
    bearer = api_key = None
    session = origin = fetch_site = host = None
    malformed = False
    for raw_name, raw_value in scope.get("headers", ()):
        name = bytes(raw_name).lower()
        value = bytes(raw_value)
        if len(value) > _MAX_CREDENTIAL_BYTES:
            continue
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                bearer = token.strip()
            else:
                malformed = True
        elif name == b"x-api-key":
            api_key = value.strip()
        elif name == b"cookie" and session is None:
            session = _cookie(value.decode("latin-1"), ADMIN_COOKIE)
        elif name == b"origin":
            origin = value.decode("latin-1").strip()
        elif name == b"sec-fetch-site":
            fetch_site = value.decode("latin-1").strip().lower()
        elif name == b"host":
            host = value.decode("latin-1").strip()
    return _Presented(bearer, api_key, session, origin, fetch_site, host, malformed)


def _cookie(header: str, wanted: str) -> str | None:
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == wanted:
            return value.strip().strip('"') or None
    return None


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()
