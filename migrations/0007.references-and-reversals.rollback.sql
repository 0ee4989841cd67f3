-- Rollback of 0007: no references, no reversals. Refused, changing nothing, while any transfer
-- carries a reference or reverses another (the old shape has no place for either).

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM transfers WHERE reference IS NOT NULL OR reverses IS NOT NULL) THEN
        RAISE EXCEPTION 'cannot roll back 0007: transfers carry references or reversals';
    END IF;
END
$$;

DROP FUNCTION reverse_transfer(bigint, bigint, text, text, text);
DROP FUNCTION transfer_funds(bigint, bigint, bigint, bigint, integer, bigint, text, text, jsonb, text, boolean, integer, text);
DROP INDEX transfers_reference;
ALTER TABLE transfers DROP COLUMN reference, DROP COLUMN reverses, DROP COLUMN reversed_amount;

-- 0006's transfer_funds(), as it was.
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
