DROP INDEX transfers_created_at;
DROP INDEX transfers_code_id;
DROP INDEX transfers_system_receivers;
DROP INDEX transfers_system_senders;
CREATE INDEX ledger_entries_account_id_id ON ledger_entries (account_id, id);
CREATE UNIQUE INDEX ledger_entries_id_key ON ledger_entries (id);
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_pkey;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_pkey PRIMARY KEY USING INDEX ledger_entries_id_key;
