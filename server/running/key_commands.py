"""``balance-api keys create|list|revoke``: API keys (server/ledger/api_keys.py) from the command
line, on the configured (or embedded) database, audited as made by the command line."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import sys

import asyncpg

from server.ledger import api_keys
from server.ledger.records import COMMAND_LINE
from server.problems import ApiKeyNotFound
from server.running.config import Settings

_DURATION = re.compile(r"([1-9][0-9]{0,6})([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> int:
    """``90d``, ``12h``, ``30m`` or ``45s`` as seconds; raises ``argparse.ArgumentTypeError``."""
    found = _DURATION.fullmatch(text)
    if found is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90d, 12h, 30m or 45s")
    return int(found[1]) * _UNIT_SECONDS[found[2]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``keys`` command's own sub-commands and options."""
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key and print it (once: only its digest is stored)")
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", required=True, type=lambda text: text.split(","),
                        help=f"comma-separated, of: {', '.join(api_keys.SCOPES)}")
    create.add_argument("--asset", action="append", dest="assets", metavar="CODE",
                        help="limit the key to this asset's accounts (repeat for several; default: every asset)")
    create.add_argument("--expires-in", type=duration_seconds, metavar="DURATION", help="e.g. 90d (default: never)")
    actions.add_parser("list", help="print every key as JSON lines (never a key's text)")
    revoke = actions.add_parser("revoke", help="revoke a key: refused from the commit on, everywhere")
    revoke.add_argument("key_id", type=int, metavar="ID")


def _printable(key: api_keys.ApiKey) -> dict:
    def moment(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {"keyId": key.key_id, "name": key.name, "hint": key.hint, "scopes": key.scopes, "assets": key.assets,
            "expiresAt": moment(key.expires_at), "createdAt": moment(key.created_at),
            "revokedAt": moment(key.revoked_at)}


async def _run(url: str, args: argparse.Namespace) -> int:
    conn = await asyncpg.connect(url)
    try:
        if args.action == "create":
            if unknown := [scope for scope in args.scopes if scope not in api_keys.SCOPES]:
                print(f"balance-api keys: unknown scope {unknown[0]!r}; scopes are {', '.join(api_keys.SCOPES)}",
                      file=sys.stderr)
                return 2
            if args.assets and (found := [s for s in args.scopes if s in api_keys.GLOBAL_SCOPES]):
                print(f"balance-api keys: a key limited to assets cannot have the scope {found[0]!r}", file=sys.stderr)
                return 2
            asset_ids = None
            if args.assets:
                asset_ids = await api_keys.asset_ids_of(conn, args.assets)
                if len(asset_ids) < len(set(args.assets)):
                    print(f"balance-api keys: unknown asset among {', '.join(args.assets)}", file=sys.stderr)
                    return 2
            made = await api_keys.create_key(conn, args.name, args.scopes, asset_ids, args.expires_in, COMMAND_LINE)
            print(json.dumps({**_printable(made), "key": made.key}))
        elif args.action == "list":
            for key in await api_keys.list_keys(conn):
                print(json.dumps(_printable(key)))
        else:
            print(json.dumps(_printable(await api_keys.revoke_key(conn, args.key_id, COMMAND_LINE))))
        return 0
    except ApiKeyNotFound as missing:
        print(f"balance-api keys: {missing.detail}", file=sys.stderr)
        return 1
    finally:
        await conn.close()


def keys(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``balance-api keys ACTION``; exit 0, 1 (no such key) or 2 (bad arguments)."""
    from server.running.embedded_postgres import database_url

    with database_url(settings) as url:
        return asyncio.run(_run(url, args))
