-- Transfer batches as one function call, and reversals that answer a retry by their reference.
-- depends: 0007.references-and-reversals

-- Apply the items of POST /api/transfers/batch in order, in the caller's transaction, in ONE call
-- (one round trip, whatever the number of items). Item i is p_kinds[i]:
--   'transfer': transfer_funds() with the i-th element of each transfer array (a hold when p_pending[i]);
--   'post' / 'void': resolve_pending_transfer(p_holds[i], ..., p_amounts[i]) (NULL amount: all of it);
--   'refused': refused before reaching the database (e.g. an unknown asset): not run.
-- One row per item run, in order: (item, outcome, role, transfer_id, from_account_id, to_account_id),
-- outcome as the function it called returns it ('transferred', 'reference_exists', 'posted',
-- 'voided' or a refusal's code); for a post or void transfer_id is the hold's id. With p_atomic the
-- loop stops after the first item that is neither made nor found by its reference, and the caller
-- rolls the whole transaction back: all or nothing (TigerBeetle's linked events). Without it a
-- refused item has written nothing (both functions refuse before writing) and the others go on.
--
-- Why this is safe under concurrency (PostgreSQL docs §13.2.1, §13.3.2): before its first item, the
-- call locks every non-system account any item names (by id, by user and asset, or as a side of a
-- hold to post or void) with SELECT ... ORDER BY id FOR NO KEY UPDATE: in ascending id order, the
-- order transfer_funds(), resolve_pending_transfer(), reverse_transfer() and apply_balance_changes()
-- lock in. A batch so never holds one row while waiting for a lower one, and two batches (or a batch
-- and any single operation) cannot each hold a row the other waits for: no deadlock. The locks are
-- held to the commit, so each item sees exactly the effects of the items before it and of what
-- committed before the batch took its locks; the functions it calls take the same locks again
-- (already held: no wait) and do their own checks under them. The system account's row is never
-- locked (migration 0004), so a batch does not queue other changes of the asset behind it.
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

-- 0007's reverse_transfer(), but a reference already taken is answered first: a client retrying
-- "reverse all that is left" with its reference must get the reversal it made, not 422
-- exceeds_reversible_amount because that reversal left nothing (found by the hypothesis state
-- machine, tests/test_ledger_state_machine.py). The reference is looked up under the original's
-- account locks, so a concurrent reversal with the same reference has committed (and is found) or
-- has not started; one that slips past both meets the unique index in transfer_funds() as before.
CREATE OR REPLACE FUNCTION reverse_transfer(p_transfer_id bigint, p_amount bigint, p_code text, p_description text,
                                            p_reference text)
RETURNS TABLE (outcome text, role text, transfer_id bigint, from_account_id bigint, to_account_id bigint,
               from_balance bigint, to_balance bigint, created_at timestamptz)
LANGUAGE plpgsql AS $$
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
                                        p_reference) f;
    IF r.outcome = 'transferred' THEN
        UPDATE transfers t SET reverses = o.id WHERE t.id = r.transfer_id;
        UPDATE transfers t SET reversed_amount = t.reversed_amount + v_amount WHERE t.id = o.id;
    END IF;
    RETURN QUERY SELECT r.outcome, r.role, r.transfer_id, r.from_account_id, r.to_account_id, r.from_balance,
                        r.to_balance, r.created_at;
END
$$;
