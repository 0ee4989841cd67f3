-- Rollback of 0001: an empty database again.
DROP TABLE ledger_entries;

DROP TABLE users;
