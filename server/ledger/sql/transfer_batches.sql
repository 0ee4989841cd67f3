-- Transfer batches: the items of POST /api/transfers/batch in order, in the caller's transaction,
-- in ONE call (one round trip, whatever the number of items). Item i is p_kinds[i]:
--   'transfer': transfer_funds() with the i-th element of each transfer array (a hold when p_pending[i]);
--   'post' / 'void': resolve_pending_transfer(p_holds[i], ..., p_amounts[i]) (NULL amount: all of it);
--   'refused': refused before reaching the database (e.g. an unknown asset): not run.
-- With p_atomic the batch stops after the first item that is neither made nor found by its
-- reference, and the caller rolls the whole transaction back: all or nothing (TigerBeetle's linked
-- events). Without it a refused item has written nothing and the others go on.
--
-- Why it is safe under concurrency (locking.sql, rules 1-4): before its first item, a batch locks
-- every account any item names, in ascending id order (lock_transfer_batch_accounts()), whichever
-- path follows; every later statement starts after the locks are held, and so reads the newest
-- committed balances, limits, statuses and holds, and nothing else can change them before the
-- commit. Each item so sees exactly the effects of the items before it and of what committed
-- before the batch took its locks.


-- The definition of what a batch does: the items one at a time, in order; one row per item run:
-- (item, outcome, role, transfer_id, from_account_id, to_account_id), outcome as the function it
-- called returns it ('transferred', 'reference_exists', 'posted', 'voided' or a refusal's code);
-- for a post or void transfer_id is the hold's id. A transfer's entries record
-- p_idempotency_keys[i] (the key of the request that made it, or NULL), the transfer p_created_by[i]
-- (the API key that sent it, or NULL). Expects the caller to hold
-- the batch's locks already (lock_transfer_batch_accounts()).
CREATE OR REPLACE FUNCTION apply_transfer_batch_in_order(
    p_atomic boolean, p_kinds text[], p_from_accounts bigint[], p_from_users bigint[], p_to_accounts bigint[],
    p_to_users bigint[], p_asset_ids integer[], p_amounts bigint[], p_codes text[], p_descriptions text[],
    p_metadata jsonb[], p_pending boolean[], p_timeouts integer[], p_references text[], p_holds bigint[],
    p_idempotency_keys text[], p_created_by bigint[]
) RETURNS TABLE (item integer, outcome text, role text, transfer_id bigint, from_account_id bigint,
                 to_account_id bigint)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_kinds, 1), 0) LOOP
        item := i;
        role := NULL;
        transfer_id := NULL;
        from_account_id := NULL;
        to_account_id := NULL;
        IF p_kinds[i] = 'refused' THEN
            outcome := 'refused';
        ELSIF p_kinds[i] = 'transfer' THEN
            SELECT f.outcome, f.role, f.transfer_id, f.from_account_id, f.to_account_id
              INTO outcome, role, transfer_id, from_account_id, to_account_id
              FROM transfer_funds(p_from_accounts[i], p_from_users[i], p_to_accounts[i], p_to_users[i], p_asset_ids[i],
                                  p_amounts[i], p_codes[i], p_descriptions[i], p_metadata[i], p_idempotency_keys[i],
                                  p_pending[i], p_timeouts[i], p_references[i], p_created_by[i]) f;
        ELSE
            SELECT r.outcome, r.role INTO outcome, role
              FROM resolve_pending_transfer(p_holds[i], p_kinds[i] = 'post', p_amounts[i]) r;
            transfer_id := p_holds[i];
        END IF;
        RETURN NEXT;
        IF p_atomic AND outcome NOT IN ('transferred', 'reference_exists', 'posted', 'voided') THEN
            RETURN;  -- the caller rolls everything back
        END IF;
    END LOOP;
END
$$;


