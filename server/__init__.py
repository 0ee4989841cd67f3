"""balance-api: account balances in PostgreSQL, changed atomically, with a ledger."""
