-- What is lost: the entries' hashes and the accounts' heads (recomputed from the entries when
-- migrated again: nothing else depends on them).
ALTER TABLE ledger_entries DROP COLUMN hash;
ALTER TABLE accounts DROP COLUMN head_hash;
