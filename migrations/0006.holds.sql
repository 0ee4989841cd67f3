-- Holds (two-phase transfers): a pending transfer reserves its amount on both accounts at once and
-- moves nothing until it is posted (all of it or part, the rest released) or voided, or until its
-- timeout passes (TigerBeetle's pending transfers: post, void, timeout).
-- depends: 0005.cross-account-batches
--
-- Stored: transfers.status (pending, posted, voided; a plain transfer is posted when made),
-- expires_at (NULL: no timeout), posted_amount (what a posted hold moved) and resolved_at; accounts
-- keep the sums of their open holds in pending_debits / pending_credits (a system account's stay 0,
-- as it is never written), and available = balance - pending_debits.
--
-- Expiry needs no background job: a hold whose expires_at has passed counts nowhere from that moment
-- on. Reads and checks subtract the holds that expired from the stored sums (expired_holds(), an
-- index scan over the pending holds of one account that have expired, run only when the stored sum
-- is not 0), and post and void refuse them (pending_transfer_expired); so an expired hold never
-- changes again and the subtraction is exact. A hold's ledger entries are written when it is posted,
-- for the amount posted; a pending, voided or expired hold has none.

ALTER TABLE transfers
    ADD COLUMN status        text NOT NULL DEFAULT 'posted'
                             CONSTRAINT known_transfer_status CHECK (status IN ('pending', 'posted', 'voided')),
    ADD COLUMN expires_at    timestamptz,
    ADD COLUMN posted_amount bigint CONSTRAINT posted_within_held CHECK (posted_amount BETWEEN 1 AND amount),
    ADD COLUMN resolved_at   timestamptz;

ALTER TABLE accounts
    ADD COLUMN pending_debits  bigint NOT NULL DEFAULT 0 CONSTRAINT pending_debits_not_negative CHECK (pending_debits >= 0),
    ADD COLUMN pending_credits bigint NOT NULL DEFAULT 0 CONSTRAINT pending_credits_not_negative CHECK (pending_credits >= 0);

-- Only holds still pending are in these indexes: a plain transfer costs no index entry.
CREATE INDEX transfers_pending_debits ON transfers (from_account_id, expires_at) WHERE status = 'pending';
CREATE INDEX transfers_pending_credits ON transfers (to_account_id, expires_at) WHERE status = 'pending';

-- The amounts of account p_account_id's pending holds that have expired (as of now(), the start of
-- the transaction), as sender and as receiver: what the stored sums still count but no longer hold.
CREATE FUNCTION expired_holds(p_account_id bigint, OUT debits bigint, OUT credits bigint)
LANGUAGE sql STABLE AS $$
    SELECT coalesce((SELECT sum(t.amount) FROM transfers t
                      WHERE t.from_account_id = p_account_id AND t.status = 'pending' AND t.expires_at <= now()), 0)::bigint,
           coalesce((SELECT sum(t.amount) FROM transfers t
                      WHERE t.to_account_id = p_account_id AND t.status = 'pending' AND t.expires_at <= now()), 0)::bigint
$$;

DROP FUNCTION apply_balance_changes(bigint[], bigint[], integer[], bigint[], text[], text[], text[], text[]);

-- 0005's function, its checks counting holds: a debit must leave available (balance minus pending
-- debits) at or above -overdraft_limit, a credit must leave balance plus pending credits at or below
-- the ceiling. The expired holds are subtracted in a statement run after the row lock is held, so
-- it sees every post and void committed before (they take the same lock).
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
                               AND NOT EXISTS (SELECT 1 FROM users x WHERE x.id = p_user_ids[o.i])
                         THEN 'user_not_found' ELSE 'account_not_found' END)
      FROM unnest(o_account, o_user, o_balance, o_transfer, o_entry, o_outcome) WITH ORDINALITY
           AS o (account_id, user_id, balance_after, transfer_id, entry_id, outcome, i)
     ORDER BY o.i;
END
$$;

