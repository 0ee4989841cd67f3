"""Where the ledger's functions and views are defined (``server/ledger/sql/``), the digest that
says which version of that folder a database has, and the catalogue fingerprint that says whether
they are still as applied.

:func:`server.running.migrations.apply_definitions` applies the folder and stores both in the
``ledger_definitions`` row; ``balance-api check`` (:mod:`server.ledger.check`) compares them with
this installation's folder and with the catalogue as it is now.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# The current definition of every function and view, one file per concept (see its locking.sql).
DEFINITIONS_DIR = Path(__file__).parent / "sql"

# Every function and view of schema public with a SHA-256 of what defines it, one row each
# (key, value): a function by its signature, with its arguments as declared, result, language,
# volatility, strictness, security, parallel safety, cost, rows, settings and source; a view by
# its definition as the server prints it (pg_get_viewdef: the same text for the same definition on
# one server version).
CATALOGUE = """
SELECT 'function ' || p.oid::regprocedure::text AS key,
       encode(sha256(convert_to(concat_ws(E'\\x1f', pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
                                          l.lanname, p.provolatile, p.proisstrict, p.prosecdef, p.proparallel,
                                          p.procost, p.prorows, p.proconfig::text, p.prosrc), 'UTF8')), 'hex') AS value
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'public'::regnamespace
UNION ALL
SELECT 'view ' || c.oid::regclass::text, encode(sha256(convert_to(pg_get_viewdef(c.oid), 'UTF8')), 'hex')
  FROM pg_class c
 WHERE c.relkind IN ('v', 'm') AND c.relnamespace = 'public'::regnamespace
"""

# Whether the schema has the ledger_definitions table (migration 0012 on): before it, there is
# nothing to apply the folder to or to check it against.
HAS_DEFINITIONS_TABLE = "SELECT to_regclass('ledger_definitions') IS NOT NULL"


def read_definitions(definitions_dir: Path = DEFINITIONS_DIR) -> tuple[str, list[str]]:
    """The folder's ``*.sql`` files, read once, in name order: ``(digest, texts)``, the digest a
    SHA-256 (hex) of each file's name and bytes."""
    digest, texts = hashlib.sha256(), []
    for path in sorted(definitions_dir.glob("*.sql")):
        content = path.read_bytes()
        digest.update(path.name.encode() + b"\0" + content + b"\0")
        texts.append(content.decode())
    return digest.hexdigest(), texts


def definitions_digest(definitions_dir: Path = DEFINITIONS_DIR) -> str:
    """The digest of :func:`read_definitions`."""
    return read_definitions(definitions_dir)[0]
