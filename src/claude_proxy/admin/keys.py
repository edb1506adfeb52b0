"""The admin API's key routes: create, list (by owner), show, change, revoke, rotate.

Changes go to the database (with an audit row naming the actor) and then straight into
this process's key cache (`KeyCache.apply`), so they hold for the very next request;
other replicas see them at their next refresh. A key may belong to a user (a personal
key) or a group (a service key): its levels are then its owner's, then its own.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Engine

from claude_proxy.admin.common import (
    ERROR_RESPONSES,
    ApiError,
    MoneyIn,
    MoneyOut,
    Period,
    Text,
    actor,
    bad_request,
    changes_of,
    db,
    not_found,
    store_change,
    utc,
)
from claude_proxy.gateway.keys import KeyCache
from claude_proxy.store.columns import current_period
from claude_proxy.store.keys import (
    RPM_MAX,
    TPM_MAX,
    KeyRow,
    KeySpec,
    create_key,
    drop_orphan_period,
    get_key,
    list_keys,
    revoke_key,
    rotate_key,
    update_key,
    with_spend,
)
from claude_proxy.store.people import get_group, get_user

# An email is at most 320 characters; group names and ids far less.
OWNER_MAX = 320


class LimitFields(BaseModel):
    """The limits every level shares: a model allowlist, RPM, TPM and a budget."""

    model_config = ConfigDict(extra="forbid")

    models: list[Text] | None = Field(
        default=None,
        description="Allowed model ids or shell patterns (`claude-haiku-*`); null: any model.",
        examples=[["claude-sonnet-4-6", "claude-haiku-*"]],
    )
    rpm: int | None = Field(default=None, ge=1, le=RPM_MAX, description="Requests per minute.")
    tpm: int | None = Field(
        default=None,
        ge=1,
        le=TPM_MAX,
        description="Tokens per minute: input, cache writes and output (not cache reads).",
    )
    budget_usd: MoneyIn | None = Field(
        default=None, description="Spend cap per budget_period, in USD (a number or a string)."
    )
    budget_period: Period | None = None

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("an empty list would allow no model; use null for any model")
        if not all(m.strip() for m in v):
            raise ValueError("model patterns cannot be empty")
        return [m.strip() for m in v]


class _KeyFields(LimitFields):
    expires_at: datetime | None = Field(
        default=None, description="When the key stops working (ISO 8601; UTC if no offset)."
    )

    @field_validator("expires_at")
    @classmethod
    def _future(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        v = utc(v)
        if v <= datetime.now(UTC):
            raise ValueError("must be in the future (to stop a key now, revoke it)")
        return v


class KeyCreate(_KeyFields):
    """A new key; every limit is optional (absent or null: unlimited)."""

    name: Text = Field(min_length=1, description="Who or what the key is for.")
    user: Text | None = Field(
        default=None,
        max_length=OWNER_MAX,
        description="A personal key of this user (email or id): the user's levels apply too.",
    )
    group: Text | None = Field(
        default=None,
        max_length=OWNER_MAX,
        description="A service key of this group (name or id): the group's levels apply too.",
    )


class KeyUpdate(_KeyFields):
    """Only the fields present change; null removes a limit. Setting budget_usd to null
    without budget_period removes the budget altogether. The owner does not change."""

    name: Text | None = Field(default=None, min_length=1)


class KeyOut(BaseModel):
    id: str = Field(examples=["key_3f9a0c2b7d1e4a56"])
    name: str
    prefix: str = Field(
        description="The key's first characters, to tell keys apart; not usable as a key.",
        examples=["sk-proxy-Ab3dE9"],
    )
    status: Literal["active", "expired", "revoked"]
    user_id: str | None = Field(description="The owner of a personal key.")
    group_id: str | None = Field(description="The owner of a service key.")
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    budget_usd: MoneyOut | None
    budget_period: Period | None
    spend_usd: MoneyOut | None = Field(description="Spend in spend_period.")
    spend_period: str | None = Field(
        description="The budget period counted now (`day:2026-11-27`, `week:2026-W48`, "
        "`month:2026-11`, `total`); `total` for a key without a budget."
    )
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class CreatedKey(KeyOut):
    key: str = Field(
        description="The secret. Shown in this response only: only its SHA-256 is stored.",
        examples=["sk-proxy-Ab3dE9..."],
    )


class KeyList(BaseModel):
    data: list[KeyOut]


def _key_fields(row: KeyRow) -> dict[str, Any]:
    fields = row.public()  # everything but the hash
    fields["spend_period"] = (
        current_period(row.budget_period or "total") if row.spend_usd is not None else None
    )
    return fields


def key_out(row: KeyRow) -> KeyOut:
    return KeyOut(**_key_fields(row))


def created_out(row: KeyRow, secret: str) -> CreatedKey:
    return CreatedKey(key=secret, **_key_fields(row))


def _key_not_found(key_id: str) -> ApiError:
    return not_found(f"no key with id {key_id!r}")


def _spec(fields: dict[str, Any]) -> KeySpec:
    if fields.get("models") is not None:
        fields["models"] = tuple(fields["models"])
    try:
        return KeySpec(**fields)
    except ValueError as exc:
        raise bad_request(str(exc)) from None


async def owner_ids(
    engine: Engine, user: str | None, group: str | None
) -> tuple[str | None, str | None]:
    """A user's and a group's ids from what an admin typed (email or id, name or id);
    a 400 naming the field when there is no such user or group."""
    if user is not None and group is not None:
        raise bad_request("a key belongs to a user or to a group, not both")
    user_id = group_id = None
    if user is not None:
        found_user = await db(get_user, engine, user)
        if found_user is None:
            raise bad_request(f"user: no user with id or email {user!r}")
        user_id = found_user.id
    if group is not None:
        found_group = await db(get_group, engine, group)
        if found_group is None:
            raise bad_request(f"group: no group with id or name {group!r}")
        group_id = found_group.id
    return user_id, group_id


def keys_router(engine: Engine, keys: KeyCache) -> APIRouter:
    router = APIRouter(responses=ERROR_RESPONSES, tags=["keys"])

    async def shown(row: KeyRow) -> KeyRow:
        return (await db(with_spend, engine, [row]))[0]

    async def changed(row: KeyRow) -> KeyRow:
        keys.apply(row)  # on the event loop, where the request path reads the cache
        return await shown(row)

    @router.post("/keys", status_code=201, response_model=CreatedKey)
    async def create(body: KeyCreate, who: Annotated[str, Depends(actor)]) -> CreatedKey:
        """Create a key (a user's or a group's with `user` or `group`). The response holds
        the secret in `key`, this once."""
        fields = body.model_dump(exclude={"user", "group"})
        spec = _spec(fields)
        user_id, group_id = await owner_ids(engine, body.user, body.group)
        # A ValueError: the owner went away or was disabled meanwhile.
        row, secret = await store_change(
            create_key, engine, spec, actor=who, user_id=user_id, group_id=group_id
        )
        return created_out(await changed(row), secret)

    @router.get("/keys", response_model=KeyList)
    async def list_(
        include_revoked: Annotated[bool, Query(description="Include revoked keys.")] = False,
        user: Annotated[
            Text | None,
            Query(max_length=OWNER_MAX, description="Only this user's keys (email or id)."),
        ] = None,
        group: Annotated[
            Text | None,
            Query(max_length=OWNER_MAX, description="Only this group's keys (name or id)."),
        ] = None,
    ) -> KeyList:
        """Keys (without revoked ones unless include_revoked), oldest first."""
        user_id, group_id = await owner_ids(engine, user, group)
        rows = await db(
            list_keys,
            engine,
            include_revoked=include_revoked,
            user_id=user_id,
            group_id=group_id,
        )
        rows = await db(with_spend, engine, rows)
        return KeyList(data=[key_out(r) for r in rows])

    @router.get("/keys/{key_id}", response_model=KeyOut)
    async def show(key_id: str) -> KeyOut:
        """One key, with its spend in the current budget period."""
        row = await db(get_key, engine, key_id)
        if row is None:
            raise _key_not_found(key_id)
        return key_out(await shown(row))

    @router.patch("/keys/{key_id}", response_model=KeyOut)
    async def update(key_id: str, body: KeyUpdate, who: Annotated[str, Depends(actor)]) -> KeyOut:
        """Change a key's name or limits: only the fields sent change; null removes a limit."""
        changes = changes_of(body)
        if "name" in changes and changes["name"] is None:
            raise bad_request("name: a key needs a name")
        drop_orphan_period(changes)  # null budget: no budget at all
        # KeySpec checks the new combination (a ValueError) before anything is written.
        row = await store_change(update_key, engine, key_id, actor=who, **changes)
        if row is None:
            raise _key_not_found(key_id)
        return key_out(await changed(row))

    async def _revoke(key_id: str, who: str) -> KeyOut:
        row = await db(revoke_key, engine, key_id, actor=who)
        if row is None:
            raise _key_not_found(key_id)
        return key_out(await changed(row))

    @router.post("/keys/{key_id}/revoke", response_model=KeyOut)
    async def revoke(key_id: str, who: Annotated[str, Depends(actor)]) -> KeyOut:
        """Revoke a key, at once and for good (revoking twice keeps the first time)."""
        return await _revoke(key_id, who)

    @router.delete("/keys/{key_id}", response_model=KeyOut)
    async def delete(key_id: str, who: Annotated[str, Depends(actor)]) -> KeyOut:
        """The same as POST .../revoke: the row stays, for the request log's sake."""
        return await _revoke(key_id, who)

    @router.post("/keys/{key_id}/rotate", response_model=CreatedKey)
    async def rotate(key_id: str, who: Annotated[str, Depends(actor)]) -> CreatedKey:
        """A new secret for the key (shown this once); the old one stops working at once.
        Limits, spend and history stay."""
        rotated = await db(rotate_key, engine, key_id, actor=who)
        if rotated is None:
            current = await db(get_key, engine, key_id)
            if current is None:
                raise _key_not_found(key_id)
            raise bad_request(f"key {key_id} is revoked: it cannot be rotated")
        row, secret = rotated
        return created_out(await changed(row), secret)

    return router
