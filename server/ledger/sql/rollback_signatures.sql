-- The money functions as the history's rollbacks name them. Issue 25 gave every function that
-- makes a transfer one more parameter, the API key that asks for it (p_created_by, the transfer's
-- created_by), and the batches' functions a result of transfer_documents rows. The rollbacks of
-- migrations 0005-0011 (history: left as they are) drop, alter or redefine these functions by their
-- older argument lists, and transfer_details by name; so each older signature stays, with its
-- parameters' and results' names, as a wrapper that calls the current function without a creator
-- (the service never calls them). A wrapper takes no lock of its own: it is exactly the function it
-- calls (their files say why that one is safe under concurrency).


CREATE OR REPLACE FUNCTION apply_balance_changes(
    p_account_ids bigint[], p_user_ids bigint[], p_asset_ids integer[], p_amounts bigint[], p_kinds text[],
    p_codes text[], p_descriptions text[], p_idempotency_keys text[]
) RETURNS TABLE (account_id bigint, user_id bigint, balance_after bigint, transfer_id bigint, entry_id bigint,
                outcome text)
LANGUAGE sql
AS $$
    SELECT * FROM apply_balance_changes(p_account_ids, p_user_ids, p_asset_ids, p_amounts, p_kinds, p_codes,
                                        p_descriptions, p_idempotency_keys, NULL::bigint[])
$$;


CREATE OR REPLACE FUNCTION transfer_funds(
    p_from_account bigint, p_from_user bigint, p_to_account bigint, p_to_user bigint, p_asset_id integer,
    p_amount bigint, p_code text, p_description text, p_metadata jsonb, p_idempotency_key text,
    p_pending boolean, p_timeout_seconds integer, p_reference text
) RETURNS TABLE (
    outcome text, role text, transfer_id bigint, from_account_id bigint, to_account_id bigint,
    from_balance bigint, to_balance bigint, created_at timestamptz
) LANGUAGE sql
AS $$
    SELECT * FROM transfer_funds(p_from_account, p_from_user, p_to_account, p_to_user, p_asset_id, p_amount, p_code,
                                 p_description, p_metadata, p_idempotency_key, p_pending, p_timeout_seconds,
                                 p_reference, NULL::bigint)
$$;


CREATE OR REPLACE FUNCTION reverse_transfer(p_transfer_id bigint, p_amount bigint, p_code text, p_description text,
                                            p_reference text)
RETURNS TABLE (outcome text, role text, transfer_id bigint, from_account_id bigint, to_account_id bigint,
               from_balance bigint, to_balance bigint, created_at timestamptz)
LANGUAGE sql
AS $$
    SELECT * FROM reverse_transfer(p_transfer_id, p_amount, p_code, p_description, p_reference, NULL::bigint)
$$;


CREATE OR REPLACE FUNCTION apply_transfer_batch_in_order(
    p_atomic boolean, p_kinds text[], p_from_accounts bigint[], p_from_users bigint[], p_to_accounts bigint[],
    p_to_users bigint[], p_asset_ids integer[], p_amounts bigint[], p_codes text[], p_descriptions text[],
    p_metadata jsonb[], p_pending boolean[], p_timeouts integer[], p_references text[], p_holds bigint[],
    p_idempotency_keys text[]
) RETURNS TABLE (item integer, outcome text, role text, transfer_id bigint, from_account_id bigint,
                 to_account_id bigint)
LANGUAGE sql
AS $$
    SELECT * FROM apply_transfer_batch_in_order(p_atomic, p_kinds, p_from_accounts, p_from_users, p_to_accounts,
                                                p_to_users, p_asset_ids, p_amounts, p_codes, p_descriptions,
                                                p_metadata, p_pending, p_timeouts, p_references, p_holds,
                                                p_idempotency_keys, NULL::bigint[])
$$;


-- each item's transfer as transfer_details shows it (the result these signatures always had)
CREATE OR REPLACE FUNCTION apply_transfer_batch(
    p_atomic boolean, p_kinds text[], p_from_accounts bigint[], p_from_users bigint[], p_to_accounts bigint[],
    p_to_users bigint[], p_asset_ids integer[], p_amounts bigint[], p_codes text[], p_descriptions text[],
    p_metadata jsonb[], p_pending boolean[], p_timeouts integer[], p_references text[], p_holds bigint[],
    p_idempotency_keys text[]
) RETURNS TABLE (item integer, outcome text, role text, transfer_id bigint, from_account_id bigint,
                 to_account_id bigint, transfer transfer_details)
LANGUAGE sql
AS $$
    SELECT b.item, b.outcome, b.role, b.transfer_id, b.from_account_id, b.to_account_id,
           (SELECT d FROM transfer_details d WHERE d.id = b.transfer_id)
      FROM apply_transfer_batch(p_atomic, p_kinds, p_from_accounts, p_from_users, p_to_accounts, p_to_users,
                                p_asset_ids, p_amounts, p_codes, p_descriptions, p_metadata, p_pending, p_timeouts,
                                p_references, p_holds, p_idempotency_keys, NULL::bigint[]) b
     ORDER BY b.item
$$;


CREATE OR REPLACE FUNCTION apply_ledger_batch(
    p_kinds text[], p_from_accounts bigint[], p_from_users bigint[], p_to_accounts bigint[], p_to_users bigint[],
    p_asset_ids integer[], p_amounts bigint[], p_codes text[], p_descriptions text[], p_metadata jsonb[],
    p_pending boolean[], p_timeouts integer[], p_references text[], p_holds bigint[], p_idempotency_keys text[]
) RETURNS TABLE (item integer, outcome text, role text, transfer_id bigint, from_account_id bigint,
                 to_account_id bigint, transfer transfer_details, user_id bigint, balance_after bigint,
                 entry_id bigint)
LANGUAGE sql
AS $$
    SELECT b.item, b.outcome, b.role, b.transfer_id, b.from_account_id, b.to_account_id,
           (SELECT d FROM transfer_details d WHERE d.id = (b.transfer).id), b.user_id, b.balance_after, b.entry_id
      FROM apply_ledger_batch(p_kinds, p_from_accounts, p_from_users, p_to_accounts, p_to_users, p_asset_ids,
                              p_amounts, p_codes, p_descriptions, p_metadata, p_pending, p_timeouts, p_references,
                              p_holds, p_idempotency_keys, NULL::bigint[]) b
     ORDER BY b.item
$$;
