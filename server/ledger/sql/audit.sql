-- The audit log: every change that is not a transfer (an asset made; an account opened, changed,
-- frozen, unfrozen or closed; an API key made or revoked; a webhook endpoint made, changed or
-- deleted), with who made it and the target as it was before and after (server/ledger/audit.py
-- reads it, GET /api/audit).
--
-- ## Why it is complete and in order under concurrency
--
-- A row is written by the statement that makes the change (a CTE calling record_audit()), so it
-- commits or rolls back with it: a refused or failed change has no row, a committed one has one.
-- A change of an account's row writes its row under the row lock its UPDATE takes, with the row
-- as it was read under that lock (`before`) and as the UPDATE left it (`after`): two changes of one
-- account are logged in the order they were applied, each before equal to the previous after: an
-- account's row is logged at the position its change feed event gets (the account's new
-- feed_position, events.sql rule 2), not at the transaction's id alone, which a transaction can
-- take (claiming an idempotency key) before it waits for the row lock behind a younger one.
-- Pages are read in (position, id) order and only below the reading snapshot's xmin, as the change
-- feed does (events.sql, rule 1): a position is never below the writing transaction's id, so a
-- row committed later can never land before a cursor already handed out.


-- The document of account row p_account as the API shows it and the change feed stores it: the row
-- with its asset's code and the open holds' sums less the expired ones (holds.sql). Called on a
-- row read under its lock or just returned by the INSERT or UPDATE that took it.
CREATE OR REPLACE FUNCTION account_document(p_account accounts) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    expired_debits bigint := 0;
    expired_credits bigint := 0;
    code text;
BEGIN
    IF p_account.pending_debits > 0 OR p_account.pending_credits > 0 THEN
        SELECT e.debits, e.credits INTO expired_debits, expired_credits FROM expired_holds(p_account.id) e;
    END IF;
    SELECT s.code INTO code FROM assets s WHERE s.id = p_account.asset_id;
    RETURN to_jsonb(p_account) || jsonb_build_object('asset', code,
                                                     'pending_debits', p_account.pending_debits - expired_debits,
                                                     'pending_credits', p_account.pending_credits - expired_credits);
END
$$;


-- Append one row to the audit log at p_position (NULL: this transaction's id): action p_action
-- (e.g. 'account.frozen') on p_target (e.g. 'account:9'), made by key p_actor_key_id named
-- p_actor_name (both NULL without authentication; the key NULL for an API_TOKEN), in request
-- p_request_id; p_before / p_after the target's document (NULL: it did not exist / no longer
-- does). Returns the row's id.
CREATE OR REPLACE FUNCTION record_audit(p_position bigint, p_actor_key_id bigint, p_actor_name text,
                                        p_request_id text, p_action text, p_target text, p_before jsonb,
                                        p_after jsonb) RETURNS bigint
LANGUAGE sql VOLATILE
AS $$
    INSERT INTO audit_log (position, actor_key_id, actor_name, request_id, action, target, before, after)
    VALUES (coalesce(p_position, feed_position_after(NULL)), p_actor_key_id, p_actor_name, p_request_id, p_action,
            p_target, p_before, p_after)
    RETURNING id
$$;
