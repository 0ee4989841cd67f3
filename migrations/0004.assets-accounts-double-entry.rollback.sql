-- Rollback of 0004: back to one balance per user. Only what the old shape can hold is taken back:
-- the default asset's user accounts. A database with anything else (another asset's transfers, an
-- operator account's transfers, a balance below zero) is refused as a whole, so nothing is lost.

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM ledger_entries e JOIN accounts a ON a.id = e.account_id JOIN assets s ON s.id = a.asset_id
                WHERE NOT s.is_default OR (a.user_id IS NULL AND NOT a.is_system)) THEN
        RAISE EXCEPTION 'cannot roll back 0004: transfers exist outside the default asset''s user accounts';
    END IF;
    IF EXISTS (SELECT 1 FROM accounts WHERE user_id IS NOT NULL AND balance < 0) THEN
        RAISE EXCEPTION 'cannot roll back 0004: an account has a negative balance, which the old schema forbids';
    END IF;
END
$$;

DROP FUNCTION transfer_funds(bigint, bigint, bigint, bigint, integer, bigint, text, text, jsonb, text);

DROP FUNCTION apply_balance_changes(bigint, bigint, integer, bigint[], text[], text[], text[], text[]);

DROP FUNCTION resolve_account(bigint, bigint, integer);

ALTER TABLE users ADD COLUMN balance bigint NOT NULL DEFAULT 0 CONSTRAINT balance_not_negative CHECK (balance >= 0);

UPDATE users u SET balance = a.balance FROM accounts a WHERE a.user_id = u.id AND NOT a.is_system;

ALTER TABLE ledger_entries ADD COLUMN user_id bigint REFERENCES users (id), ALTER COLUMN transfer_id DROP NOT NULL;

UPDATE ledger_entries e SET user_id = a.user_id FROM accounts a WHERE a.id = e.account_id;

ALTER TABLE transfers
    ADD COLUMN from_user_id bigint REFERENCES users (id),
    ADD COLUMN to_user_id bigint REFERENCES users (id);

UPDATE transfers t SET from_user_id = a.user_id, to_user_id = b.user_id
  FROM accounts a, accounts b WHERE a.id = t.from_account_id AND b.id = t.to_account_id;

-- transfers with the system account were one-sided entries before
DELETE FROM ledger_entries WHERE user_id IS NULL;

UPDATE ledger_entries e SET transfer_id = NULL FROM transfers t
 WHERE t.id = e.transfer_id AND (t.from_user_id IS NULL OR t.to_user_id IS NULL);

DELETE FROM transfers WHERE from_user_id IS NULL OR to_user_id IS NULL;

ALTER TABLE transfers
    DROP COLUMN asset_id, DROP COLUMN from_account_id, DROP COLUMN to_account_id, DROP COLUMN code,
    DROP COLUMN metadata, DROP COLUMN from_balance, DROP COLUMN to_balance,
    ALTER COLUMN from_user_id SET NOT NULL, ALTER COLUMN to_user_id SET NOT NULL,
    ADD CONSTRAINT transfer_between_two_accounts CHECK (from_user_id <> to_user_id);

ALTER TABLE ledger_entries
    DROP COLUMN account_id,
    ALTER COLUMN user_id SET NOT NULL,
    ALTER COLUMN balance_after SET NOT NULL,
    ADD CONSTRAINT balance_after_not_negative CHECK (balance_after >= 0);

CREATE INDEX ledger_entries_user_id_id ON ledger_entries (user_id, id);

CREATE INDEX ledger_entries_transfer_id ON ledger_entries (transfer_id) WHERE transfer_id IS NOT NULL;

DROP TABLE accounts;

DROP TABLE assets;

-- The functions of 0002 and 0003 as they were (their text is in those migrations).
CREATE FUNCTION transfer_funds(
    p_from bigint, p_to bigint, p_amount bigint, p_description text, p_idempotency_key text
) RETURNS TABLE (
    outcome text, transfer_id bigint, from_balance bigint, to_balance bigint, created_at timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    v_from_balance bigint;
    v_to_balance   bigint;
BEGIN
    PERFORM 1 FROM users WHERE id IN (p_from, p_to) ORDER BY id FOR NO KEY UPDATE;
    SELECT balance INTO v_from_balance FROM users WHERE id = p_from;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'sender_not_found', NULL::bigint, NULL::bigint, NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT balance INTO v_to_balance FROM users WHERE id = p_to;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'receiver_not_found', NULL::bigint, NULL::bigint, NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    IF v_from_balance < p_amount THEN
        RETURN QUERY SELECT 'insufficient_funds', NULL::bigint, NULL::bigint, NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    IF v_to_balance > 9223372036854775807 - p_amount THEN
        RETURN QUERY SELECT 'balance_overflow', NULL::bigint, NULL::bigint, NULL::bigint, NULL::timestamptz;
        RETURN;
    END IF;
    UPDATE users SET balance = balance - p_amount, updated_at = now() WHERE id = p_from
        RETURNING balance INTO v_from_balance;
    UPDATE users SET balance = balance + p_amount, updated_at = now() WHERE id = p_to
        RETURNING balance INTO v_to_balance;
    INSERT INTO transfers (from_user_id, to_user_id, amount, description)
        VALUES (p_from, p_to, p_amount, p_description)
        RETURNING transfers.id, transfers.created_at INTO transfer_id, created_at;
    INSERT INTO ledger_entries (user_id, amount, balance_after, kind, description, idempotency_key, transfer_id)
        VALUES (p_from, -p_amount, v_from_balance, 'transfer_out', p_description, p_idempotency_key, transfer_id),
               (p_to,    p_amount, v_to_balance,   'transfer_in',  p_description, p_idempotency_key, transfer_id);
    RETURN QUERY SELECT 'transferred', transfer_id, v_from_balance, v_to_balance, created_at;
END;
$$;

CREATE FUNCTION apply_balance_changes(
    p_user_id bigint, p_amounts bigint[], p_kinds text[], p_descriptions text[], p_idempotency_keys text[]
) RETURNS TABLE (balance_after bigint, entry_id bigint, outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    running bigint;
    change bigint;
    applied integer := 0;
BEGIN
    SELECT u.balance INTO running FROM users u WHERE u.id = p_user_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::bigint, NULL::bigint, 'user_not_found'::text
                       FROM generate_subscripts(p_amounts, 1);
        RETURN;
    END IF;
    FOR i IN 1 .. cardinality(p_amounts) LOOP
        change := p_amounts[i];
        IF (change > 0 AND running > 9223372036854775807 - change) OR (change < 0 AND running < -change) THEN
            balance_after := NULL;
            entry_id := NULL;
            outcome := CASE WHEN change > 0 THEN 'balance_overflow' ELSE 'insufficient_funds' END;
        ELSE
            running := running + change;
            INSERT INTO ledger_entries AS e (user_id, amount, balance_after, kind, description, idempotency_key)
            VALUES (p_user_id, change, running, p_kinds[i], p_descriptions[i], p_idempotency_keys[i])
            RETURNING e.id INTO entry_id;
            balance_after := running;
            outcome := 'applied';
            applied := applied + 1;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF applied > 0 THEN
        UPDATE users AS u SET balance = running, updated_at = now() WHERE u.id = p_user_id;
    END IF;
END
$$;
