"""The ledger: the SQL that moves and reads money, batching, idempotency keys, the invariants."""

from pathlib import Path

# The current definition of every function and view, one file per concept (see its locking.sql).
DEFINITIONS_DIR = Path(__file__).parent / "sql"
