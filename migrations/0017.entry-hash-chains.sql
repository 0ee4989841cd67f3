-- depends: 0016.api-keys-and-audit-log
--
-- Tamper-evident account histories (issue 25): every ledger entry carries a hash of its account's
-- previous entry's hash and its own content, and every account the hash of its last entry (its
-- head). The hash is defined once, by entry_hash() (server/ledger/sql/entry_hashes.sql):
--   SHA-256(previous hash, nothing for an account's first entry
--           || int8send(account_id) || int8send(transfer_id) || int8send(amount) || int8send(balance_after))
-- in the order of the account's entries' ids. The functions that write entries compute it under the
-- account's row lock they already hold; balance-api check recomputes every link.
--
-- Run balance-api migrate with the service stopped, or accept a moment of refused writes: from
-- this migration's commit until the folder is applied (the same command, right after), the
-- previous folder's functions write entries without a hash, which NOT NULL refuses (a 500 rather
-- than an entry no chain covers).
ALTER TABLE ledger_entries ADD COLUMN hash bytea;
ALTER TABLE accounts ADD COLUMN head_hash bytea;

-- The entries made before, chained per account in id order, as entry_hash() would have (written
-- out here: a migration defines no function, the folder's are applied after the migrations).
-- Written back 10,000 entries per statement, by primary key (account_id, id); the heads at the end.
DO $$
DECLARE
    r record;
    v_account bigint;
    v_hash bytea;
    e_accounts bigint[] := '{}';
    e_ids bigint[] := '{}';
    e_hashes bytea[] := '{}';
    h_accounts bigint[] := '{}';
    h_hashes bytea[] := '{}';
BEGIN
    FOR r IN SELECT e.id, e.account_id, e.transfer_id, e.amount, e.balance_after FROM ledger_entries e
              ORDER BY e.account_id, e.id
    LOOP
        IF r.account_id IS DISTINCT FROM v_account THEN
            v_account := r.account_id;
            v_hash := NULL;
            h_accounts := h_accounts || r.account_id;
            h_hashes := h_hashes || NULL::bytea;
        END IF;
        v_hash := sha256(coalesce(v_hash, '\x'::bytea) || int8send(r.account_id) || int8send(r.transfer_id)
                         || int8send(r.amount) || int8send(r.balance_after));
        h_hashes[cardinality(h_hashes)] := v_hash;
        e_accounts := e_accounts || r.account_id;
        e_ids := e_ids || r.id;
        e_hashes := e_hashes || v_hash;
        IF cardinality(e_ids) >= 10000 THEN
            UPDATE ledger_entries e SET hash = u.hash FROM unnest(e_accounts, e_ids, e_hashes) AS u (account_id, id, hash)
             WHERE e.account_id = u.account_id AND e.id = u.id;
            e_accounts := '{}';
            e_ids := '{}';
            e_hashes := '{}';
        END IF;
    END LOOP;
    UPDATE ledger_entries e SET hash = u.hash FROM unnest(e_accounts, e_ids, e_hashes) AS u (account_id, id, hash)
     WHERE e.account_id = u.account_id AND e.id = u.id;
    UPDATE accounts a SET head_hash = u.hash FROM unnest(h_accounts, h_hashes) AS u (id, hash) WHERE a.id = u.id;
END
$$;

ALTER TABLE ledger_entries ALTER COLUMN hash SET NOT NULL;