DROP FUNCTION transfer_funds(bigint, bigint, bigint, bigint, integer, bigint, text, text, jsonb, text);

-- 0004's transfer_funds(), its checks counting holds, and with p_pending: a hold, which moves
-- nothing but adds p_amount to the sender's pending_debits and the receiver's pending_credits
-- (system accounts aside), with expires_at = now() + p_timeout_seconds (NULL: none). Both checks
-- are those of a transfer of p_amount made now: the sender's available (balance minus its pending
-- debits) must stay at or above -overdraft_limit, the receiver's balance plus its pending credits at
-- or below its ceiling. Locks as in 0004 (non-system rows, ascending id order); the expired holds are
-- subtracted in statements run after the locks are held.
CREATE FUNCTION transfer_funds(
    p_from_account bigint, p_from_user bigint, p_to_account bigint, p_to_user bigint, p_asset_id integer,
    p_amount bigint, p_code text, p_description text, p_metadata jsonb, p_idempotency_key text,
    p_pending boolean, p_timeout_seconds integer
) RETURNS TABLE (
    outcome text, role text, transfer_id bigint, from_account_id bigint, to_account_id bigint,
    from_balance bigint, to_balance bigint, created_at timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    v_missing text;
    src accounts%ROWTYPE;
    dst accounts%ROWTYPE;
    src_held bigint;
    dst_held bigint;
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
    src_held := src.pending_debits;
    IF src_held > 0 THEN
        SELECT src_held - e.debits INTO src_held FROM expired_holds(src.id) e;
    END IF;
    dst_held := dst.pending_credits;
    IF dst_held > 0 THEN
        SELECT dst_held - e.credits INTO dst_held FROM expired_holds(dst.id) e;
    END IF;
    outcome := CASE
        WHEN src.asset_id <> dst.asset_id THEN 'asset_mismatch'
        WHEN src.status <> 'open' THEN 'account_' || src.status
        WHEN dst.status <> 'open' THEN 'account_' || dst.status
        WHEN NOT src.is_system AND src.balance - src_held < -src.overdraft_limit + p_amount THEN 'insufficient_funds'
        WHEN dst.is_system THEN NULL
        WHEN dst.max_balance IS NOT NULL AND dst.balance + dst_held > dst.max_balance - p_amount THEN 'max_balance_exceeded'
        WHEN dst.balance + dst_held > 9223372036854775807 - p_amount THEN 'balance_overflow'
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

    IF p_pending THEN  -- reserve: the stored sums grow, nothing moves, no entries yet
        UPDATE accounts a SET pending_debits = a.pending_debits + p_amount, updated_at = now()
         WHERE a.id = src.id AND NOT a.is_system;
        UPDATE accounts a SET pending_credits = a.pending_credits + p_amount, updated_at = now()
         WHERE a.id = dst.id AND NOT a.is_system;
        INSERT INTO transfers AS t (asset_id, from_account_id, to_account_id, amount, code, description, metadata,
                                    status, expires_at)
            VALUES (src.asset_id, src.id, dst.id, p_amount, p_code, p_description, p_metadata, 'pending',
                    now() + make_interval(secs => p_timeout_seconds))
            RETURNING t.id, t.created_at INTO transfer_id, created_at;
        RETURN QUERY SELECT 'transferred'::text, NULL::text, transfer_id, from_account_id, to_account_id,
                            NULL::bigint, NULL::bigint, created_at;
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

-- Post (p_post: move p_amount, NULL for all of it, and release the rest) or void (release it all)
-- the pending transfer p_transfer_id, exactly once. Returns one row: outcome ('posted', 'voided', or
-- the refusal's problem code: transfer_not_found, transfer_not_pending,
-- pending_transfer_already_posted, pending_transfer_already_voided, pending_transfer_expired,
-- exceeds_pending_amount, account_frozen / account_closed with role) and the two balances after.
--
-- Exactly once under concurrency: the hold's non-system account rows are locked (ascending id
-- order, as every writer here locks them) BEFORE its status is read again; every change of a
-- hold's status holds these locks, so of 100 concurrent posts (or posts and voids) the first to get
-- the locks finds it pending and every other one then reads the status that one committed. A void
-- always works while the hold is pending, frozen or not: it only releases.
CREATE FUNCTION resolve_pending_transfer(p_transfer_id bigint, p_post boolean, p_amount bigint)
RETURNS TABLE (outcome text, role text, from_balance bigint, to_balance bigint)
LANGUAGE plpgsql AS $$
DECLARE
    h transfers%ROWTYPE;
    src accounts%ROWTYPE;
    dst accounts%ROWTYPE;
    moved bigint;
    v_from bigint;
    v_to bigint;
