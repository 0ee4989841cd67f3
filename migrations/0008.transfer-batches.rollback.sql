-- Rollback of 0008: no batch function, and 0007's reverse_transfer() again. 0008 adds no table
-- or column, so nothing stored can be lost.

DROP FUNCTION apply_transfer_batch(boolean, text[], bigint[], bigint[], bigint[], bigint[], integer[], bigint[], text[], text[],
                                   jsonb[], boolean[], integer[], text[], bigint[]);

-- 0007's reverse_transfer(), as it was.
CREATE OR REPLACE FUNCTION reverse_transfer(p_transfer_id bigint, p_amount bigint, p_code text, p_description text,
                                 p_reference text)
RETURNS TABLE (outcome text, role text, transfer_id bigint, from_account_id bigint, to_account_id bigint,
               from_balance bigint, to_balance bigint, created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    o transfers%ROWTYPE;
    moved bigint;
    v_amount bigint;
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
                                        p_reference) f;
    IF r.outcome = 'transferred' THEN
        UPDATE transfers t SET reverses = o.id WHERE t.id = r.transfer_id;
        UPDATE transfers t SET reversed_amount = t.reversed_amount + v_amount WHERE t.id = o.id;
    END IF;
    RETURN QUERY SELECT r.outcome, r.role, r.transfer_id, r.from_account_id, r.to_account_id, r.from_balance,
                        r.to_balance, r.created_at;
END
$$;
