-- Plans that do not depend on how large the tables were when a connection first ran them.
-- depends: 0010.ledger-batches
--
-- Why: PL/pgSQL keeps the plan of each statement of a function for the life of the connection
-- (PostgreSQL docs §43.11.2, "Plan Caching"; generic plans, PREPARE "Notes"). On an empty
-- database the planner rightly scans a table of one page instead of using its index, and the
-- connection then keeps that plan while the table grows to millions of rows, until something
-- invalidates it (autovacuum's first ANALYZE, about a minute later). Measured from an empty start
-- (issue 27): the result statement of apply_transfer_batch() went from 0.17 ms to 231 ms per batch,
-- a seq scan of `transfers` per batch; transfers/s fell from 2,316 to 360 in eight seconds.
--
-- The rule, for every function on a per-request path: every statement in it reaches rows by key
-- (a primary key, (user_id, asset_id), a transfer's reference, an account's pending holds), over a
-- batch of at most TRANSFER_BATCH_MAX_ITEMS / BATCH_MAX_SIZE items, so the one sensible plan at any
-- size is a nested loop driven by the batch's arrays over those indexes. Each function therefore
-- runs with (docs §19.7.1, "Planner Method Configuration"):
--   enable_seqscan = off     no sequential scan where an index can answer (a scan that has no
--                            index to use is still planned, so nothing becomes impossible);
--   enable_hashjoin = off,   no join that reads a whole side first: with seq scans off, a hash or
--   enable_mergejoin = off   merge join over a full index scan is the same scan of every row;
--   plan_cache_mode =        its statements planned once per connection, as they were (0006, 0009),
--     force_generic_plan     now with a plan that is right at every size; this also keeps a caller's
--                            setting (the service's connections plan their own top-level statements
--                            as custom plans, server/running/database.py) out of the function.
-- Each function sets these itself, not by inheriting its caller's: the plan of a nested statement
-- is kept by the function that runs it, whoever called it first.
--
-- The check (`balance-api check`) is not on a request path and sets none of this: it reads every row.
-- Nothing stored changes; the rollback restores each function's settings as 0010 left them.

ALTER FUNCTION resolve_account(bigint, bigint, integer)
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
    SET enable_hashjoin = off SET enable_mergejoin = off;

-- Two sums over the partial indexes transfers_pending_debits / _credits (0006): a few pending
-- holds of one account, whatever the size of `transfers`.
ALTER FUNCTION expired_holds(bigint)
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
    SET enable_hashjoin = off SET enable_mergejoin = off;

-- 0006's function with seq scans off, and its not-found look-up kept a look-up.
CREATE OR REPLACE FUNCTION apply_balance_changes(
    p_account_ids bigint[],
    p_user_ids bigint[],
    p_asset_ids integer[],
    p_amounts bigint[],
    p_kinds text[],
    p_codes text[],
    p_descriptions text[],
    p_idempotency_keys text[]
) RETURNS TABLE (account_id bigint, user_id bigint, balance_after bigint, transfer_id bigint, entry_id bigint,
                outcome text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    n integer := cardinality(p_amounts);
    transfer_ids regclass := pg_get_serial_sequence('transfers', 'id');
    entry_ids regclass := pg_get_serial_sequence('ledger_entries', 'id');
    r record;
    v_account bigint;        -- the account whose changes the loop is walking
    running bigint;          -- its running balance
    ceiling bigint;
    held_out bigint;         -- its pending debits and credits (holds not expired)
    held_in bigint;
    change bigint;
    -- per change, in array order: what the result rows say
    o_account bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    o_user bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    o_balance bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    o_transfer bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    o_entry bigint[] := array_fill(NULL::bigint, ARRAY[n]);
    o_outcome text[] := array_fill(NULL::text, ARRAY[n]);
    -- per accepted change, in the order decided: what is written
    k integer := 0;
    w_index integer[] := '{}';
    w_asset integer[] := '{}';
    w_account bigint[] := '{}';
    w_system bigint[] := '{}';
    w_amount bigint[] := '{}';
    w_running bigint[] := '{}';
    w_transfer bigint[] := '{}';
    w_entry bigint[] := '{}';
    -- per account changed, in id order: its final balance
    u_account bigint[] := '{}';
    u_balance bigint[] := '{}';
BEGIN
    FOR r IN
        SELECT c.i, a.id, a.user_id, a.asset_id, a.is_system, a.status, a.balance, a.overdraft_limit,
               a.max_balance, a.pending_debits, a.pending_credits, s.id AS system_id
          FROM (SELECT u.i, coalesce(u.account_id, (SELECT x.id FROM accounts x
                                                      WHERE x.user_id = u.user_id AND x.asset_id = u.asset_id)) AS id
                  FROM unnest(p_account_ids, p_user_ids, p_asset_ids) WITH ORDINALITY
                       AS u (account_id, user_id, asset_id, i)) c
          JOIN accounts a ON a.id = c.id
          LEFT JOIN accounts s ON s.asset_id = a.asset_id AND s.is_system
         ORDER BY a.id, c.i
           FOR NO KEY UPDATE OF a
    LOOP
        IF r.id IS DISTINCT FROM v_account THEN  -- the next account: its changes follow in array order
            v_account := r.id;
            running := r.balance;
            ceiling := coalesce(r.max_balance, 9223372036854775807);
            held_out := r.pending_debits;
            held_in := r.pending_credits;
            IF held_out > 0 OR held_in > 0 THEN  -- a statement of its own: read after the row lock
                SELECT held_out - e.debits, held_in - e.credits INTO held_out, held_in FROM expired_holds(r.id) e;
            END IF;
        END IF;
        o_account[r.i] := r.id;
        o_user[r.i] := r.user_id;
        change := p_amounts[r.i];
        IF r.is_system THEN
            o_outcome[r.i] := 'same_account';
        ELSIF r.status <> 'open' THEN
            o_outcome[r.i] := 'account_' || r.status;
        ELSIF change > 0 AND running + held_in > ceiling - change THEN
            o_outcome[r.i] := CASE WHEN r.max_balance IS NULL THEN 'balance_overflow' ELSE 'max_balance_exceeded' END;
        ELSIF change < 0 AND running - held_out < -r.overdraft_limit - change THEN
            o_outcome[r.i] := 'insufficient_funds';
        ELSE
            running := running + change;
            o_outcome[r.i] := 'applied';
            o_balance[r.i] := running;
            k := k + 1;
            w_index[k] := r.i;
            w_asset[k] := r.asset_id;
            w_account[k] := r.id;
            w_system[k] := r.system_id;
            w_amount[k] := change;
            w_running[k] := running;
            w_transfer[k] := nextval(transfer_ids);  -- ascending in the order decided
            w_entry[k] := nextval(entry_ids);
            o_transfer[r.i] := w_transfer[k];
            o_entry[r.i] := w_entry[k];
            IF u_account[cardinality(u_account)] IS DISTINCT FROM r.id THEN
                u_account[cardinality(u_account) + 1] := r.id;
            END IF;
            u_balance[cardinality(u_account)] := running;
        END IF;
    END LOOP;

    IF k > 0 THEN
        -- one statement writes it all: the transfers (each carries both sides), the accounts'
        -- entries (each with its running balance) and the accounts' final balances
        WITH transfer AS (
            INSERT INTO transfers (id, asset_id, from_account_id, to_account_id, amount, code, description,
                                   from_balance, to_balance)
            OVERRIDING SYSTEM VALUE
            SELECT w.transfer_id, w.asset_id,
                   CASE WHEN w.amount > 0 THEN w.system_id ELSE w.account_id END,
                   CASE WHEN w.amount > 0 THEN w.account_id ELSE w.system_id END,
                   abs(w.amount), p_codes[w.i], p_descriptions[w.i],
                   CASE WHEN w.amount < 0 THEN w.running END, CASE WHEN w.amount > 0 THEN w.running END
              FROM unnest(w_transfer, w_asset, w_account, w_system, w_amount, w_running, w_index)
                   AS w (transfer_id, asset_id, account_id, system_id, amount, running, i)
        ), balance AS (
            UPDATE accounts a SET balance = u.balance, updated_at = now()
              FROM unnest(u_account, u_balance) AS u (id, balance)
             WHERE a.id = u.id
        )
        INSERT INTO ledger_entries (id, account_id, transfer_id, amount, balance_after, kind, description,
                                    idempotency_key)
        OVERRIDING SYSTEM VALUE
        SELECT w.entry_id, w.account_id, w.transfer_id, w.amount, w.running, p_kinds[w.i], p_descriptions[w.i],
               p_idempotency_keys[w.i]
          FROM unnest(w_entry, w_transfer, w_account, w_amount, w_running, w_index)
               AS w (entry_id, transfer_id, account_id, amount, running, i);
    END IF;

    RETURN QUERY
    SELECT o.account_id, o.user_id, o.balance_after, o.transfer_id, o.entry_id,
           coalesce(o.outcome,
                    CASE WHEN p_account_ids[o.i] IS NULL
                               -- OFFSET 0: a look-up per refused item; a plain EXISTS may be planned as a
                               -- hashed subplan, which reads every user once per call (issue 27)
                               AND NOT EXISTS (SELECT 1 FROM users x WHERE x.id = p_user_ids[o.i] OFFSET 0)
                         THEN 'user_not_found' ELSE 'account_not_found' END)
      FROM unnest(o_account, o_user, o_balance, o_transfer, o_entry, o_outcome) WITH ORDINALITY
           AS o (account_id, user_id, balance_after, transfer_id, entry_id, outcome, i)
     ORDER BY o.i;
END
$$;

ALTER FUNCTION transfer_funds(bigint, bigint, bigint, bigint, integer, bigint, text, text, jsonb, text, boolean,
                              integer, text)
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
    SET enable_hashjoin = off SET enable_mergejoin = off;

ALTER FUNCTION resolve_pending_transfer(bigint, boolean, bigint)
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
    SET enable_hashjoin = off SET enable_mergejoin = off;

ALTER FUNCTION reverse_transfer(bigint, bigint, text, text, text)
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
    SET enable_hashjoin = off SET enable_mergejoin = off;

-- Its ids query was the second statement measured in issue 27 (2.1 -> 8.8 ms a call): a seq scan
-- of `transfers` for `t.id = ANY (p_holds)` and a hash join scanning all of `accounts` for the
-- users' accounts, both planned when the tables had a page each.
ALTER FUNCTION lock_transfer_batch_accounts(bigint[], bigint[], bigint[], bigint[], integer[], bigint[])
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
    SET enable_hashjoin = off SET enable_mergejoin = off;

ALTER FUNCTION apply_transfer_batch_in_order(boolean, text[], bigint[], bigint[], bigint[], bigint[], integer[],
                                             bigint[], text[], text[], jsonb[], boolean[], integer[], text[],
                                             bigint[], text[])
    SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
    SET enable_hashjoin = off SET enable_mergejoin = off;

-- 0009's function with seq scans, hash and merge joins off, and its result statement as a look-up
-- per item: the first statement measured in issue 27 (a Materialize over a seq scan of `transfers`,
-- joined by filter, per batch; 0.17 ms became 231 ms).
CREATE OR REPLACE FUNCTION apply_transfer_batch(
    p_atomic boolean, p_kinds text[], p_from_accounts bigint[], p_from_users bigint[], p_to_accounts bigint[],
    p_to_users bigint[], p_asset_ids integer[], p_amounts bigint[], p_codes text[], p_descriptions text[],
    p_metadata jsonb[], p_pending boolean[], p_timeouts integer[], p_references text[], p_holds bigint[],
    p_idempotency_keys text[]
) RETURNS TABLE (item integer, outcome text, role text, transfer_id bigint, from_account_id bigint,
                 to_account_id bigint, transfer transfer_details)
LANGUAGE plpgsql
-- as apply_balance_changes() (0006): the statements' custom plans cost more to make than to run
-- (measured: a batch of 100 took 16-20 ms with them, 4 ms with generic plans; a batch of 1, 1.1 ms
-- against 0.5 ms)
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    n integer := coalesce(array_length(p_kinds, 1), 0);
    transfer_ids regclass := pg_get_serial_sequence('transfers', 'id');
    v_from bigint[];
    v_to bigint[];
    v_from_after numeric[];  -- numeric: when an item is refused, the later running balances may not fit bigint
    v_to_after numeric[];
    v_ids bigint[];
    v_all_accepted boolean;
    r_outcomes text[];
    r_roles text[];
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

        WITH leg AS (  -- side 0 the sender (-amount), side 1 the receiver (+amount)
            SELECT x.i, s.side, s.account_id, s.delta
              FROM unnest(v_from, v_to, p_amounts) WITH ORDINALITY AS x (from_id, to_id, amount, i)
             CROSS JOIN LATERAL (VALUES (0, x.from_id, -x.amount::numeric), (1, x.to_id, x.amount::numeric))
                   AS s (side, account_id, delta)
        ), running AS (  -- each leg's account and its running balance, as if every item were accepted
            SELECT l.i, l.side, a.id, a.asset_id, a.is_system, a.status, a.overdraft_limit, a.max_balance,
                   a.balance + sum(l.delta) OVER (PARTITION BY l.account_id ORDER BY l.i, l.side
                                                  ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS after,
                   CASE WHEN l.side = 0 AND a.pending_debits > 0
                        THEN a.pending_debits - (SELECT e.debits FROM expired_holds(a.id) e)
                        WHEN l.side = 1 AND a.pending_credits > 0
                        THEN a.pending_credits - (SELECT e.credits FROM expired_holds(a.id) e)
                        ELSE 0 END AS held
              FROM leg l
              LEFT JOIN accounts a ON a.id = l.account_id
        ), checked AS (  -- transfer_funds()'s checks of each side (NULL: no account: not passed)
            SELECT r.*, coalesce(r.status = 'open' AND (r.is_system OR CASE
                       WHEN r.side = 0 THEN r.after - r.held >= -r.overdraft_limit
                       ELSE r.after + r.held <= coalesce(r.max_balance, 9223372036854775807)
                                AND r.after + r.held <= 9223372036854775807 END), false) AS passes
              FROM running r
        ), per_item AS (
            SELECT r.i, bool_and(r.passes) AND min(r.id) <> max(r.id) AND min(r.asset_id) = max(r.asset_id) AS accepted,
                   max(r.after) FILTER (WHERE r.side = 0 AND NOT r.is_system) AS from_after,
                   max(r.after) FILTER (WHERE r.side = 1 AND NOT r.is_system) AS to_after
              FROM checked r
             GROUP BY r.i
        )
        SELECT coalesce(bool_and(p.accepted), false) AND count(*) = n,
               array_agg(p.from_after ORDER BY p.i), array_agg(p.to_after ORDER BY p.i)
          INTO v_all_accepted, v_from_after, v_to_after
          FROM per_item p;

        IF v_all_accepted THEN
            v_ids := ARRAY(SELECT nextval(transfer_ids) FROM generate_series(1, n));  -- ascending in item order
            WITH transfer AS (
                INSERT INTO transfers (id, asset_id, from_account_id, to_account_id, amount, code, description,
                                       metadata, from_balance, to_balance)
                OVERRIDING SYSTEM VALUE
                SELECT x.id, src.asset_id, x.from_id, x.to_id, x.amount, x.code, x.description, x.metadata,
                       x.from_after::bigint, x.to_after::bigint
                  FROM unnest(v_ids, v_from, v_to, p_amounts, p_codes, p_descriptions, p_metadata, v_from_after,
                              v_to_after)
                       AS x (id, from_id, to_id, amount, code, description, metadata, from_after, to_after)
                  JOIN accounts src ON src.id = x.from_id
            ), balance AS (
                UPDATE accounts a SET balance = a.balance + d.delta, updated_at = now()
                  FROM (SELECT s.account_id, sum(s.delta) AS delta
                          FROM unnest(v_from, v_to, p_amounts) AS x (from_id, to_id, amount)
                         CROSS JOIN LATERAL (VALUES (x.from_id, -x.amount), (x.to_id, x.amount)) AS s (account_id, delta)
                         GROUP BY s.account_id) d
                 WHERE a.id = d.account_id AND NOT a.is_system
            )
            INSERT INTO ledger_entries (account_id, transfer_id, amount, balance_after, kind, description,
                                        idempotency_key)
            SELECT s.account_id, x.id, s.amount, s.balance_after::bigint, s.kind, x.description, x.idempotency_key
              FROM unnest(v_ids, v_from, v_to, p_amounts, p_descriptions, v_from_after, v_to_after,
                          p_idempotency_keys) WITH ORDINALITY
                   AS x (id, from_id, to_id, amount, description, from_after, to_after, idempotency_key, i)
             CROSS JOIN LATERAL (VALUES (0, x.from_id, -x.amount, x.from_after, 'transfer_out'),
                                        (1, x.to_id, x.amount, x.to_after, 'transfer_in'))
                   AS s (side, account_id, amount, balance_after, kind)
             WHERE s.balance_after IS NOT NULL  -- a system account has no entries
             ORDER BY x.i, s.side;
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
                   p_idempotency_keys) b;
    END IF;
    -- a statement of its own, so that it sees what the batch wrote
    -- each item's transfer as a look-up by primary key of its own (a scalar subquery): joined to
    -- the arrays, the planner may read the whole view once and filter it by id (issue 27)
    RETURN QUERY
    SELECT x.i::integer, x.outcome, x.role, x.id, x.from_id, x.to_id,
           (SELECT d FROM transfer_details d WHERE d.id = x.id)
      FROM unnest(r_outcomes, r_roles, v_ids, v_from, v_to) WITH ORDINALITY AS x (outcome, role, id, from_id, to_id, i)
     ORDER BY x.i;
END
$$;

ALTER FUNCTION apply_ledger_batch(text[], bigint[], bigint[], bigint[], bigint[], integer[], bigint[], text[],
                                  text[], jsonb[], boolean[], integer[], text[], bigint[], text[])
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;
