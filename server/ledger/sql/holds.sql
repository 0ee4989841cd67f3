-- Holds (pending transfers, TigerBeetle's two-phase transfers): a hold reserves its amount on both
-- accounts at once and moves nothing until it is posted (all or part, the rest released) or voided,
-- or until its timeout passes. Stored: transfers.status, expires_at, posted_amount, resolved_at;
-- accounts keep the sums of their open holds in pending_debits / pending_credits, and
-- available = balance - pending_debits. A hold is made by transfer_funds() (transfers.sql).
--
-- Expiry needs no background job: a hold whose expires_at has passed counts nowhere from that
-- moment on. Reads and checks subtract the holds that expired from the stored sums
-- (expired_holds(), only when the stored sum is not 0), and post and void refuse them
-- (pending_transfer_expired); so an expired hold never changes again and the subtraction is exact.
-- A hold's ledger entries are written when it is posted, for the amount posted.
--
-- Why it is safe under concurrency: every change of a hold's status holds the locks of its
-- non-system accounts (locking.sql, rules 1-2), and expired_holds() runs after those locks are held,
-- so it sees every post and void committed before.


-- The amounts of account p_account_id's pending holds that have expired (as of now(), the start of
-- the transaction), as sender and as receiver: what the stored sums still count but no longer hold.
-- Two sums over the partial indexes transfers_pending_debits / _credits: a few rows of one account.
CREATE OR REPLACE FUNCTION expired_holds(p_account_id bigint, OUT debits bigint, OUT credits bigint)
LANGUAGE sql STABLE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
    SELECT coalesce((SELECT sum(t.amount) FROM transfers t
                      WHERE t.from_account_id = p_account_id AND t.status = 'pending' AND t.expires_at <= now()), 0)::bigint,
           coalesce((SELECT sum(t.amount) FROM transfers t
                      WHERE t.to_account_id = p_account_id AND t.status = 'pending' AND t.expires_at <= now()), 0)::bigint
$$;


-- Post (p_post: move p_amount, NULL for all of it, and release the rest) or void (release it all)
-- the pending transfer p_transfer_id, exactly once. Returns one row: outcome ('posted', 'voided', or
-- the refusal's problem code: transfer_not_found, transfer_not_pending,
-- pending_transfer_already_posted, pending_transfer_already_voided, pending_transfer_expired,
-- exceeds_pending_amount, account_frozen / account_closed with role) and the two balances after.
--
-- Exactly once under concurrency: the hold's non-system account rows are locked (ascending id order)
-- BEFORE its status is read again; every change of a hold's status holds these locks, so of 100
-- concurrent posts (or posts and voids) the first to get the locks finds it pending and every other
-- one then reads the status that one committed. A void always works while the hold is pending,
-- frozen or not: it only releases.
CREATE OR REPLACE FUNCTION resolve_pending_transfer(p_transfer_id bigint, p_post boolean, p_amount bigint)
RETURNS TABLE (outcome text, role text, from_balance bigint, to_balance bigint)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    h transfers%ROWTYPE;
    src accounts%ROWTYPE;
    dst accounts%ROWTYPE;
    moved bigint;
    v_from bigint;
    v_to bigint;
    v_from_hash bytea;
    v_to_hash bytea;
    v_position bigint;
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
    -- its event's position (events.sql), from the sides' feed_position read under their locks
    v_position := feed_position_after(greatest(CASE WHEN NOT src.is_system THEN src.feed_position END,
                                               CASE WHEN NOT dst.is_system THEN dst.feed_position END));
    -- release the whole hold; move what is posted (within what was reserved, so within the limits),
    -- a post's entries chained to each account's last one (entry_hashes.sql; the row as locked)
    UPDATE accounts a SET pending_debits = a.pending_debits - h.amount, balance = a.balance - moved,
                          head_hash = CASE WHEN p_post THEN entry_hash(a.head_hash, a.id, h.id, -moved, a.balance - moved)
                                           ELSE a.head_hash END,
                          updated_at = now(), feed_position = v_position
     WHERE a.id = src.id AND NOT a.is_system
    RETURNING a.balance, a.head_hash INTO v_from, v_from_hash;
    UPDATE accounts a SET pending_credits = a.pending_credits - h.amount, balance = a.balance + moved,
                          head_hash = CASE WHEN p_post THEN entry_hash(a.head_hash, a.id, h.id, moved, a.balance + moved)
                                           ELSE a.head_hash END,
                          updated_at = now(), feed_position = v_position
     WHERE a.id = dst.id AND NOT a.is_system
    RETURNING a.balance, a.head_hash INTO v_to, v_to_hash;
    IF p_post THEN
        INSERT INTO ledger_entries (account_id, transfer_id, amount, balance_after, kind, description, hash)
        SELECT side.id, h.id, side.amount, side.balance_after, side.kind, h.description, side.hash
          FROM (VALUES (src.id, -moved, v_from, 'transfer_out', src.is_system, v_from_hash),
                       (dst.id,  moved, v_to,   'transfer_in',  dst.is_system, v_to_hash))
               AS side (id, amount, balance_after, kind, is_system, hash)
         WHERE NOT side.is_system;
        IF src.is_system OR dst.is_system THEN  -- after the account locks; waits for nothing
            PERFORM add_to_system_balances(ARRAY[h.asset_id], ARRAY[CASE WHEN dst.is_system THEN moved ELSE -moved END]);
        END IF;
    END IF;
    UPDATE transfers t
       SET status = CASE WHEN p_post THEN 'posted' ELSE 'voided' END,
           posted_amount = CASE WHEN p_post THEN moved END,
           from_balance = CASE WHEN p_post THEN v_from END,
           to_balance = CASE WHEN p_post THEN v_to END,
           resolved_at = now()
     WHERE t.id = h.id;
    INSERT INTO events (position, type, asset_id, transfer_ids)
        VALUES (v_position, CASE WHEN p_post THEN 'transfer.posted' ELSE 'transfer.voided' END::event_type, h.asset_id,
                ARRAY[h.id]);
    RETURN QUERY SELECT CASE WHEN p_post THEN 'posted' ELSE 'voided' END, NULL::text, v_from, v_to;
END
$$;
