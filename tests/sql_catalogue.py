"""What the database's catalogue says the ledger's functions and views are, to compare two databases.

A function is its signature (``regprocedure``), its arguments as declared (names, modes, defaults),
its result type, language, volatility, strictness, security, parallel safety, cost and rows, its
settings (``proconfig``, in order) and its source (``prosrc``, byte for byte, comments included).
A view is its definition as PostgreSQL prints it (``pg_get_viewdef``), which is the same for the
same definition on the same server version.
"""

from __future__ import annotations

import psycopg

FUNCTIONS = """
SELECT p.oid::regprocedure::text, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
       l.lanname, p.provolatile, p.proisstrict, p.prosecdef, p.proparallel, p.procost, p.prorows,
       p.proretset, p.proconfig, p.prosrc
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'public'::regnamespace
"""
VIEWS = """
SELECT c.relname, pg_get_viewdef(c.oid)
  FROM pg_class c WHERE c.relkind IN ('v', 'm') AND c.relnamespace = 'public'::regnamespace
"""
FIELDS = ("arguments", "result", "language", "volatility", "strict", "security_definer", "parallel", "cost",
          "rows", "returns_set", "settings", "source")


def ledger_catalogue(conn: psycopg.Connection) -> dict[str, dict]:
    """``{"functions": {signature: {field: value}}, "views": {name: definition}}`` of schema public."""
    functions = {row[0]: dict(zip(FIELDS, row[1:])) for row in conn.execute(FUNCTIONS)}
    views = dict(conn.execute(VIEWS).fetchall())
    return {"functions": functions, "views": views}
