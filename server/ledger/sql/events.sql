-- The change feed: every committed change as an event (GET /api/events, GET /api/events/stream,
-- webhooks; server/ledger/events.py reads it), written by the function or statement that makes
-- the change, in its transaction: no queue, no trigger, nothing after the commit.
--
-- ## Why the order never changes (issue 24; docs/concurrency.md, "The change feed")
--
-- A row of `events` holds one event, or the events of one kind one statement wrote for one asset's
-- transfers (transfer_ids, in the order applied). Its place is (position, id), an event's
-- (position, id, index in transfer_ids). id is drawn from the events' identity sequence when the row
-- is inserted, always after the writer holds every account lock it takes (locking.sql, rule 2).
-- position = greatest(the writing transaction's id, the feed_position of every account it
-- changes), read under those locks, and the writer stores it as those accounts' feed_position.
--   1. Handed out only below the horizon: a reader hands out events with
--      position < pg_snapshot_xmin(pg_current_snapshot()), the oldest transaction still running.
--      Every transaction that has not committed yet, or starts later, has an id at or above that
--      horizon, and so writes positions at or above it (a position is never below its writer's
--      id): no event can ever appear before a cursor already handed out, and reading from any
--      cursor at any later time returns exactly the events after it. Every committed
--      transaction below the horizon is visible to the reader's snapshot. Positions are never
--      above the largest transaction id given out (each is a transaction id or the position of
--      an earlier event), so the horizon passes every committed event once the transactions
--      running at its commit have ended.
--   2. Per account, the order in which changes were applied: a change waits for the account's
--      row lock, so it reads the feed_position the previous change of that account committed and
--      writes a position at least as large, with ids drawn after that commit, so larger (the
--      sequence has no per-session cache: nextval() is increasing in real time). Ordering by the
--      transaction id alone would not do: a transaction gets its id at its first write, which can
--      be a lock taken before it waits for another account's lock behind a younger transaction.
--      A system account is never locked (locking.sql, rule 3); its changes have no order of
--      application (they land in different shards, system_balances.sql) and the feed has none
--      for it either.
--   3. Exactly once: an event is a row of the change's own transaction, so a refused,
--      rolled-back or timed-out change has none, and a committed one has one.
-- A long transaction holds the horizon back: events committed after it started wait for it to
-- end (never lost or reordered, only later); `SET idle_in_transaction_session_timeout` bounds
-- idle ones (docs/operations.md).


-- The position of a transaction's next events, given p_after, the largest feed_position among
-- the accounts they change (NULL: none), which the caller holds locked: never below its own
-- transaction id (pg_current_xact_id() gives it one if it has none yet; PostgreSQL docs §9.27.5).
CREATE OR REPLACE FUNCTION feed_position_after(p_after bigint) RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$
    SELECT greatest(pg_current_xact_id()::text::bigint, p_after)
$$;


-- Record an account event: p_type of account row p_account as the change just left it (the row
-- an INSERT or UPDATE ... RETURNING returned, so under its lock, with feed_position already set by
-- that statement with feed_position_after()). The document stored is account_document() (audit.sql):
-- open holds counted as the API does, expired ones excluded. Returns the account's id.
CREATE OR REPLACE FUNCTION record_account_event(p_type event_type, p_account accounts) RETURNS bigint
LANGUAGE sql VOLATILE
AS $$
    INSERT INTO events (position, type, asset_id, account_id, data)
    VALUES (p_account.feed_position, p_type, p_account.asset_id, p_account.id, account_document(p_account))
    RETURNING account_id
$$;


-- Record asset.created for asset row p_asset and its system account p_system_account_id, in the
-- transaction that makes them (no account of it can have changed yet). Returns p_asset's id.
CREATE OR REPLACE FUNCTION record_asset_event(p_asset assets, p_system_account_id bigint) RETURNS integer
LANGUAGE sql VOLATILE
AS $$
    INSERT INTO events (position, type, asset_id, data)
    VALUES (feed_position_after(NULL), 'asset.created', p_asset.id,
            to_jsonb(p_asset) || jsonb_build_object('system_account_id', p_system_account_id))
    RETURNING asset_id
$$;


