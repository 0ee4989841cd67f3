-- Tamper-evident account histories (issue 25): each ledger entry's hash covers its account's
-- previous entry's hash and the entry's own content, so an entry edited, deleted or moved in an
-- account's history breaks every link from there on; accounts.head_hash is the hash of the
-- account's last entry (GET /api/accounts/{id} shows it as headHash: a client that keeps it can
-- later tell whether the history up to it was rewritten, even by someone who recomputed every hash).
--
-- Why it needs no new contention: an account's entries are written only under its row lock
-- (locking.sql, rules 1-2), in ascending id order, by the four statements that write entries
-- (apply_balance_changes(), transfer_funds(), resolve_pending_transfer(), apply_transfer_batch()'s
-- set-based path); each reads head_hash under the lock it already holds, chains its entries in id
-- order and stores the new head in the UPDATE that stores the new balance. System accounts have no
-- entries, so no chain: their balances stay in shards that nothing locks (system_balances.sql).
-- balance-api check recomputes every link and every head (server/ledger/check.py, "entry hashes").


-- The hash of an entry of account p_account_id in transfer p_transfer_id moving p_amount minor
-- units (signed) and leaving p_balance_after, after the account's entry whose hash is p_previous
-- (NULL: the account's first entry): SHA-256 (PostgreSQL docs §9.5, sha256()) of p_previous
-- followed by the four numbers as 8-byte big-endian integers (int8send). Immutable and a single
-- SQL expression, so the planner inlines it into the statements that call it (no SET lines: a
-- function with settings is never inlined).
CREATE OR REPLACE FUNCTION entry_hash(p_previous bytea, p_account_id bigint, p_transfer_id bigint, p_amount bigint,
                                      p_balance_after bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT sha256(coalesce(p_previous, '\x'::bytea) || int8send(p_account_id) || int8send(p_transfer_id)
                  || int8send(p_amount) || int8send(p_balance_after))
$$;
