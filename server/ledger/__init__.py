"""The ledger: the SQL that moves and reads money (its functions in sql/), batching, idempotency
keys, the invariants."""
