-- Transfers between two accounts of one asset, holds among them, and reversals.
--
-- Why they are safe under concurrency (locking.sql, rules 1-4): transfer_funds() locks its two
-- non-system rows first, in ascending id order, then checks and writes; reverse_transfer() locks
-- the original's accounts the same way before reading what is left to reverse; expired holds are
-- subtracted in statements run after the locks are held. A refusal writes nothing.


-- Move p_amount minor units from one account to another of the same asset, atomically, in one call.
-- Each side is given by account id, or as a user's account in p_asset_id. With p_pending it is a
-- hold: it moves nothing but adds p_amount to the sender's pending_debits and the receiver's
-- pending_credits (system accounts aside), with expires_at = now() + p_timeout_seconds (NULL:
-- none). The checks are those of a transfer of p_amount made now: the sender's available (balance
-- minus its pending debits) must stay at or above -overdraft_limit, the receiver's balance plus its
-- pending credits at or below its ceiling.
--
-- Returns one row: outcome ('transferred' or the refusal's problem code), role ('from'/'to' for a
-- refusal that concerns one side), the transfer, and the two balances right after it (NULL for a
-- system account). p_created_by is the API key that asks for it (its created_by; NULL: none).
--
-- References: a reference already taken returns outcome 'reference_exists' and that transfer's
-- id, writing nothing; the caller answers the transfer made the first time, or 409
-- reference_reused when the two differ. Two concurrent transfers with one new reference: the
-- unique index makes the second INSERT wait for the first to commit, then ON CONFLICT DO NOTHING
-- inserts nothing; as the transfer row is written before any balance, the second returns
-- 'reference_exists' having changed nothing.
CREATE OR REPLACE FUNCTION transfer_funds(
    p_from_account bigint, p_from_user bigint, p_to_account bigint, p_to_user bigint, p_asset_id integer,
    p_amount bigint, p_code text, p_description text, p_metadata jsonb, p_idempotency_key text,
    p_pending boolean, p_timeout_seconds integer, p_reference text, p_created_by bigint
) RETURNS TABLE (
    outcome text, role text, transfer_id bigint, from_account_id bigint, to_account_id bigint,
    from_balance bigint, to_balance bigint, created_at timestamptz
) LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    v_missing text;
    src accounts%ROWTYPE;
    dst accounts%ROWTYPE;
    src_held bigint;
    dst_held bigint;
    v_from bigint;
    v_to bigint;
    v_from_hash bytea;
    v_to_hash bytea;
    v_position bigint;
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
    IF p_reference IS NOT NULL THEN  -- taken by a transfer made before: the caller compares the two
        SELECT t.id INTO transfer_id FROM transfers t WHERE t.reference = p_reference;
        IF FOUND THEN
            RETURN QUERY SELECT 'reference_exists'::text, NULL::text, transfer_id, from_account_id, to_account_id,
                                NULL::bigint, NULL::bigint, NULL::timestamptz;
            RETURN;
        END IF;
    END IF;
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

    -- its event's position (events.sql), from the sides' feed_position read under their locks
    v_position := feed_position_after(greatest(CASE WHEN NOT src.is_system THEN src.feed_position END,
                                               CASE WHEN NOT dst.is_system THEN dst.feed_position END));
    IF p_pending THEN  -- reserve: the stored sums grow, nothing moves, no entries yet
        INSERT INTO transfers AS t (asset_id, from_account_id, to_account_id, amount, code, description, metadata,
                                    status, expires_at, reference, created_by)
            VALUES (src.asset_id, src.id, dst.id, p_amount, p_code, p_description, p_metadata, 'pending',
                    now() + make_interval(secs => p_timeout_seconds), p_reference, p_created_by)
            ON CONFLICT (reference) WHERE reference IS NOT NULL DO NOTHING
            RETURNING t.id, t.created_at INTO transfer_id, created_at;
        IF transfer_id IS NULL THEN  -- a concurrent transfer took the reference and committed
            RETURN QUERY SELECT 'reference_exists'::text, NULL::text,
                                (SELECT t.id FROM transfers t WHERE t.reference = p_reference), from_account_id,
                                to_account_id, NULL::bigint, NULL::bigint, NULL::timestamptz;
            RETURN;
        END IF;
        UPDATE accounts a SET pending_debits = a.pending_debits + p_amount, updated_at = now(),
                              feed_position = v_position
         WHERE a.id = src.id AND NOT a.is_system;
        UPDATE accounts a SET pending_credits = a.pending_credits + p_amount, updated_at = now(),
                              feed_position = v_position
         WHERE a.id = dst.id AND NOT a.is_system;
        INSERT INTO events (position, type, asset_id, transfer_ids)
            VALUES (v_position, 'transfer.pending', src.asset_id, ARRAY[transfer_id]);
        RETURN QUERY SELECT 'transferred'::text, NULL::text, transfer_id, from_account_id, to_account_id,
                            NULL::bigint, NULL::bigint, created_at;
        RETURN;
    END IF;
    -- the rows are locked, so the balances after are known before anything is written: the transfer
    -- row goes first, so that a reference taken meanwhile leaves nothing changed
    v_from := CASE WHEN NOT src.is_system THEN src.balance - p_amount END;
    v_to := CASE WHEN NOT dst.is_system THEN dst.balance + p_amount END;
    INSERT INTO transfers AS t (asset_id, from_account_id, to_account_id, amount, code, description, metadata,
                                from_balance, to_balance, reference, created_by)
        VALUES (src.asset_id, src.id, dst.id, p_amount, p_code, p_description, p_metadata, v_from, v_to, p_reference,
                p_created_by)
        ON CONFLICT (reference) WHERE reference IS NOT NULL DO NOTHING
        RETURNING t.id, t.created_at INTO transfer_id, created_at;
    IF transfer_id IS NULL THEN  -- a concurrent transfer took the reference and committed
        RETURN QUERY SELECT 'reference_exists'::text, NULL::text,
                            (SELECT t.id FROM transfers t WHERE t.reference = p_reference), from_account_id,
                            to_account_id, NULL::bigint, NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    from_balance := v_from;
    to_balance := v_to;
    -- each side's entry chained to its account's last one (entry_hashes.sql), read under its lock
    v_from_hash := entry_hash(src.head_hash, src.id, transfer_id, -p_amount, v_from);
    v_to_hash := entry_hash(dst.head_hash, dst.id, transfer_id, p_amount, v_to);
    UPDATE accounts a SET balance = v_from, head_hash = v_from_hash, updated_at = now(), feed_position = v_position
     WHERE a.id = src.id AND NOT src.is_system;
    UPDATE accounts a SET balance = v_to, head_hash = v_to_hash, updated_at = now(), feed_position = v_position
     WHERE a.id = dst.id AND NOT dst.is_system;
    INSERT INTO events (position, type, asset_id, transfer_ids)
        VALUES (v_position, 'transfer.created', src.asset_id, ARRAY[transfer_id]);
    INSERT INTO ledger_entries (account_id, transfer_id, amount, balance_after, kind, description, idempotency_key,
                                hash)
    SELECT side.id, transfer_id, side.amount, side.balance_after, side.kind, p_description, p_idempotency_key,
           side.hash
      FROM (VALUES (src.id, -p_amount, from_balance, 'transfer_out', src.is_system, v_from_hash),
                   (dst.id,  p_amount, to_balance,   'transfer_in',  dst.is_system, v_to_hash))
           AS side (id, amount, balance_after, kind, is_system, hash)
     WHERE NOT side.is_system;
    IF src.is_system OR dst.is_system THEN  -- after the account locks; waits for nothing
        PERFORM add_to_system_balances(ARRAY[src.asset_id], ARRAY[CASE WHEN dst.is_system THEN p_amount ELSE -p_amount END]);
    END IF;
    RETURN QUERY SELECT 'transferred'::text, NULL::text, transfer_id, from_account_id, to_account_id,
                        from_balance, to_balance, created_at;
