-- depends: 0002.wallet

-- Apply a batch of signed changes to the balance of ONE user, in array order, as ONE statement (one
-- implicit transaction, one round trip). The per-account batching (server/batching.py)
-- sends every change that queued up for an account while its previous statement was in flight.
--
-- Semantics are exactly those of applying the changes one at a time in that order: change i is
-- accepted iff 0 <= (balance after the accepted changes before it) + amount[i] <= 2^63-1; each
-- accepted change gets its own ledger entry with its own balance_after; a refused change writes
-- nothing and is reported as insufficient_funds (a debit) or balance_overflow (a credit).
-- Result rows come in array order: (balance_after, entry_id, outcome) with outcome applied,
-- insufficient_funds, balance_overflow or user_not_found.
--
-- Why this is safe under concurrency (PostgreSQL docs §13.2.1, §13.3.2): SELECT ... FOR NO KEY
-- UPDATE takes the row lock of the user before reading the balance, waiting for any other transaction
-- changing that user (another batch, another worker, a transfer) to commit, and then reads the
-- newest committed balance. The lock is held to the end of the transaction, so the running sum
-- below starts from the true balance and nothing else can change it before the UPDATE at the end
-- writes the final balance. The check is written so it cannot overflow bigint (as in
-- server/ledger.py), and CHECK (balance >= 0) on users and ledger_entries stays the last defence.
CREATE FUNCTION apply_balance_changes(
    p_user_id bigint,
    p_amounts bigint[],
    p_kinds text[],
    p_descriptions text[],
    p_idempotency_keys text[]
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
