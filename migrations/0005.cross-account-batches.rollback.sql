-- Rollback of 0005: apply_balance_changes() takes one account per call again (0004's function,
-- restored as 0004 created it).

DROP FUNCTION apply_balance_changes(bigint[], bigint[], integer[], bigint[], text[], text[], text[], text[]);

-- Apply a batch of signed changes to ONE account, each a transfer between that account and its
-- asset's system account (amount > 0: system -> account; < 0: account -> system), in array order,
-- as ONE statement: one transaction, one round trip. The batcher (server/batching.py) sends every
-- change that queued for an account while its previous statement was in flight; without batching a
-- change is a batch of one. The account is p_account_id, or user p_user_id's account in p_asset_id.
--
-- Semantics are exactly those of applying the changes one at a time in that order: change i is
-- accepted iff the account is open and -overdraft_limit <= running + amount[i] <= coalesce(max_balance,
-- 2^63-1); each accepted change gets its own transfer row and the account's entry with its own
-- balance_after. Result rows come in array order: (account_id, user_id, balance_after, transfer_id,
-- entry_id, outcome), outcome one of applied, insufficient_funds, max_balance_exceeded, balance_overflow,
-- account_frozen, account_closed, user_not_found, account_not_found, same_account (a system account).
--
-- Why this is safe under concurrency (PostgreSQL docs §13.2.1, §13.3.2): SELECT ... FOR NO KEY UPDATE
-- takes the account's row lock before reading balance, limits and status, waiting for any other
-- transaction changing that account (another batch, another worker, a transfer, a freeze) to commit,
-- and then reads the newest committed row. The lock is held to the end of the transaction, so the
-- running sum starts from the true balance and nothing can change it before the UPDATE at the end.
-- The system account's row is neither locked nor read for update nor written (see accounts above),
-- so concurrent batches on different accounts never wait for each other; its balance stays exact
-- because each transfer row moves the same amount out of one side and into the other. The checks are written so that they cannot overflow bigint, and
-- CHECK balance_within_limits stays the last line of defence.
CREATE FUNCTION apply_balance_changes(
    p_account_id bigint,
    p_user_id bigint,
    p_asset_id integer,
    p_amounts bigint[],
    p_kinds text[],
    p_codes text[],
    p_descriptions text[],
    p_idempotency_keys text[]
) RETURNS TABLE (account_id bigint, user_id bigint, balance_after bigint, transfer_id bigint, entry_id bigint,
                outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    acct accounts%ROWTYPE;
    v_missing text;
    v_system bigint;
    running bigint;
    change bigint;
    ceiling bigint;
    applied integer := 0;
BEGIN
    IF p_account_id IS NOT NULL THEN
        SELECT * INTO acct FROM accounts a WHERE a.id = p_account_id FOR NO KEY UPDATE;
    ELSE
        SELECT * INTO acct FROM accounts a WHERE a.user_id = p_user_id AND a.asset_id = p_asset_id FOR NO KEY UPDATE;
    END IF;
    IF NOT FOUND THEN
        v_missing := CASE WHEN p_account_id IS NULL AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = p_user_id)
                          THEN 'user_not_found' ELSE 'account_not_found' END;
        RETURN QUERY SELECT NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, v_missing
                       FROM generate_subscripts(p_amounts, 1);
        RETURN;
    END IF;
    account_id := acct.id;
    IF acct.is_system OR acct.status <> 'open' THEN
        RETURN QUERY SELECT account_id, acct.user_id, NULL::bigint, NULL::bigint, NULL::bigint,
                            CASE WHEN acct.is_system THEN 'same_account' ELSE 'account_' || acct.status END
                       FROM generate_subscripts(p_amounts, 1);
        RETURN;
    END IF;
    SELECT a.id INTO v_system FROM accounts a WHERE a.asset_id = acct.asset_id AND a.is_system;
    running := acct.balance;
    ceiling := coalesce(acct.max_balance, 9223372036854775807);
    user_id := acct.user_id;
    FOR i IN 1 .. cardinality(p_amounts) LOOP
        change := p_amounts[i];
        balance_after := NULL;
        transfer_id := NULL;
        entry_id := NULL;
        IF change > 0 AND running > ceiling - change THEN
            outcome := CASE WHEN acct.max_balance IS NULL THEN 'balance_overflow' ELSE 'max_balance_exceeded' END;
        ELSIF change < 0 AND running < -acct.overdraft_limit - change THEN
            outcome := 'insufficient_funds';
        ELSE
            running := running + change;
            -- the transfer carries both sides; the account's entry carries its running balance
            INSERT INTO transfers AS t (asset_id, from_account_id, to_account_id, amount, code, description,
                                        from_balance, to_balance)
            VALUES (acct.asset_id, CASE WHEN change > 0 THEN v_system ELSE acct.id END,
                    CASE WHEN change > 0 THEN acct.id ELSE v_system END, abs(change), p_codes[i], p_descriptions[i],
                    CASE WHEN change < 0 THEN running END, CASE WHEN change > 0 THEN running END)
            RETURNING t.id INTO transfer_id;
            INSERT INTO ledger_entries AS e (account_id, transfer_id, amount, balance_after, kind, description,
                                             idempotency_key)
            VALUES (acct.id, transfer_id, change, running, p_kinds[i], p_descriptions[i], p_idempotency_keys[i])
            RETURNING e.id INTO entry_id;
            balance_after := running;
            outcome := 'applied';
            applied := applied + 1;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF applied > 0 THEN
        UPDATE accounts AS a SET balance = running, updated_at = now() WHERE a.id = acct.id;
    END IF;
END
$$;