BEGIN
    SELECT * INTO h FROM transfers t WHERE t.id = p_transfer_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'transfer_not_found'::text, NULL::text, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    PERFORM 1 FROM accounts a WHERE a.id IN (h.from_account_id, h.to_account_id) AND NOT a.is_system
      ORDER BY a.id FOR NO KEY UPDATE;
    SELECT * INTO h FROM transfers t WHERE t.id = p_transfer_id;  -- as the last status change left it
    SELECT * INTO src FROM accounts a WHERE a.id = h.from_account_id;
    SELECT * INTO dst FROM accounts a WHERE a.id = h.to_account_id;
    outcome := CASE
        WHEN h.status = 'posted' AND h.resolved_at IS NULL THEN 'transfer_not_pending'
        WHEN h.status = 'posted' THEN 'pending_transfer_already_posted'
        WHEN h.status = 'voided' THEN 'pending_transfer_already_voided'
        WHEN h.expires_at <= now() THEN 'pending_transfer_expired'
        WHEN p_post AND p_amount > h.amount THEN 'exceeds_pending_amount'
        WHEN p_post AND src.status <> 'open' THEN 'account_' || src.status
        WHEN p_post AND dst.status <> 'open' THEN 'account_' || dst.status
    END;
    IF outcome IS NOT NULL THEN
        role := CASE WHEN outcome NOT IN ('account_frozen', 'account_closed') THEN NULL
                     WHEN src.status <> 'open' THEN 'from' ELSE 'to' END;
        RETURN QUERY SELECT outcome, role, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    moved := CASE WHEN p_post THEN coalesce(p_amount, h.amount) ELSE 0 END;
    -- release the whole hold; move what is posted (within what was reserved, so within the limits)
    UPDATE accounts a SET pending_debits = a.pending_debits - h.amount, balance = a.balance - moved,
                          updated_at = now()
     WHERE a.id = src.id AND NOT a.is_system
    RETURNING a.balance INTO v_from;
    UPDATE accounts a SET pending_credits = a.pending_credits - h.amount, balance = a.balance + moved,
                          updated_at = now()
     WHERE a.id = dst.id AND NOT a.is_system
    RETURNING a.balance INTO v_to;
    IF p_post THEN
        INSERT INTO ledger_entries (account_id, transfer_id, amount, balance_after, kind, description)
        SELECT side.id, h.id, side.amount, side.balance_after, side.kind, h.description
          FROM (VALUES (src.id, -moved, v_from, 'transfer_out', src.is_system),
                       (dst.id,  moved, v_to,   'transfer_in',  dst.is_system))
               AS side (id, amount, balance_after, kind, is_system)
         WHERE NOT side.is_system;
    END IF;
    UPDATE transfers t
       SET status = CASE WHEN p_post THEN 'posted' ELSE 'voided' END,
           posted_amount = CASE WHEN p_post THEN moved END,
           from_balance = CASE WHEN p_post THEN v_from END,
           to_balance = CASE WHEN p_post THEN v_to END,
           resolved_at = now()
     WHERE t.id = h.id;
    RETURN QUERY SELECT CASE WHEN p_post THEN 'posted' ELSE 'voided' END, NULL::text, v_from, v_to;
END
$$;
