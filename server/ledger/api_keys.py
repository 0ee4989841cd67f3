"""Scoped API keys, as stored in PostgreSQL (migration 0016): made, listed, revoked, looked up.

A key's text is ``bak_`` and 43 base64url characters (32 random bytes, :func:`secrets.token_urlsafe`):
an RFC 6750 b64token. Only its SHA-256 is stored (``digest``, unique) with its last four characters
(``hint``, to tell keys apart in a list): a copy of the database gives no usable key, and a
look-up by digest takes the same path for every wrong key (a B-tree descent to no row), whatever
it shares with a real one. The text is returned once, by :func:`create_key`.

Every make and revoke writes its audit row in the same statement (server/ledger/sql/audit.sql).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets
from collections.abc import Iterable

from server.ledger.records import Actor, Db
from server.problems import ApiKeyNotFound

# What a key may do (docs/api.md, "API keys and scopes"): read = every GET except the feed
# (events), keys and the audit log; the others as named.
SCOPES = ("read", "transfers", "accounts", "assets", "webhooks", "events", "keys", "audit")
KEY_PREFIX = "bak_"
# Scopes over the whole service, never given to a key limited to assets (an asset, a webhook
# endpoint, a key or the audit log is not one asset's).
GLOBAL_SCOPES = ("assets", "webhooks", "keys", "audit")

_COLUMNS = """k.id, k.name, k.hint, k.scopes, k.expires_at, k.created_at, k.revoked_at, k.asset_ids,
       (SELECT array_agg(s.code ORDER BY s.code) FROM assets s WHERE s.id = ANY (k.asset_ids)) AS assets"""
# The key document the audit log keeps (no digest): the row with its assets' codes.
_DOCUMENT = """to_jsonb(k) - 'digest' || jsonb_build_object(
    'assets', (SELECT to_jsonb(array_agg(s.code ORDER BY s.code)) FROM assets s WHERE s.id = ANY (k.asset_ids)))"""
# $1 name, $2 digest, $3 hint, $4 scopes, $5 asset ids (NULL: every asset), $6 seconds to expiry
# (NULL: never), then the actor ($7-$9).
CREATE = f"""
WITH made AS (
    INSERT INTO api_keys AS k (name, digest, hint, scopes, asset_ids, expires_at)
    VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 second')
    RETURNING k
)
SELECT {_COLUMNS}, record_audit(NULL, $7, $8, $9, 'key.created', 'key:' || k.id, NULL, {_DOCUMENT}) AS audit_id
  FROM made m, LATERAL (SELECT (m.k).*) k
"""
LIST = f"SELECT {_COLUMNS} FROM api_keys k ORDER BY k.id"
READ = f"SELECT {_COLUMNS} FROM api_keys k WHERE k.id = $1"
# Revoked under the key's row lock (the UPDATE's), so two revokes log one change. A key already
# revoked is left as it is (no row: the caller tells "unknown" from "already revoked").
REVOKE = f"""
WITH revoked AS (
    UPDATE api_keys k SET revoked_at = now() WHERE k.id = $1 AND k.revoked_at IS NULL
    RETURNING k
)
SELECT record_audit(NULL, $2, $3, $4, 'key.revoked', 'key:' || k.id,
                    ({_DOCUMENT}) || jsonb_build_object('revoked_at', NULL), {_DOCUMENT})
  FROM revoked r, LATERAL (SELECT (r.k).*) k
"""
# Whether key row k can no longer be used: revoked, or expired as of this statement. The one
# definition of it, in every statement that checks a key.
KEY_REFUSED = "(k.revoked_at IS NOT NULL OR coalesce(k.expires_at <= statement_timestamp(), false))"
# The keys (of these digests) that are valid now: not revoked, not expired. Run per request (in
# batches, server/http/key_lookups.py), so a revoke or an expiry counts from its commit on.
VALID_KEYS = f"""
SELECT k.digest, k.id, k.name, k.scopes, k.asset_ids,
       (SELECT array_agg(s.code) FROM assets s WHERE s.id = ANY (k.asset_ids)) AS assets
  FROM api_keys k
 WHERE k.digest = ANY ($1) AND NOT {KEY_REFUSED}
"""
# The configured tokens as keys ($1 digests, $2 names, $3 hints, $4 every scope): made when first
# seen (audited), their scopes kept at every scope; a revoked one stays revoked.
ENSURE_CONFIGURED = """
WITH given AS (SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[]) AS g (digest, name, hint)),
made AS (
    INSERT INTO api_keys AS k (name, digest, hint, scopes, configured)
    SELECT g.name, g.digest, g.hint, $4, true FROM given g
    ON CONFLICT (digest) DO UPDATE SET scopes = excluded.scopes WHERE k.configured AND k.scopes <> excluded.scopes
    RETURNING k.*, k.xmax = 0 AS inserted
)
SELECT count(record_audit(NULL, $5, $6, NULL, 'key.created', 'key:' || m.id, NULL,
                          to_jsonb(m) - 'digest' - 'inserted'))
  FROM made m WHERE m.inserted
