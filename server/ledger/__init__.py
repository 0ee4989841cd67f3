"""The ledger: the SQL that moves and reads money, batching, idempotency keys, the invariants."""