-- The events after (p_position, p_id, p_index) and below the horizon p_horizon (rule 1 above), in
-- feed order (a row's transfer events in the order of its transfer_ids), at most p_span: one
-- descent of the primary key (position, id), each row's ids unnested in order, read lazily (a
-- caller's LIMIT stops it). Inlined into feed_page()'s statements (a single SELECT, no settings of
-- its own), so it is planned with theirs.
CREATE OR REPLACE FUNCTION feed_span(p_position bigint, p_id bigint, p_index integer, p_horizon bigint,
                                     p_span integer)
RETURNS TABLE (at_position bigint, at_id bigint, k integer, type event_type, occurred_at timestamptz, asset_id integer,
               account_id bigint, transfer_id bigint, data jsonb)
LANGUAGE sql STABLE
AS $$
    SELECT e.position, e.id, x.k::integer, e.type, e.occurred_at, e.asset_id, e.account_id, x.transfer_id, e.data
      FROM events e
     CROSS JOIN LATERAL unnest(coalesce(e.transfer_ids, '{NULL}'::bigint[])) WITH ORDINALITY AS x (transfer_id, k)
     WHERE (e.position, e.id) >= (p_position, p_id) AND e.position < p_horizon
       AND (e.position, e.id, x.k) > (p_position, p_id, p_index)
     ORDER BY e.position, e.id, x.k
     LIMIT p_span
$$;


-- One page of the feed (server/ledger/events.py): of the events feed_span() gives after (p_position,
-- p_id, p_index), below the horizon of this statement's snapshot, those that pass the filters
-- (p_types; asset p_asset_id; account p_account_id: either side of a transfer, or the account of an
-- account event), at most p_limit of them among the next p_span at most. The span is read in order
-- and stopped as soon as p_limit events have passed; a transfer event's document is its row of
-- transfer_documents, by primary key. When fewer passed, one row more (is_last) gives the last event
-- looked at, so that a filtered read that matched nothing still moves past what it read. The
-- horizon is taken from the snapshot the page is read in, so every event below it that committed is
-- in that snapshot. Reads only, locks nothing. Bitmap scans are off: for a span of thousands the
-- planner otherwise reads every event after the cursor and sorts them to keep the first
-- (tests/test_plans_from_an_empty_database.py found 150,000 rows read for 3 pages).
CREATE OR REPLACE FUNCTION feed_page(p_position bigint, p_id bigint, p_index integer, p_span integer,
                                     p_types event_type[], p_asset_id integer, p_account_id bigint, p_limit integer)
RETURNS TABLE (event_position bigint, event_id bigint, event_index integer, type text, occurred_at timestamptz,
               data jsonb, transfer transfer_documents, is_last boolean)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
AS $$
DECLARE
    horizon bigint := pg_snapshot_xmin(pg_current_snapshot())::text::bigint;
    passed integer;
BEGIN
    RETURN QUERY
    SELECT s.at_position, s.at_id, s.k, s.type::text, s.occurred_at, s.data,
           (SELECT d FROM transfer_documents d WHERE d.id = s.transfer_id), false
      FROM feed_span(p_position, p_id, p_index, horizon, p_span) s
     WHERE (p_types IS NULL OR s.type = ANY (p_types))
       AND (p_asset_id IS NULL OR s.asset_id = p_asset_id)
       AND (p_account_id IS NULL OR s.account_id = p_account_id
            OR EXISTS (SELECT 1 FROM transfers t
                        WHERE t.id = s.transfer_id AND p_account_id IN (t.from_account_id, t.to_account_id)))
     ORDER BY s.at_position, s.at_id, s.k
     LIMIT p_limit;
    GET DIAGNOSTICS passed = ROW_COUNT;
    IF passed < p_limit THEN  -- the whole span was looked at: where it ended
        RETURN QUERY
        SELECT s.at_position, s.at_id, s.k, NULL::text, NULL::timestamptz, NULL::jsonb, NULL::transfer_documents, true
          FROM feed_span(p_position, p_id, p_index, horizon, p_span) s
         ORDER BY s.at_position DESC, s.at_id DESC, s.k DESC
         LIMIT 1;
    END IF;
END
$$;