"""
# Of the keys $1, those revoked or expired as of this statement (the batcher's check of the
# balance changes it admitted on a remembered grant, server/ledger/batching.py).
REFUSED_KEYS = f"""
SELECT k.id FROM api_keys k WHERE k.id = ANY ($1) AND {KEY_REFUSED}
"""
ASSET_IDS = "SELECT array_agg(id ORDER BY id) FROM assets WHERE code = ANY ($1)"
ASSET_CODES = "SELECT array_agg(code ORDER BY code) FROM assets WHERE id = ANY ($1)"


def key_digest(text: str | bytes) -> bytes:
    """The SHA-256 (32 bytes) a key's text is stored as."""
    return hashlib.sha256(text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")).digest()


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as listed: never its text (``key`` is set only in :func:`create_key`'s result).
    ``assets`` None: every asset; ``expires_at`` None: never."""

    key_id: int
    name: str
    hint: str
    scopes: list[str]
    assets: list[str] | None
    asset_ids: list[int] | None
    expires_at: dt.datetime | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    key: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """What a request's credentials may do: ``scopes`` (a set of :data:`SCOPES`), ``asset_ids`` /
    ``assets`` (None: every asset) and who it is (:class:`Actor`)."""

    actor: Actor
    scopes: frozenset[str]
    asset_ids: frozenset[int] | None = None
    assets: frozenset[str] | None = None


def _key(row) -> ApiKey:
    asset_ids = row["asset_ids"]
    return ApiKey(row["id"], row["name"], row["hint"], list(row["scopes"]),
                  None if asset_ids is None else list(row["assets"] or []), asset_ids,
                  row["expires_at"], row["created_at"], row["revoked_at"])


async def create_key(db: Db, name: str, scopes: list[str], asset_ids: list[int] | None,
                     expires_in_seconds: int | None, actor: Actor) -> ApiKey:
    """Make a key named ``name`` with ``scopes`` (each one of :data:`SCOPES`), limited to the assets
    ``asset_ids`` (None: every asset), expiring ``expires_in_seconds`` from now (None: never). The
    result's ``key`` is the text, the only time it is given out."""
    text = KEY_PREFIX + secrets.token_urlsafe(32)
    row = await db.fetchrow(CREATE, name, key_digest(text), text[-4:], sorted(set(scopes), key=SCOPES.index),
                            asset_ids, expires_in_seconds, *actor.parameters())
    return dataclasses.replace(_key(row), key=text)


async def list_keys(db: Db) -> list[ApiKey]:
    """Every key ever made, revoked ones too (with ``revoked_at``), oldest first."""
    return [_key(row) for row in await db.fetch(LIST)]


async def read_key(db: Db, key_id: int) -> ApiKey:
    """Key ``key_id``; raises :class:`ApiKeyNotFound` (404)."""
    row = await db.fetchrow(READ, key_id)
    if row is None:
        raise ApiKeyNotFound(key_id)
    return _key(row)


async def revoke_key(db: Db, key_id: int, actor: Actor) -> ApiKey:
    """Revoke key ``key_id`` from this statement's commit on (every worker looks keys up per request);
    revoking a revoked key changes nothing. Raises :class:`ApiKeyNotFound`."""
    await db.fetchval(REVOKE, key_id, *actor.parameters())
    return await read_key(db, key_id)


async def valid_grants(db: Db, digests: list[bytes]) -> dict[bytes, Grant]:
    """The grants of the keys among ``digests`` (see :func:`key_digest`) that are valid now, by
    digest; one statement, a look-up by the unique index per digest."""
    return {row["digest"]: Grant(Actor(row["id"], row["name"]), frozenset(row["scopes"]),
                                 None if row["asset_ids"] is None else frozenset(row["asset_ids"]),
                                 None if row["asset_ids"] is None else frozenset(row["assets"] or []))
            for row in await db.fetch(VALID_KEYS, digests)}


async def ensure_configured_tokens(db: Db, tokens: list[tuple[str, bytes]], actor: Actor) -> int:
    """Make a key row for each configured token (``(name, token bytes)``) not stored yet, with every
    scope; returns how many were made. Safe to run by several workers at once (ON CONFLICT)."""
    if not tokens:
        return 0
    return await db.fetchval(ENSURE_CONFIGURED, [key_digest(token) for _, token in tokens],
                             [name for name, _ in tokens], [token.decode()[-4:] for _, token in tokens],
                             list(SCOPES), actor.key_id, actor.name)


async def refused_keys(db: Db, key_ids: Iterable[int]) -> set[int]:
    """Those of ``key_ids`` that are revoked or expired now (one look-up by primary key each)."""
    return {row["id"] for row in await db.fetch(REFUSED_KEYS, list(key_ids))}


async def asset_ids_of(db: Db, codes: list[str]) -> list[int]:
    """The ids of the assets ``codes``, in id order (unknown codes are left out)."""
    return list(await db.fetchval(ASSET_IDS, codes) or [])


async def asset_codes_of(db: Db, asset_ids: list[int]) -> list[str]:
    """The codes of the assets ``asset_ids``, in code order (unknown ids are left out)."""
    return list(await db.fetchval(ASSET_CODES, asset_ids) or [])
