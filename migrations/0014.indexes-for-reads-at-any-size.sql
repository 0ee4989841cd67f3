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
-- entries, and a transfer names it without a stored flag. A side's stored balance is NULL exactly
-- when that side is a system account or the transfer is a hold not posted (balance-api check,
-- "transfers balanced"), so this partial index holds those transfers only: the system's
-- (credits, debits, PATCH /api/balance) and unposted holds, not transfers between two accounts.
CREATE INDEX transfers_of_system_accounts ON transfers (id) WHERE from_balance IS NULL OR to_balance IS NULL;

-- Listings by code, newest first (GET /api/transfers?code=): one descent, not a walk back through
-- every newer transfer of other codes.
CREATE INDEX transfers_code_id ON transfers (code, id);

-- Listings in an old time window (from and to): created_at follows the order rows are written in,
-- so a BRIN index (a few pages for millions of rows, PostgreSQL docs §71; a range of 32 pages, about
-- 2,000 transfers) finds the window's pages without walking back from the newest transfer
-- (server/ledger/transfer_reads.py); autosummarize keeps it current as the table grows.
CREATE INDEX transfers_created_at ON transfers USING brin (created_at) WITH (pages_per_range = 32, autosummarize = on);
