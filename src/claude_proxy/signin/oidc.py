"""The proxy as an OpenID Connect client (a confidential one) of the company's IdP.

Discovery, the authorization URL (code flow with PKCE S256, `state` and `nonce`), the
code exchange and the refresh grant (client_secret_basic or _post, whichever the IdP
lists), ID token verification (issuer, audience, expiry, nonce; RS256 and the other
asymmetric algorithms, keys from the IdP's JWKS), the userinfo fallback for an email or
groups the ID token lacks, and the groups claim as a name or a JSON pointer.

Every call has a 10 s timeout: the client behind it (Claude Code) waits 10 s itself.
Nothing here logs a token or the client secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, urlencode, urlsplit

import httpx
import jwt

log = logging.getLogger("claude_proxy.signin")

TIMEOUT = 10.0
_METADATA_TTL = 3600.0
_JWKS_TTL = 3600.0
_JWKS_MIN_REFETCH = 30.0  # an unknown `kid` re-reads the JWKS at most this often
_LEEWAY = 60  # seconds of clock skew with the IdP
# Asymmetric only: an HS* ID token would be signed with our own client secret.
_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"})
_MAX_RESPONSE_BYTES = 1024 * 1024
GOOGLE_HOST = "accounts.google.com"
# Bounds on what the IdP hands us (stored in users and tokens).
MAX_SUBJECT_CHARS = 255
MAX_EMAIL_CHARS = 320
MAX_NAME_CHARS = 200
MAX_GROUPS = 500
MAX_GROUP_CHARS = 256


class IdpError(Exception):
    """The IdP refused or answered something unusable; the message is safe to show."""


class IdpInvalidGrant(IdpError):
    """The IdP said invalid_grant: the refresh token (or code) is no longer good."""


class IdpUnavailable(IdpError):
    """The IdP could not be reached or failed (timeout, 5xx): a transient error."""


@dataclass(frozen=True, slots=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str
    scopes: str
    groups_claim: str
    redirect_uri: str


@dataclass(frozen=True, slots=True)
class TokenSet:
    access_token: str | None
    refresh_token: str | None
    id_token: str | None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the IdP says signed in."""

    subject: str
    email: str
    name: str | None
    groups: tuple[str, ...]


def new_verifier() -> str:
    """A PKCE code verifier (RFC 7636: 43 to 128 characters; 384 random bits here)."""
    return secrets.token_urlsafe(48)


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def groups_from(claims: Mapping[str, Any], claim: str) -> tuple[str, ...] | None:
    """The groups in `claims` under a claim name or a JSON pointer ("/realm_access/roles");
    None when the claim is absent. A string is one group; anything else is ignored."""
    value: Any
    if claim.startswith("/"):
        value = claims
        for raw in claim[1:].split("/"):
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return None
    else:
        if claim not in claims:
            return None
        value = claims[claim]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return None
    names = [g for g in value if isinstance(g, str) and g and len(g) <= MAX_GROUP_CHARS]
    return tuple(dict.fromkeys(names))[:MAX_GROUPS]


def in_allowed_groups(groups: tuple[str, ...], allowed: frozenset[str]) -> bool:
    """Empty `allowed`: everyone the IdP signs in. Else a member of at least one."""
    return not allowed or not allowed.isdisjoint(groups)


