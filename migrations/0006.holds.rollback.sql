-- Rollback of 0006: no holds. Refused, changing nothing, when the database holds any (pending,
-- posted or voided holds have no place in the old shape).

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM transfers WHERE status <> 'posted' OR resolved_at IS NOT NULL) THEN
        RAISE EXCEPTION 'cannot roll back 0006: the database holds pending transfers (holds)';
    END IF;
END
$$;

DROP FUNCTION resolve_pending_transfer(bigint, boolean, bigint);
DROP FUNCTION transfer_funds(bigint, bigint, bigint, bigint, integer, bigint, text, text, jsonb, text, boolean, integer);
DROP FUNCTION apply_balance_changes(bigint[], bigint[], integer[], bigint[], text[], text[], text[], text[]);
DROP FUNCTION expired_holds(bigint);
DROP INDEX transfers_pending_debits;
DROP INDEX transfers_pending_credits;
ALTER TABLE accounts DROP COLUMN pending_debits, DROP COLUMN pending_credits;
ALTER TABLE transfers DROP COLUMN status, DROP COLUMN expires_at, DROP COLUMN posted_amount, DROP COLUMN resolved_at;

-- 0004's transfer_funds() and 0005's apply_balance_changes(), as they were.
CREATE FUNCTION transfer_funds(
    p_from_account bigint, p_from_user bigint, p_to_account bigint, p_to_user bigint, p_asset_id integer,
    p_amount bigint, p_code text, p_description text, p_metadata jsonb, p_idempotency_key text
) RETURNS TABLE (
    outcome text, role text, transfer_id bigint, from_account_id bigint, to_account_id bigint,
    from_balance bigint, to_balance bigint, created_at timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    v_missing text;
    src accounts%ROWTYPE;
    dst accounts%ROWTYPE;
BEGIN
    SELECT r.id, r.missing INTO from_account_id, v_missing FROM resolve_account(p_from_account, p_from_user, p_asset_id) r;
    IF from_account_id IS NULL THEN
        RETURN QUERY SELECT v_missing, 'from'::text, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                            NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT r.id, r.missing INTO to_account_id, v_missing FROM resolve_account(p_to_account, p_to_user, p_asset_id) r;
    IF to_account_id IS NULL THEN
        RETURN QUERY SELECT v_missing, 'to'::text, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                            NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    IF from_account_id = to_account_id THEN
        RETURN QUERY SELECT 'same_account'::text, NULL::text, NULL::bigint, from_account_id, to_account_id,
                            NULL::bigint, NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    PERFORM 1 FROM accounts a WHERE a.id IN (from_account_id, to_account_id) AND NOT a.is_system
      ORDER BY a.id FOR NO KEY UPDATE;
    SELECT * INTO src FROM accounts a WHERE a.id = from_account_id;
    SELECT * INTO dst FROM accounts a WHERE a.id = to_account_id;
    outcome := CASE
        WHEN src.asset_id <> dst.asset_id THEN 'asset_mismatch'
        WHEN src.status <> 'open' THEN 'account_' || src.status
        WHEN dst.status <> 'open' THEN 'account_' || dst.status
        WHEN NOT src.is_system AND src.balance < -src.overdraft_limit + p_amount THEN 'insufficient_funds'
        WHEN dst.is_system THEN NULL
        WHEN dst.max_balance IS NOT NULL AND dst.balance > dst.max_balance - p_amount THEN 'max_balance_exceeded'
        WHEN dst.balance > 9223372036854775807 - p_amount THEN 'balance_overflow'
    END;
    IF outcome IS NOT NULL THEN
        role := CASE WHEN outcome IN ('account_frozen', 'account_closed') AND src.status = 'open' THEN 'to'
                     WHEN outcome IN ('account_frozen', 'account_closed', 'insufficient_funds') THEN 'from'
                     WHEN outcome = 'asset_mismatch' THEN NULL
                     ELSE 'to' END;
        RETURN QUERY SELECT outcome, role, NULL::bigint, from_account_id, to_account_id, NULL::bigint,
                            NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;

    IF NOT src.is_system THEN
        UPDATE accounts a SET balance = a.balance - p_amount, updated_at = now() WHERE a.id = src.id
            RETURNING a.balance INTO from_balance;
    END IF;
    IF NOT dst.is_system THEN
        UPDATE accounts a SET balance = a.balance + p_amount, updated_at = now() WHERE a.id = dst.id
            RETURNING a.balance INTO to_balance;
    END IF;
    INSERT INTO transfers AS t (asset_id, from_account_id, to_account_id, amount, code, description, metadata,
                                from_balance, to_balance)
        VALUES (src.asset_id, src.id, dst.id, p_amount, p_code, p_description, p_metadata, from_balance, to_balance)
        RETURNING t.id, t.created_at INTO transfer_id, created_at;
    INSERT INTO ledger_entries (account_id, transfer_id, amount, balance_after, kind, description, idempotency_key)
    SELECT side.id, transfer_id, side.amount, side.balance_after, side.kind, p_description, p_idempotency_key
      FROM (VALUES (src.id, -p_amount, from_balance, 'transfer_out', src.is_system),
                   (dst.id,  p_amount, to_balance,   'transfer_in',  dst.is_system))
           AS side (id, amount, balance_after, kind, is_system)
     WHERE NOT side.is_system;
    RETURN QUERY SELECT 'transferred'::text, NULL::text, transfer_id, from_account_id, to_account_id,
                        from_balance, to_balance, created_at;
END
$$;

CREATE FUNCTION apply_balance_changes(
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
               a.max_balance, s.id AS system_id
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
        END IF;
        o_account[r.i] := r.id;
        o_user[r.i] := r.user_id;
        change := p_amounts[r.i];
        IF r.is_system THEN
            o_outcome[r.i] := 'same_account';
        ELSIF r.status <> 'open' THEN
            o_outcome[r.i] := 'account_' || r.status;
        ELSIF change > 0 AND running > ceiling - change THEN
            o_outcome[r.i] := CASE WHEN r.max_balance IS NULL THEN 'balance_overflow' ELSE 'max_balance_exceeded' END;
        ELSIF change < 0 AND running < -r.overdraft_limit - change THEN
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
                               AND NOT EXISTS (SELECT 1 FROM users x WHERE x.id = p_user_ids[o.i])
                         THEN 'user_not_found' ELSE 'account_not_found' END)
      FROM unnest(o_account, o_user, o_balance, o_transfer, o_entry, o_outcome) WITH ORDINALITY
           AS o (account_id, user_id, balance_after, transfer_id, entry_id, outcome, i)
     ORDER BY o.i;
END
$$;
