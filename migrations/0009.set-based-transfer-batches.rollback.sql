-- Rollback of 0009: 0008's apply_transfer_batch() again, as it was. 0009 adds no table or column,
-- so nothing stored can be lost.

DROP FUNCTION apply_transfer_batch(boolean, text[], bigint[], bigint[], bigint[], bigint[], integer[], bigint[], text[],
                                   text[], jsonb[], boolean[], integer[], text[], bigint[], text[]);
DROP FUNCTION apply_transfer_batch_in_order(boolean, text[], bigint[], bigint[], bigint[], bigint[], integer[], bigint[],
                                            text[], text[], jsonb[], boolean[], integer[], text[], bigint[], text[]);
DROP FUNCTION lock_transfer_batch_accounts(bigint[], bigint[], bigint[], bigint[], integer[], bigint[]);
DROP VIEW transfer_details;

CREATE FUNCTION apply_transfer_batch(
    p_atomic boolean, p_kinds text[], p_from_accounts bigint[], p_from_users bigint[], p_to_accounts bigint[],
    p_to_users bigint[], p_asset_ids integer[], p_amounts bigint[], p_codes text[], p_descriptions text[],
    p_metadata jsonb[], p_pending boolean[], p_timeouts integer[], p_references text[], p_holds bigint[]
) RETURNS TABLE (item integer, outcome text, role text, transfer_id bigint, from_account_id bigint,
                 to_account_id bigint)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM accounts a
     WHERE NOT a.is_system
       AND (a.id = ANY (p_from_accounts || p_to_accounts)
            OR a.id IN (SELECT t.from_account_id FROM transfers t WHERE t.id = ANY (p_holds)
                        UNION ALL SELECT t.to_account_id FROM transfers t WHERE t.id = ANY (p_holds))
            OR (a.user_id, a.asset_id) IN (SELECT u.user_id, u.asset_id
                                             FROM unnest(p_from_users || p_to_users, p_asset_ids || p_asset_ids)
                                                  AS u (user_id, asset_id)
                                            WHERE u.user_id IS NOT NULL))
     ORDER BY a.id
       FOR NO KEY UPDATE;
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
                                  p_amounts[i], p_codes[i], p_descriptions[i], p_metadata[i], NULL, p_pending[i],
                                  p_timeouts[i], p_references[i]) f;
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