class OidcClient:
    """The IdP's endpoints, discovered once an hour; built once, shared by the routes."""

    def __init__(self, config: OidcConfig, *, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._http = http or httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False)
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._jwks: jwt.PyJWKSet | None = None
        self._jwks_at = -_JWKS_MIN_REFETCH

    async def close(self) -> None:
        await self._http.aclose()

    # ---------------------------------------------------------------- discovery

    async def metadata(self) -> dict[str, Any]:
        """The IdP's discovery document (cached for an hour; the last good one is kept
        while the IdP is unreachable)."""
        now = time.monotonic()
        if self._metadata is not None and now - self._metadata_at < _METADATA_TTL:
            return self._metadata
        issuer = self.config.issuer.rstrip("/")
        try:
            doc = await self._get_json(f"{issuer}/.well-known/openid-configuration")
        except IdpError:
            if self._metadata is not None:
                return self._metadata
            raise
        if str(doc.get("issuer", "")).rstrip("/") != issuer:
            raise IdpError("the identity provider's discovery document names another issuer")
        for field in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(doc.get(field), str):
                raise IdpError(f"the identity provider's discovery document has no {field}")
        self._metadata, self._metadata_at = doc, now
        return doc

    # ------------------------------------------------------------- the browser

    async def authorization_url(self, *, state: str, verifier: str, nonce: str) -> str:
        """The IdP URL the browser is sent to: code flow, PKCE S256, nonce."""
        meta = await self.metadata()
        scopes = self.config.scopes
        query = {
            "response_type": "code",
            "response_mode": "query",
            "client_id": self.config.client_id,
            "redirect_uri": self.config.redirect_uri,
            "scope": scopes,
            "state": state,
            "nonce": nonce,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        }
        if urlsplit(self.config.issuer).hostname == GOOGLE_HOST:
            # Google refuses the offline_access scope and gives a refresh token only for
            # access_type=offline, and again only with prompt=consent.
            query["scope"] = " ".join(s for s in scopes.split() if s != "offline_access")
            query.update(access_type="offline", prompt="consent")
        endpoint: str = meta["authorization_endpoint"]
        sep = "&" if urlsplit(endpoint).query else "?"
        return endpoint + sep + urlencode(query)

    async def exchange_code(self, code: str, verifier: str) -> TokenSet:
        return await self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.config.redirect_uri,
                "code_verifier": verifier,
            }
        )

    async def refresh(self, refresh_token: str) -> TokenSet:
        """The refresh grant; IdpInvalidGrant when the IdP no longer honours the token."""
        return await self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )

    async def revoke(self, token: str) -> None:
        """Best effort (RFC 7009), when the IdP has a revocation endpoint."""
        meta = await self.metadata()
        endpoint = meta.get("revocation_endpoint")
        if not isinstance(endpoint, str):
            return
        data, headers = self._client_auth(
            meta, {"token": token, "token_type_hint": "refresh_token"}
        )
        try:
            await self._http.post(endpoint, data=data, headers=headers)
        except httpx.HTTPError as exc:
            log.info("revocation at the identity provider failed (%s)", type(exc).__name__)

    # ---------------------------------------------------------------- identity

    async def identity(self, tokens: TokenSet, *, nonce: str | None) -> Identity:
        """Who signed in: the verified ID token's claims, completed from userinfo when
        the email or the groups are missing. `nonce`: the one sent (None on refresh)."""
        claims: dict[str, Any] = {}
        if tokens.id_token:
            claims = await self.verify_id_token(tokens.id_token, nonce=nonce)
        elif nonce is not None:
            raise IdpError("the identity provider sent no ID token (is 'openid' in the scopes?)")
        groups = groups_from(claims, self.config.groups_claim)
        if not claims or "email" not in claims or groups is None:
            extra = await self._userinfo(tokens.access_token)
            if extra is not None:
                if claims and extra.get("sub") != claims.get("sub"):
                    raise IdpError("userinfo is about another user than the ID token")
                claims = {**extra, **claims}
                if groups is None:
                    groups = groups_from(extra, self.config.groups_claim)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > MAX_SUBJECT_CHARS:
            raise IdpError("the identity provider sent no usable subject")
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email or len(email) > MAX_EMAIL_CHARS:
            raise IdpError("the identity provider sent no email address (add the 'email' scope)")
        if claims.get("email_verified") is False:
            raise IdpError("the identity provider says this email address is not verified")
        name = claims.get("name")
        name = name[:MAX_NAME_CHARS] if isinstance(name, str) and name else None
        return Identity(subject=subject, email=email.lower(), name=name, groups=groups or ())

    async def verify_id_token(self, id_token: str, *, nonce: str | None) -> dict[str, Any]:
        meta = await self.metadata()
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as exc:
            raise IdpError("the ID token is malformed") from exc
        alg = header.get("alg")
        if alg not in _ALGORITHMS:
            raise IdpError(f"the ID token's algorithm is not accepted: {str(alg)[:16]}")
        key = await self._signing_key(header.get("kid"), alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key.key,
                algorithms=[alg],
                audience=self.config.client_id,
                issuer=_issuers(meta["issuer"]),
                leeway=_LEEWAY,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise IdpError(f"the ID token did not verify ({type(exc).__name__})") from exc
        aud = claims.get("aud")
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != self.config.client_id:
            raise IdpError("the ID token was issued to another client (azp)")
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(got, nonce):
                raise IdpError("the ID token's nonce does not match this sign-in")
        return claims

    # ---------------------------------------------------------------- internals

    async def _signing_key(self, kid: object, alg: str) -> jwt.PyJWK:
        for attempt in range(2):
            keys = await self._keyset(force=attempt > 0)
            for key in keys.keys:
                if (kid is None or key.key_id == kid) and _family(key) == _family_of(alg):
                    return key
        raise IdpError("the ID token is signed with a key the identity provider does not list")

    async def _keyset(self, *, force: bool) -> jwt.PyJWKSet:
        """The IdP's keys: cached for an hour; an unknown key re-reads them (not more
        often than every 30 s, so forged tokens cannot make us hammer the IdP)."""
        now = time.monotonic()
        if self._jwks is not None:
            age = now - self._jwks_at
            if age < _JWKS_MIN_REFETCH or (not force and age < _JWKS_TTL):
                return self._jwks
        meta = await self.metadata()
        doc = await self._get_json(meta["jwks_uri"])
        try:
            self._jwks = jwt.PyJWKSet.from_dict(doc)
        except jwt.PyJWTError as exc:
            raise IdpError("the identity provider's JWKS is unusable") from exc
        self._jwks_at = now
        return self._jwks

    async def _userinfo(self, access_token: str | None) -> dict[str, Any] | None:
        meta = await self.metadata()
        endpoint = meta.get("userinfo_endpoint")
        if not access_token or not isinstance(endpoint, str):
            return None
        try:
            r = await self._http.get(endpoint, headers={"authorization": f"Bearer {access_token}"})
        except httpx.HTTPError as exc:
            raise IdpUnavailable(f"userinfo unreachable ({type(exc).__name__})") from exc
        if r.status_code >= 500:
            raise IdpUnavailable(f"userinfo answered {r.status_code}")
        if r.status_code != 200:
            raise IdpError(f"userinfo answered {r.status_code}")
        return _json_object(r, "userinfo")

    def _client_auth(
        self, meta: Mapping[str, Any], data: dict[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The form and headers that authenticate the proxy: client_secret_basic unless
        the IdP lists only client_secret_post."""
        methods = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        cfg = self.config
        headers = {"accept": "application/json"}
        if "client_secret_basic" not in methods and "client_secret_post" in methods:
            return {**data, "client_id": cfg.client_id, "client_secret": cfg.client_secret}, headers
        # RFC 6749 2.3.1: both parts form-urlencoded before the Basic encoding.
        pair = f"{quote_plus(cfg.client_id)}:{quote_plus(cfg.client_secret)}".encode()
        headers["authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return data, headers

    async def _token_request(self, form: dict[str, str]) -> TokenSet:
        meta = await self.metadata()
        data, headers = self._client_auth(meta, form)
        try:
            r = await self._http.post(meta["token_endpoint"], data=data, headers=headers)
        except httpx.HTTPError as exc:
            raise IdpUnavailable(f"token endpoint unreachable ({type(exc).__name__})") from exc
        if r.status_code >= 500:
            raise IdpUnavailable(f"token endpoint answered {r.status_code}")
        body = _json_object(r, "token endpoint")
        if r.status_code != 200:
            error = str(body.get("error", ""))[:64]
            if error == "invalid_grant":
                raise IdpInvalidGrant("the identity provider refused the grant (invalid_grant)")
            raise IdpError(
                f"the identity provider's token endpoint refused: {error or r.status_code}"
            )
        return TokenSet(
            access_token=_opt_str(body.get("access_token")),
            refresh_token=_opt_str(body.get("refresh_token")),
            id_token=_opt_str(body.get("id_token")),
        )

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            r = await self._http.get(url, headers={"accept": "application/json"})
        except httpx.HTTPError as exc:
            raise IdpUnavailable(f"identity provider unreachable ({type(exc).__name__})") from exc
        if r.status_code != 200:
            raise IdpUnavailable(f"identity provider answered {r.status_code} for {_path(url)}")
        return _json_object(r, _path(url))


def _issuers(issuer: str) -> list[str]:
    """The `iss` values an ID token may carry: the discovered issuer, and for Google also
    its bare host name, which Google documents as equally valid."""
    if urlsplit(issuer).hostname == GOOGLE_HOST:
        return [issuer, GOOGLE_HOST]
    return [issuer]


def _family(key: jwt.PyJWK) -> str:
    return {"RSA": "RS", "EC": "ES", "OKP": "Ed"}.get(str(key.key_type), "")


def _family_of(alg: str) -> str:
    return "RS" if alg.startswith("PS") else alg[:2]


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _path(url: str) -> str:
    return urlsplit(url).path[:100]


def _json_object(r: httpx.Response, what: str) -> dict[str, Any]:
    if len(r.content) > _MAX_RESPONSE_BYTES:
        raise IdpError(f"the identity provider's {what} answer is too large")
    try:
        body = r.json()
    except ValueError as exc:
        raise IdpError(f"the identity provider's {what} answer is not JSON") from exc
    if not isinstance(body, dict):
        raise IdpError(f"the identity provider's {what} answer is not a JSON object")
    return body
