-- Accounts and their row locks: the rule every function in this folder follows, and the two
-- functions that find and lock accounts.
--
-- The current definition of every function and view of the ledger lives in this folder, one file
-- per concept. `balance-api migrate` and the service's start-up apply the whole folder after the
-- migrations, in one transaction, under the migration lock, and skip it when nothing changed
-- (server/running/migrations.py). Migrations (migrations/) hold tables, indexes and data moves:
-- read them for what is stored, read this folder for what runs.
--
-- ## Why moving money is safe under concurrency (PostgreSQL docs §13.2.1, §13.3.2, §13.3.4)
--
-- 1. Every balance lives in an `accounts` row. A function that checks and changes an account first
--    takes that row's lock with SELECT ... FOR NO KEY UPDATE, which waits for any other transaction
--    changing the account (a batch of another worker, a transfer, a post, a freeze) to commit and
--    then reads its newest committed row. The lock is held to the commit, so the balance, limits,
--    status and pending sums read under it cannot change before the function's own UPDATE: each
--    check is decided on the true state, and CHECK balance_within_limits (on accounts) stays
--    the last line of defence.
-- 2. Lock order: every function locks the accounts it needs FIRST, all of them, in ascending id
--    order (SELECT ... ORDER BY id FOR NO KEY UPDATE locks rows in output order: the sort runs
--    below the row locking; docs, SELECT, "The Locking Clause"). So no transaction ever holds one
--    account while waiting for a lower one, and two transactions cannot each hold a row the other
--    waits for: no deadlock, between batches, workers, single operations and atomic batches alike.
--    Functions called under locks already held (a batch's items) take the same locks again and
--    wait for nothing. Idempotency keys are claimed (server/ledger/idempotency.py) before any
--    account is locked, so a key never waits behind an account lock either.
-- 3. A system account's row is never locked, updated or written by a money movement: credits and
--    debits of different accounts never queue on it. Its `balance` column stays 0 and it has no
--    ledger entries; its balance is what the transfer rows say (each moves one amount out of one
--    account and into the other). It is stored in shards that no one waits for (system_balances.sql):
--    each money movement to or from a system account adds to a shard no other transaction holds,
--    after its account locks; `balance-api check` recomputes the shards from the transfers.
-- 4. A refusal returns before writing anything, so a refused request changes nothing.
--
-- ## Plans: the same at every size of the ledger (PostgreSQL docs §43.11.2, §19.7.1; issue 27)
--
-- PL/pgSQL keeps the plan of each statement of a function for the life of the connection. Every
-- statement of a function on a request path reaches rows by key (a primary key, (user_id,
-- asset_id), a transfer's reference, an account's pending holds) over a batch of at most
-- TRANSFER_BATCH_MAX_ITEMS / BATCH_MAX_SIZE items, so the one right plan at any size is a nested
-- loop driven by the batch's arrays over those indexes. Each such function therefore sets:
--   plan_cache_mode = force_generic_plan  planned once per connection: a custom plan re-plans every
--                                         call (a batch of 100 took 16-20 ms with custom plans,
--                                         4 ms with generic ones), and the caller's own setting
--                                         (server/running/database.py) stays out of the function;
--   enable_seqscan = off                  no sequential scan where an index can answer, so a plan
--                                         made while a table had one page stays right when it has
--                                         millions of rows (a scan with no index to use is still
--                                         planned: nothing becomes impossible);
--   enable_hashjoin = off,                no join that reads a whole side first (a generic plan
--   enable_mergejoin = off                estimates an array parameter at 10 rows).
-- Each function sets these itself: the plan of a nested statement is kept by the function that
-- runs it, whoever called it first. `balance-api check` reads every row and sets none of this.


-- Resolve an account: by id (p_account_id), or as user p_user_id's account in asset p_asset_id.
-- Returns the id, or NULL with the reason in `missing`: 'user_not_found' or 'account_not_found'.
-- Reads only, locks nothing: callers lock the ids it returns (rule 2).
CREATE OR REPLACE FUNCTION resolve_account(p_account_id bigint, p_user_id bigint, p_asset_id integer, OUT id bigint,
                                OUT missing text)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
BEGIN
    IF p_account_id IS NOT NULL THEN
        SELECT a.id INTO id FROM accounts a WHERE a.id = p_account_id;
    ELSE
        SELECT a.id INTO id FROM accounts a WHERE a.user_id = p_user_id AND a.asset_id = p_asset_id;
        IF id IS NULL AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = p_user_id) THEN
            missing := 'user_not_found';
            RETURN;
        END IF;
    END IF;
    IF id IS NULL THEN
        missing := 'account_not_found';
    END IF;
END
$$;


-- Lock every non-system account a batch names (by id, by user and asset, or as a side of a hold to
-- post or void), in ascending id order (rule 2), before the batch's first item; held to the commit.
-- Each part of the UNION is an index scan (accounts_pkey, transfers_pkey,
-- one_account_per_user_and_asset), and so is the locking SELECT, whatever the size of `accounts`.
-- The callers (apply_transfer_batch(), apply_ledger_batch()) then run their items, whose own
-- locking statements find every row already locked by this transaction.
CREATE OR REPLACE FUNCTION lock_transfer_batch_accounts(p_from_accounts bigint[], p_from_users bigint[], p_to_accounts bigint[],
                                             p_to_users bigint[], p_asset_ids integer[], p_holds bigint[])
RETURNS void LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    v_ids bigint[];
BEGIN
    -- first the ids, then the locks: a locking SELECT that joins a subquery re-runs it for every row
    -- it must re-check after waiting for a concurrent batch (EvalPlanQual, §13.2.1), which made four
    -- concurrent batches of 1,000 spend 0.4 s of CPU each
    v_ids := ARRAY(SELECT unnest(p_from_accounts || p_to_accounts)
                   UNION SELECT t.from_account_id FROM transfers t WHERE t.id = ANY (p_holds)
                   UNION SELECT t.to_account_id FROM transfers t WHERE t.id = ANY (p_holds)
                   UNION SELECT b.id
                           FROM unnest(p_from_users || p_to_users, p_asset_ids || p_asset_ids) AS u (user_id, asset_id)
                           JOIN accounts b ON b.user_id = u.user_id AND b.asset_id = u.asset_id);
    -- the ids as rows of unnest(), each account found by its primary key: a row re-checked after
    -- waiting for a concurrent batch (EvalPlanQual) is then re-read by its key alone. With
    -- `a.id = ANY (v_ids)` instead, PostgreSQL 15 and 16 re-scan the index for every re-checked row
    -- and sort all of v_ids again each time (_bt_preprocess_array_keys): two overlapping batches of
    -- 1,000 took 0.5 s each on PostgreSQL 15, against 45 ms alone (issue 23; PostgreSQL 17 and 18
    -- preprocess the array once)
    PERFORM 1 FROM unnest(v_ids) AS u (id) JOIN accounts a ON a.id = u.id
     WHERE NOT a.is_system
     ORDER BY a.id
       FOR NO KEY UPDATE OF a;
END
$$;