-- A batch as one call: the locks, then either the set-based path or the in-order loop above, and
-- with each item the transfer it made, found or resolved as transfer_documents shows it after the
-- batch. The set-based path is taken for a batch of plain transfers that all pass, checked over
-- arrays with the checks of transfer_funds() (both accounts exist and are open, of one asset, not
-- the same; the sender's running balance minus its pending debits at or above -overdraft_limit;
-- the receiver's plus its pending credits at or below max_balance and 2^63-1). If every item
-- passes, applying them one at a time in order would accept every one and reach exactly these
-- running balances, so the result is the one the in-order function gives; if one fails, that
-- function decides, item by item. The arithmetic is in numeric, so a check cannot overflow. The
-- check is one statement with one sort: the legs by account, item and side (the running balances'
-- window), an order its aggregate keeps for the legs' arrays.
-- Then the entries' hashes, chained per account in one pass over those legs (entry_hashes.sql),
-- which also gives each item's balances after, and four writes: the transfers
-- (ids taken in item order, each with both sides' balances after), their events (events.sql), the
-- non-system accounts' entries (in item order, so entry ids follow the balance_after and hash
-- chains), the accounts' new balances and heads (one UPDATE per account: its last leg's). The result
-- statement is a look-up per item (a join by filter over `transfers` was a seq scan per batch).
CREATE OR REPLACE FUNCTION apply_transfer_batch(
    p_atomic boolean, p_kinds text[], p_from_accounts bigint[], p_from_users bigint[], p_to_accounts bigint[],
    p_to_users bigint[], p_asset_ids integer[], p_amounts bigint[], p_codes text[], p_descriptions text[],
    p_metadata jsonb[], p_pending boolean[], p_timeouts integer[], p_references text[], p_holds bigint[],
    p_idempotency_keys text[], p_created_by bigint[]
) RETURNS TABLE (item integer, outcome text, role text, transfer_id bigint, from_account_id bigint,
                 to_account_id bigint, transfer transfer_documents)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET max_parallel_workers_per_gather = 0  -- the legs' arrays are aggregated in their subquery's order
AS $$
DECLARE
    n integer := coalesce(array_length(p_kinds, 1), 0);
    transfer_ids regclass := pg_get_serial_sequence('transfers', 'id');
    v_from bigint[];
    v_to bigint[];
    v_from_after bigint[];   -- each item's sides' balances after (accepted batches only)
    v_to_after bigint[];
    v_ids bigint[];
    v_all_accepted boolean;
    r_outcomes text[];
    r_roles text[];
    v_after bigint;          -- the largest feed_position of the accounts the batch changes
    v_position bigint;
    -- the legs that write entries (non-system sides), by account, then item, then side: each one's
    -- account, amount, balance after (numeric, as checked: a refused batch may exceed bigint), item,
    -- side (0 the sender), its account's head before the batch, its item's description and
    -- Idempotency-Key (carried, not subscripted: a subscript of a text[] walks it from the start);
    -- then the hash of its entry (entry_hashes.sql)
    l_account bigint[];
    l_amount numeric[];
    l_after numeric[];
    l_item bigint[];
    l_side integer[];
    l_head bytea[];
    l_description text[];
    l_idempotency_key text[];
    l_hash bytea[];
    v_account bigint;
    v_balance bigint;
    v_hash bytea;
