-- Indexes for reads whose cost must not grow with the ledger (issue 23), and one fewer on every
-- ledger entry.
-- depends: 0013.system-balances
--
-- ledger_entries: every read reaches entries by account, newest first ((account_id, id), the
-- keyset pagination of histories); none by id alone. So (account_id, id) becomes the primary key
-- and the index on id alone goes: about 40 bytes and two index insertions less per transfer. (On
-- Citus it is the key the plan wanted: it contains the distribution column.)
CREATE UNIQUE INDEX ledger_entries_account_id_id_key ON ledger_entries (account_id, id);
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_pkey;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_pkey PRIMARY KEY USING INDEX ledger_entries_account_id_id_key;
DROP INDEX ledger_entries_account_id_id;

-- A system account's transfers, newest first (its history and its transfer listing): it has no
-- entries. A side's stored balance is NULL exactly when that side is a system account or the
-- transfer is a hold not posted (balance-api check, "transfers balanced"), so these partial indexes
-- hold, by sending and by receiving account, the system's transfers (credits, debits, PATCH
-- /api/balance) and unposted holds only, not the transfers between two accounts: a system
-- account's page is one descent of each.
CREATE INDEX transfers_system_senders ON transfers (from_account_id, id) WHERE from_balance IS NULL;
CREATE INDEX transfers_system_receivers ON transfers (to_account_id, id) WHERE to_balance IS NULL;

-- Listings by code, newest first (GET /api/transfers?code=): one descent, not a walk back through
-- every newer transfer of other codes.
CREATE INDEX transfers_code_id ON transfers (code, id);

-- Listings in an old time window (from and to): the window's transfers by created_at, without
-- walking back from the newest transfer (server/ledger/transfer_reads.py). A B-tree, not BRIN: BRIN
-- returns every range not yet summarized (all that was written since the last autovacuum), so an
-- old window on a growing ledger read what came after it again. The transfers of one transaction
-- share created_at, so B-tree deduplication (PostgreSQL docs §67.4.3) stores a batch's under one key.
CREATE INDEX transfers_created_at ON transfers (created_at);
