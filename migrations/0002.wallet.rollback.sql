-- Rollback of 0002: back to balances and bare ledger entries. Transfers, idempotency keys and entry
-- descriptions go; every balance and every entry's amount stays.
DROP FUNCTION transfer_funds(bigint, bigint, bigint, text, text);

DROP TABLE idempotency_keys;

ALTER TABLE ledger_entries DROP COLUMN description, DROP COLUMN idempotency_key, DROP COLUMN transfer_id;

DROP TABLE transfers;