BEGIN
    PERFORM lock_transfer_batch_accounts(p_from_accounts, p_from_users, p_to_accounts, p_to_users, p_asset_ids,
                                         p_holds);
    IF n >= 6 AND NOT EXISTS (SELECT 1 FROM unnest(p_kinds, p_pending, p_references) AS x (kind, pending, reference)
                              WHERE x.kind <> 'transfer' OR x.pending OR x.reference IS NOT NULL) THEN
        -- each side's account id (NULL: no such account; the in-order function names the refusal)
        SELECT array_agg(coalesce(x.from_account, fu.id) ORDER BY x.i), array_agg(coalesce(x.to_account, tu.id) ORDER BY x.i)
          INTO v_from, v_to
          FROM unnest(p_from_accounts, p_from_users, p_to_accounts, p_to_users, p_asset_ids) WITH ORDINALITY
               AS x (from_account, from_user, to_account, to_user, asset_id, i)
          LEFT JOIN accounts fu ON x.from_account IS NULL AND fu.user_id = x.from_user AND fu.asset_id = x.asset_id
          LEFT JOIN accounts tu ON x.to_account IS NULL AND tu.user_id = x.to_user AND tu.asset_id = x.asset_id;

        WITH leg AS (  -- each item's two legs, side 0 the sender (-amount), side 1 the receiver (+amount),
                       -- each with its account as read under the batch's locks (NULL: no such
                       -- account) and whether its item names two accounts, of one asset
            SELECT x.i, s.*, x.description, x.idempotency_key,
                   coalesce(f.id <> t.id AND f.asset_id = t.asset_id, false) AS distinct_accounts_of_one_asset
              FROM unnest(v_from, v_to, p_amounts, p_descriptions, p_idempotency_keys) WITH ORDINALITY
                   AS x (from_id, to_id, amount, description, idempotency_key, i)
              LEFT JOIN accounts f ON f.id = x.from_id
              LEFT JOIN accounts t ON t.id = x.to_id
             CROSS JOIN LATERAL (
                   VALUES (0, x.from_id, -x.amount::numeric, f.balance, f.is_system, f.status, f.overdraft_limit,
                           f.max_balance, f.feed_position, f.head_hash,
                           CASE WHEN f.pending_debits > 0
                                THEN f.pending_debits - (SELECT e.debits FROM expired_holds(f.id) e) ELSE 0 END),
                          (1, x.to_id, x.amount::numeric, t.balance, t.is_system, t.status, t.overdraft_limit,
                           t.max_balance, t.feed_position, t.head_hash,
                           CASE WHEN t.pending_credits > 0
                                THEN t.pending_credits - (SELECT e.credits FROM expired_holds(t.id) e) ELSE 0 END))
                   AS s (side, account_id, delta, balance, is_system, status, overdraft_limit, max_balance,
                         feed_position, head_hash, held)
        ), running AS (  -- each leg's running balance, as if every item were accepted, in the order of
                         -- the window's sort (account, item, side), which the aggregate below keeps
            SELECT l.*, l.balance + sum(l.delta) OVER (PARTITION BY l.account_id ORDER BY l.i, l.side
                                                       ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS after
              FROM leg l
        ), checked AS (  -- transfer_funds()'s checks of each side (NULL: no account: not passed)
            SELECT r.*, r.distinct_accounts_of_one_asset AND coalesce(r.status = 'open' AND (r.is_system OR CASE
                       WHEN r.side = 0 THEN r.after - r.held >= -r.overdraft_limit
                       ELSE r.after + r.held <= coalesce(r.max_balance, 9223372036854775807)
                                AND r.after + r.held <= 9223372036854775807 END), false) AS passes
              FROM running r
             ORDER BY r.account_id, r.i, r.side  -- the window's order: no second sort
        )
        -- one pass over the legs (PostgreSQL docs §4.2.7: aggregated in the order of the sorted
        -- subquery, one process, no parallel worker, see the function's SET): whether every item
        -- passes, the largest feed_position, and the legs that write entries (non-system sides)
        SELECT coalesce(bool_and(r.passes), false), max(r.feed_position) FILTER (WHERE NOT r.is_system),
               array_agg(r.account_id) FILTER (WHERE NOT r.is_system),
               array_agg(r.delta) FILTER (WHERE NOT r.is_system), array_agg(r.after) FILTER (WHERE NOT r.is_system),
               array_agg(r.i) FILTER (WHERE NOT r.is_system), array_agg(r.side) FILTER (WHERE NOT r.is_system),
               array_agg(r.head_hash) FILTER (WHERE NOT r.is_system),
               array_agg(r.description) FILTER (WHERE NOT r.is_system),
               array_agg(r.idempotency_key) FILTER (WHERE NOT r.is_system)
          INTO v_all_accepted, v_after, l_account, l_amount, l_after, l_item, l_side, l_head, l_description,
               l_idempotency_key
          FROM checked r;

        IF v_all_accepted THEN
            v_ids := ARRAY(SELECT nextval(transfer_ids) FROM generate_series(1, n));  -- ascending in item order
            -- the events' position (events.sql), from the accounts' feed_position read above, under the
            -- batch's locks
            v_position := feed_position_after(v_after);
            -- each entry's hash, chained per account in item order (the order of its entries' ids) from
            -- its head before the batch, in one pass over the legs (sorted by account above); an
            -- account's last leg gives its new balance and head; each item's sides' balances after
            -- (NULL for a system account's side) are its legs'
            l_hash := array_fill(NULL::bytea, ARRAY[cardinality(l_account)]);
            v_from_after := array_fill(NULL::bigint, ARRAY[n]);
            v_to_after := array_fill(NULL::bigint, ARRAY[n]);
            FOR j IN 1 .. cardinality(l_account) LOOP
                v_balance := l_after[j];
                v_hash := entry_hash(CASE WHEN l_account[j] IS DISTINCT FROM v_account THEN l_head[j] ELSE v_hash END,
                                     l_account[j], v_ids[l_item[j]], l_amount[j]::bigint, v_balance);
                v_account := l_account[j];
                l_hash[j] := v_hash;
                IF l_side[j] = 0 THEN
                    v_from_after[l_item[j]] := v_balance;
                ELSE
                    v_to_after[l_item[j]] := v_balance;
                END IF;
            END LOOP;
            WITH transfer AS (
                INSERT INTO transfers (id, asset_id, from_account_id, to_account_id, amount, code, description,
                                       metadata, from_balance, to_balance, created_by)
                OVERRIDING SYSTEM VALUE
                SELECT x.id, src.asset_id, x.from_id, x.to_id, x.amount, x.code, x.description, x.metadata,
                       x.from_after, x.to_after, x.created_by
                  FROM unnest(v_ids, v_from, v_to, p_amounts, p_codes, p_descriptions, p_metadata, v_from_after,
                              v_to_after, p_created_by)
                       AS x (id, from_id, to_id, amount, code, description, metadata, from_after, to_after, created_by)
                  JOIN accounts src ON src.id = x.from_id
                RETURNING id, asset_id
            ), event AS (  -- one row per asset, its transfers in item order (the ids are; events.sql)
                INSERT INTO events (position, type, asset_id, transfer_ids)
                SELECT v_position, 'transfer.created', t.asset_id, array_agg(t.id ORDER BY t.id)
                  FROM transfer t GROUP BY t.asset_id
            ), balance AS (
                UPDATE accounts a SET balance = u.balance::bigint, head_hash = u.hash, updated_at = now(),
                                      feed_position = v_position
                  FROM unnest(l_account, l_after, l_hash) WITH ORDINALITY AS u (id, balance, hash, j)
                 WHERE a.id = u.id AND l_account[u.j + 1] IS DISTINCT FROM u.id  -- the account's last leg
            )
            INSERT INTO ledger_entries (account_id, transfer_id, amount, balance_after, kind, description,
                                        idempotency_key, hash)
            SELECT l.account_id, v_ids[l.i], l.amount::bigint, l.balance_after::bigint,
                   CASE WHEN l.side = 0 THEN 'transfer_out' ELSE 'transfer_in' END, l.description,
                   l.idempotency_key, l.hash
              FROM unnest(l_account, l_amount, l_after, l_item, l_side, l_hash, l_description, l_idempotency_key)
                   AS l (account_id, amount, balance_after, i, side, hash, description, idempotency_key)
             ORDER BY l.i, l.side;
            -- what moved into or out of system accounts, after the account locks; waits for nothing
            PERFORM add_to_system_balances(array_agg(s.asset_id),
                                           array_agg(CASE WHEN s.id = x.to_id THEN x.amount ELSE -x.amount END))
               FROM unnest(v_from, v_to, p_amounts) AS x (from_id, to_id, amount)
               -- the system accounts read once (an asset has one, accounts_one_system_account_per_asset),
               -- not one look-up per item
               JOIN (SELECT a.id, a.asset_id FROM accounts a WHERE a.is_system OFFSET 0) s
                 ON s.id IN (x.from_id, x.to_id);
            r_outcomes := array_fill('transferred'::text, ARRAY[n]);
            r_roles := array_fill(NULL::text, ARRAY[n]);
        END IF;
    END IF;
    IF NOT coalesce(v_all_accepted, false) THEN
        SELECT array_agg(b.outcome ORDER BY b.item), array_agg(b.role ORDER BY b.item),
               array_agg(b.transfer_id ORDER BY b.item), array_agg(b.from_account_id ORDER BY b.item),
               array_agg(b.to_account_id ORDER BY b.item)
          INTO r_outcomes, r_roles, v_ids, v_from, v_to
          FROM apply_transfer_batch_in_order(
                   p_atomic, p_kinds, p_from_accounts, p_from_users, p_to_accounts, p_to_users, p_asset_ids, p_amounts,
                   p_codes, p_descriptions, p_metadata, p_pending, p_timeouts, p_references, p_holds,
                   p_idempotency_keys, p_created_by) b;
    END IF;
    -- a statement of its own, so that it sees what the batch wrote
    -- each item's transfer as a look-up by primary key of its own (a scalar subquery): joined to
    -- the arrays, the planner may read the whole view once and filter it by id (issue 27)
    RETURN QUERY
    SELECT x.i::integer, x.outcome, x.role, x.id, x.from_id, x.to_id,
           (SELECT d FROM transfer_documents d WHERE d.id = x.id)
      FROM unnest(r_outcomes, r_roles, v_ids, v_from, v_to) WITH ORDINALITY AS x (outcome, role, id, from_id, to_id, i)
     ORDER BY x.i;
END
$$;
