-- One call for a batch that mixes balance changes with transfers: a worker's one batcher
-- (server/ledger/batching.py) sends its items, whatever their kind, in arrival order, in ONE call.
--
-- Item i is a balance change (PATCH /api/balance, a credit, a debit) when p_kinds[i] is one of the
-- entry kinds 'adjustment', 'credit', 'debit': the signed change p_amounts[i] (minor units) of
-- account p_from_accounts[i] (or user p_from_users[i]'s account in asset p_asset_ids[i]), with the
-- transfer code p_codes[i], the description and the Idempotency-Key its entry records; its other
-- fields are NULL. Any other item is an item of apply_transfer_batch(): 'transfer' (plain or a
-- hold), 'post', 'void' or 'refused'. The arrays are apply_transfer_batch()'s, without p_atomic
-- (p_created_by[i]: the API key that sends item i, which its transfer records; NULL: none).
--
-- What it does: the items in order, each accepted or refused on its own, as if applied one at a
-- time. It cuts the items into runs of one kind and applies each run, in order, with the function
-- of that kind: apply_balance_changes() for a run of changes, apply_transfer_batch() (not atomic)
-- for a run of transfers. So there is one definition of each operation; this function only
-- composes them. One row per item, in item order: apply_transfer_batch()'s columns (a change's
-- account in from_account_id, role and to_account_id NULL, transfer NULL), then a change's user_id,
-- balance_after and entry_id (NULL for a transfer item). A run of transfers returns its transfers
-- as they are after that run.
--
-- Why it is safe under concurrency (locking.sql, rules 1-4): before any run, every account the
-- batch names, of either kind, is locked in ascending id order (lock_transfer_batch_accounts());
-- the runs' own locking statements then find every row already locked by this transaction and
-- wait for nothing. Every run starts after the locks are held, and so reads the newest committed
-- balances, limits, statuses and holds, and what the runs before it wrote.
CREATE OR REPLACE FUNCTION apply_ledger_batch(
    p_kinds text[], p_from_accounts bigint[], p_from_users bigint[], p_to_accounts bigint[], p_to_users bigint[],
    p_asset_ids integer[], p_amounts bigint[], p_codes text[], p_descriptions text[], p_metadata jsonb[],
    p_pending boolean[], p_timeouts integer[], p_references text[], p_holds bigint[], p_idempotency_keys text[],
    p_created_by bigint[]
) RETURNS TABLE (item integer, outcome text, role text, transfer_id bigint, from_account_id bigint,
                 to_account_id bigint, transfer transfer_documents, user_id bigint, balance_after bigint,
                 entry_id bigint)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    n integer := coalesce(array_length(p_kinds, 1), 0);
    v_first integer := 1;  -- the run's first item
    v_last integer;        -- its last
    is_change boolean;   -- whether it is a run of balance changes
BEGIN
    PERFORM lock_transfer_batch_accounts(p_from_accounts, p_from_users, p_to_accounts, p_to_users, p_asset_ids,
                                         p_holds);
    WHILE v_first <= n LOOP
        is_change := p_kinds[v_first] IN ('adjustment', 'credit', 'debit');
        v_last := v_first;
        WHILE v_last < n AND (p_kinds[v_last + 1] IN ('adjustment', 'credit', 'debit')) = is_change LOOP
            v_last := v_last + 1;
        END LOOP;
        IF is_change THEN
            RETURN QUERY
            SELECT (v_first - 1 + c.i)::integer, c.outcome, NULL::text, c.transfer_id, c.account_id, NULL::bigint,
                   NULL::transfer_documents, c.user_id, c.balance_after, c.entry_id
              FROM apply_balance_changes(p_from_accounts[v_first:v_last], p_from_users[v_first:v_last],
                                         p_asset_ids[v_first:v_last], p_amounts[v_first:v_last], p_kinds[v_first:v_last],
                                         p_codes[v_first:v_last], p_descriptions[v_first:v_last],
                                         p_idempotency_keys[v_first:v_last], p_created_by[v_first:v_last])
                   WITH ORDINALITY AS c (account_id, user_id, balance_after, transfer_id, entry_id, outcome, i)
             ORDER BY c.i;
        ELSE
            RETURN QUERY
            SELECT v_first - 1 + b.item, b.outcome, b.role, b.transfer_id, b.from_account_id, b.to_account_id,
                   b.transfer, NULL::bigint, NULL::bigint, NULL::bigint
              FROM apply_transfer_batch(false, p_kinds[v_first:v_last], p_from_accounts[v_first:v_last],
                                        p_from_users[v_first:v_last], p_to_accounts[v_first:v_last], p_to_users[v_first:v_last],
                                        p_asset_ids[v_first:v_last], p_amounts[v_first:v_last], p_codes[v_first:v_last],
                                        p_descriptions[v_first:v_last], p_metadata[v_first:v_last], p_pending[v_first:v_last],
                                        p_timeouts[v_first:v_last], p_references[v_first:v_last], p_holds[v_first:v_last],
                                        p_idempotency_keys[v_first:v_last], p_created_by[v_first:v_last]) b
             ORDER BY b.item;
        END IF;
        v_first := v_last + 1;
    END LOOP;
END
$$;
