-- System balances: each asset's system account balance, stored in shards (migration 0013) so that
-- reading it costs the same at any size of the ledger (issue 23).
--
-- Why it is safe under concurrency (locking.sql, rules 1-4): a shard row is locked with
-- FOR NO KEY UPDATE SKIP LOCKED, so this function never waits for one: it takes the lowest shard of
-- the asset that no other transaction holds (one this transaction holds already counts as free),
-- and when every one is held it makes a new one, whose number comes from an identity, so two new
-- shards never collide. Waiting for nothing, it adds no edge to the lock order: the callers call it
-- after their account locks, and no deadlock or queue can form on a shard. A shard's rows change
-- only under its lock, so its history rows are numbered in the order of its changes, and the
-- `at` of each is the transaction's start (now(), its transfers' created_at) or the shard's last
-- `at` when that is later: non-decreasing along the numbers, so the last row at or before a moment
-- is one index descent (system_balance_changes' primary key). A rollback takes its shard change and
-- its history row with it.


-- Add p_amounts[i] minor units (what moved into asset p_asset_ids[i]'s system account; negative:
-- out of it) to the system balances, per asset in ascending asset order, and record each asset's
-- sum as one change of one shard. Called by every function that moves money to or from a system
-- account, in the transaction that moves it: apply_balance_changes(), transfer_funds(),
-- apply_transfer_batch() and resolve_pending_transfer() (a post).
CREATE OR REPLACE FUNCTION add_to_system_balances(p_asset_ids integer[], p_amounts bigint[])
RETURNS void LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    r record;
    v_shard bigint;
BEGIN
    FOR r IN SELECT x.asset_id, sum(x.amount) AS amount
               FROM unnest(p_asset_ids, p_amounts) AS x (asset_id, amount)
              GROUP BY x.asset_id HAVING sum(x.amount) <> 0
              ORDER BY x.asset_id
    LOOP
        WITH free AS (
            SELECT b.shard FROM system_balance_shards b
             WHERE b.asset_id = r.asset_id
             ORDER BY b.shard LIMIT 1
               FOR NO KEY UPDATE SKIP LOCKED
        ), changed AS (
            UPDATE system_balance_shards b
               SET balance = b.balance + r.amount, changes = b.changes + 1,
                   changed_at = greatest(b.changed_at, now())
              FROM free
             WHERE b.asset_id = r.asset_id AND b.shard = free.shard
         RETURNING b.shard, b.changed_at, b.changes, b.balance
        )
        INSERT INTO system_balance_changes (asset_id, shard, at, number, amount, balance_after)
        SELECT r.asset_id, c.shard, c.changed_at, c.changes, r.amount, c.balance FROM changed c;
        IF NOT FOUND THEN  -- every shard is another transaction's: a new one, so that nobody waits
            INSERT INTO system_balance_shards (asset_id, balance, changes, changed_at)
                 VALUES (r.asset_id, r.amount, 1, now())
              RETURNING shard INTO v_shard;
            INSERT INTO system_balance_changes (asset_id, shard, at, number, amount, balance_after)
                 VALUES (r.asset_id, v_shard, now(), 1, r.amount, r.amount);
        END IF;
    END LOOP;
END
$$;
