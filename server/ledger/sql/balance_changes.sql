-- Balance changes: PATCH /api/balance, credits and debits. Each change is a transfer between an
-- account and its asset's system account (amount > 0: system -> account; < 0: account -> system).
-- This is the hot path of the 10,000-request proof: one call per batch of changes, one statement,
-- one transaction, one round trip.
--
-- Apply a batch of signed changes (minor units) as ONE statement. Change i names its account as
-- p_account_ids[i], or (that being NULL) as user p_user_ids[i]'s account in asset p_asset_ids[i];
-- the batcher (server/ledger/batching.py) sends what queued while earlier batches were in flight;
-- without batching a change is a batch of one. p_kinds[i] is the entry kind ('adjustment',
-- 'credit', 'debit'), p_codes[i] the transfer code, p_idempotency_keys[i] the key its entry records,
-- p_created_by[i] the API key that sent it (its transfer's created_by; NULL without authentication).
--
-- Semantics are exactly those of applying the changes one at a time in array order: change i is
-- accepted iff its account is open and, for a debit, the running available balance (balance minus
-- pending debits) stays at or above -overdraft_limit, for a credit the running balance plus pending
-- credits at or below coalesce(max_balance, 2^63-1); the running balance is the account's own
-- (accounts do not affect each other); each accepted change gets its own transfer row and the account's entry with
-- its own balance_after, and an account's entries get ascending ids in array order. Result rows
-- come in array order: (account_id, user_id, balance_after, transfer_id, entry_id, outcome),
-- outcome one of applied, insufficient_funds, max_balance_exceeded, balance_overflow,
-- account_frozen, account_closed, user_not_found, account_not_found, same_account (a system
-- account).
--
-- Why it is safe under concurrency (locking.sql, rules 1-4): the one SELECT ... ORDER BY a.id
-- FOR NO KEY UPDATE OF a takes the row locks of every account named, in ascending id order; the
-- expired holds are subtracted in a statement run after the locks are held. The system accounts'
-- rows are joined only to learn their ids, neither locked nor written; their balance is added to
-- after the writes (add_to_system_balances(), which waits for nothing). The checks are written so
-- that they cannot overflow bigint. Writes are set-based: the loop only decides (and draws the ids,
-- ascending in the order decided, and chains each entry's hash to the account's previous one,
-- entry_hashes.sql), then ONE statement inserts all transfers, their events (events.sql) and
-- entries and updates all balances and heads. A change whose account is not found stays a look-up
-- of `users` (OFFSET 0), never a scan.
CREATE OR REPLACE FUNCTION apply_balance_changes(
    p_account_ids bigint[],
    p_user_ids bigint[],
    p_asset_ids integer[],
    p_amounts bigint[],
    p_kinds text[],
    p_codes text[],
    p_descriptions text[],
    p_idempotency_keys text[],
    p_created_by bigint[]
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
    v_hash bytea;            -- the hash of its last entry (entry_hashes.sql)
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
    w_hash bytea[] := '{}';
    -- per account changed, in id order: its final balance
    u_account bigint[] := '{}';
    u_balance bigint[] := '{}';
    u_hash bytea[] := '{}';
    v_after bigint;          -- the largest feed_position of the accounts changed (events.sql)
    v_position bigint;
BEGIN
    FOR r IN
        SELECT c.i, a.id, a.user_id, a.asset_id, a.is_system, a.status, a.balance, a.overdraft_limit,
               a.max_balance, a.pending_debits, a.pending_credits, a.feed_position, a.head_hash,
               s.id AS system_id
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
            v_hash := r.head_hash;
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
            v_hash := entry_hash(v_hash, r.id, w_transfer[k], change, running);  -- chained in id order
            w_hash[k] := v_hash;
            o_transfer[r.i] := w_transfer[k];
            o_entry[r.i] := w_entry[k];
            IF u_account[cardinality(u_account)] IS DISTINCT FROM r.id THEN
                u_account[cardinality(u_account) + 1] := r.id;
                v_after := greatest(v_after, r.feed_position);
            END IF;
            u_balance[cardinality(u_account)] := running;
            u_hash[cardinality(u_account)] := v_hash;
        END IF;
    END LOOP;

    IF k > 0 THEN
        v_position := feed_position_after(v_after);
        -- one statement writes it all: the transfers (each carries both sides), their events, the
        -- accounts' entries (each with its running balance and hash) and the accounts' final balances
        -- and heads
        WITH transfer AS (
            INSERT INTO transfers (id, asset_id, from_account_id, to_account_id, amount, code, description,
                                   from_balance, to_balance, created_by)
            OVERRIDING SYSTEM VALUE
            SELECT w.transfer_id, w.asset_id,
                   CASE WHEN w.amount > 0 THEN w.system_id ELSE w.account_id END,
                   CASE WHEN w.amount > 0 THEN w.account_id ELSE w.system_id END,
                   abs(w.amount), p_codes[w.i], p_descriptions[w.i],
                   CASE WHEN w.amount < 0 THEN w.running END, CASE WHEN w.amount > 0 THEN w.running END,
                   p_created_by[w.i]
              FROM unnest(w_transfer, w_asset, w_account, w_system, w_amount, w_running, w_index)
                   AS w (transfer_id, asset_id, account_id, system_id, amount, running, i)
        ), event AS (  -- one row per asset, its transfers in the order decided (events.sql)
            INSERT INTO events (position, type, asset_id, transfer_ids)
            SELECT v_position, 'transfer.created', w.asset_id, array_agg(w.transfer_id ORDER BY w.k)
              FROM unnest(w_transfer, w_asset) WITH ORDINALITY AS w (transfer_id, asset_id, k)
             GROUP BY w.asset_id
        ), balance AS (
            UPDATE accounts a SET balance = u.balance, head_hash = u.hash, updated_at = now(),
                                  feed_position = v_position
              FROM unnest(u_account, u_balance, u_hash) AS u (id, balance, hash)
             WHERE a.id = u.id
        )
        INSERT INTO ledger_entries (id, account_id, transfer_id, amount, balance_after, kind, description,
                                    idempotency_key, hash)
        OVERRIDING SYSTEM VALUE
        SELECT w.entry_id, w.account_id, w.transfer_id, w.amount, w.running, p_kinds[w.i], p_descriptions[w.i],
               p_idempotency_keys[w.i], w.hash
          FROM unnest(w_entry, w_transfer, w_account, w_amount, w_running, w_index, w_hash)
               AS w (entry_id, transfer_id, account_id, amount, running, i, hash);
        -- each change moved its amount out of (a credit: into) its asset's system account
        PERFORM add_to_system_balances(w_asset, ARRAY(SELECT -w.amount FROM unnest(w_amount) WITH ORDINALITY
                                                                                AS w (amount, i) ORDER BY w.i));
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