END
$$;


-- Reverse p_amount (NULL: all that is left) of posted transfer p_transfer_id: a new transfer the
-- other way, linked to the original (reverses, reversed_amount). A reference already taken is
-- answered first: a client retrying "reverse all that is left" with its reference gets the
-- reversal it made, not 422 exceeds_reversible_amount because that reversal left nothing (found by
-- tests/test_ledger_state_machine.py). The reference is looked up under the original's account
-- locks, so a concurrent reversal with the same reference has committed (and is found) or has not
-- started; one that slips past both meets the unique index in transfer_funds(). The reversal
-- records p_created_by (the API key that asks for it) as its creator.
CREATE OR REPLACE FUNCTION reverse_transfer(p_transfer_id bigint, p_amount bigint, p_code text, p_description text,
                                            p_reference text, p_created_by bigint)
RETURNS TABLE (outcome text, role text, transfer_id bigint, from_account_id bigint, to_account_id bigint,
               from_balance bigint, to_balance bigint, created_at timestamptz)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    o transfers%ROWTYPE;
    moved bigint;
    v_amount bigint;
    v_made bigint;
    r record;
BEGIN
    SELECT * INTO o FROM transfers t WHERE t.id = p_transfer_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'transfer_not_found'::text, NULL::text, NULL::bigint, NULL::bigint, NULL::bigint,
                            NULL::bigint, NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    PERFORM 1 FROM accounts a WHERE a.id IN (o.from_account_id, o.to_account_id) AND NOT a.is_system
      ORDER BY a.id FOR NO KEY UPDATE;
    IF p_reference IS NOT NULL THEN  -- made before: the caller compares the two
        SELECT t.id INTO v_made FROM transfers t WHERE t.reference = p_reference;
        IF FOUND THEN
            RETURN QUERY SELECT 'reference_exists'::text, NULL::text, v_made, o.to_account_id, o.from_account_id,
                                NULL::bigint, NULL::bigint, NULL::timestamptz;
            RETURN;
        END IF;
    END IF;
    SELECT * INTO o FROM transfers t WHERE t.id = p_transfer_id;
    moved := CASE WHEN o.status = 'posted' THEN coalesce(o.posted_amount, o.amount) ELSE 0 END;
    v_amount := coalesce(p_amount, moved - o.reversed_amount);
    outcome := CASE WHEN o.status <> 'posted' THEN 'transfer_not_posted'
                    WHEN v_amount < 1 OR v_amount > moved - o.reversed_amount THEN 'exceeds_reversible_amount' END;
    IF outcome IS NOT NULL THEN
        RETURN QUERY SELECT outcome, NULL::text, NULL::bigint, o.from_account_id, o.to_account_id,
                            NULL::bigint, NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT * INTO r FROM transfer_funds(o.to_account_id, NULL, o.from_account_id, NULL, o.asset_id, v_amount,
                                        coalesce(p_code, 'reversal'), p_description, NULL, NULL, false, NULL,
                                        p_reference, p_created_by) f;
    IF r.outcome = 'transferred' THEN
        UPDATE transfers t SET reverses = o.id WHERE t.id = r.transfer_id;
        UPDATE transfers t SET reversed_amount = t.reversed_amount + v_amount WHERE t.id = o.id;
    END IF;
    RETURN QUERY SELECT r.outcome, r.role, r.transfer_id, r.from_account_id, r.to_account_id, r.from_balance,
                        r.to_balance, r.created_at;
END
$$;
