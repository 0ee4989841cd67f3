-- The wallet API: transfers, idempotency keys, and ledger entries that say why they happened.
-- depends: 0001.users-and-ledger

CREATE TABLE transfers (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    from_user_id  bigint      NOT NULL REFERENCES users (id),
    to_user_id    bigint      NOT NULL REFERENCES users (id),
    amount        bigint      NOT NULL CONSTRAINT transfer_amount_positive CHECK (amount > 0),
    description   text        CONSTRAINT transfer_description_length CHECK (char_length(description) <= 500),
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT transfer_between_two_accounts CHECK (from_user_id <> to_user_id)
);

-- transfer_id has no FOREIGN KEY on purpose: a foreign key's row trigger would fire on EVERY
-- ledger insert, adjustments included, inside the hot account's row-lock window (measured: about
-- 5% slower on the 10,000-request burst). Its only writer is transfer_funds() below, which inserts
-- the transfer and its two entries in one transaction; the tests check that every transfer has
-- exactly its two entries.
ALTER TABLE ledger_entries
    ADD COLUMN description     text   CONSTRAINT entry_description_length CHECK (char_length(description) <= 500),
    ADD COLUMN idempotency_key text,
    ADD COLUMN transfer_id     bigint;

-- "every transfer has exactly its two entries" is checked through this index.
CREATE INDEX ledger_entries_transfer_id ON ledger_entries (transfer_id) WHERE transfer_id IS NOT NULL;

-- One row per Idempotency-Key: the request it was first used with (fingerprint: method, path and
-- canonical body) and the outcome stored in the same transaction as the change itself.
CREATE TABLE idempotency_keys (
    key          text        PRIMARY KEY CONSTRAINT key_length CHECK (char_length(key) BETWEEN 1 AND 255),
    fingerprint  text        NOT NULL,
    status       smallint,
    body         text,
    content_type text,
    location     text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
-- Expired keys are purged in created_at order, in small batches.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

-- Move `p_amount` minor units from one user to another, atomically, in one call (one round trip).
--
-- Deadlock freedom: both rows are locked FIRST, in ascending id order (SELECT ... ORDER BY ...
-- FOR NO KEY UPDATE locks rows in output order; PostgreSQL docs, SELECT, "The Locking Clause").
-- Two opposite transfers A->B and B->A thus queue on the same first row instead of each holding
-- one row and waiting for the other. With both rows locked, the balances read are current, so the
-- checks below cannot be invalidated before the updates. A refusal returns before writing anything;
-- the caller's transaction then writes nothing either.
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
