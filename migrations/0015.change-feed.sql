-- The change feed and webhooks (issue 24): every committed change as an event, in one total order
-- that never changes; webhook endpoints that follow it from a cursor of their own.
-- depends: 0014.indexes-for-reads-at-any-size
--
-- An event is written in the transaction that makes its change, by the SQL that makes it
-- (server/ledger/sql/events.sql says why the order is safe). A row's place in the feed is
-- (position, id): position is at least the writing transaction's id (pg_current_xact_id()) and at
-- least the position of the last event of every account it changes (accounts.feed_position, read
-- under the account's row lock); id comes from a sequence, drawn after the locks. A row holds the
-- events of one kind that one statement wrote for one asset's transfers (transfer_ids, in the order
-- they were applied): an event's place is (position, id, its index in transfer_ids).
CREATE TYPE event_type AS ENUM (
    'asset.created', 'account.created', 'account.updated', 'account.frozen', 'account.unfrozen',
    'account.closed', 'transfer.created', 'transfer.pending', 'transfer.posted', 'transfer.voided'
);

-- the position of the account's last event; 0 before the feed existed
ALTER TABLE accounts ADD COLUMN feed_position bigint NOT NULL DEFAULT 0;

-- A transfer event stores its transfer's id (a batch of 1,000 transfers: one row of 1,000 ids, about
-- 8 bytes each, instead of 1,000 rows of about 110): its document is read from the transfer row,
-- which keeps every field as the change left it (server/ledger/events.py). An account or asset event
-- stores the row right after the change (`data`), as those rows change again later. No foreign
-- keys: a check per event on the money path, and nothing is ever deleted (balance-api check
-- verifies every event's transfer, account and asset instead).
CREATE TABLE events (
    position bigint NOT NULL,
    id bigint GENERATED ALWAYS AS IDENTITY,
    type event_type NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    asset_id integer NOT NULL,
    account_id bigint,
    transfer_ids bigint[],
    data jsonb,
    PRIMARY KEY (position, id)
);

-- The ledger as it was before the feed, as events at position 0 (before every later one), in the
-- order things happened: each asset, each account (its row as it is now: earlier states of
-- accounts were not kept: opened empty, frozen or closed as now), each transfer as made (pending or not) and each hold's resolution.
INSERT INTO events (position, type, occurred_at, asset_id, account_id, transfer_ids, data)
SELECT 0, x.type::event_type, x.at, x.asset_id, x.account_id, CASE WHEN x.transfer_id IS NOT NULL THEN ARRAY[x.transfer_id] END,
       x.data
  FROM (SELECT 'asset.created' AS type, s.created_at AS at, s.id AS asset_id, NULL::bigint AS account_id,
               NULL::bigint AS transfer_id, to_jsonb(s) || jsonb_build_object('system_account_id', a.id) AS data,
               0 AS rank, s.id AS tiebreak
          FROM assets s JOIN accounts a ON a.asset_id = s.id AND a.is_system
        UNION ALL
        -- opened empty and open (what follows it is in the transfers' events), with today's limits
        SELECT 'account.created', a.created_at, a.asset_id, a.id, NULL,
               to_jsonb(a) || jsonb_build_object('asset', s.code, 'balance', 0, 'pending_debits', 0, 'pending_credits', 0,
                                                 'status', 'open', 'updated_at', a.created_at), 1, a.id
          FROM accounts a JOIN assets s ON s.id = a.asset_id
         WHERE NOT a.is_system
        UNION ALL
        -- frozen or closed now: at its last change, as it is now
        SELECT CASE a.status WHEN 'frozen' THEN 'account.frozen' ELSE 'account.closed' END, a.updated_at, a.asset_id,
               a.id, NULL, to_jsonb(a) || jsonb_build_object('asset', s.code), 4, a.id
          FROM accounts a JOIN assets s ON s.id = a.asset_id
         WHERE NOT a.is_system AND a.status <> 'open'
        UNION ALL
        SELECT CASE WHEN t.status = 'posted' AND t.resolved_at IS NULL THEN 'transfer.created' ELSE 'transfer.pending' END,
               t.created_at, t.asset_id, NULL, t.id, NULL, 2, t.id
          FROM transfers t
        UNION ALL
        SELECT 'transfer.' || t.status, t.resolved_at, t.asset_id, NULL, t.id, NULL, 3, t.id
          FROM transfers t
         WHERE t.resolved_at IS NOT NULL) x
 ORDER BY x.rank > 0, x.at, x.rank, x.tiebreak;  -- assets first: an account never comes before its asset

-- Webhook endpoints: where to send the feed, and how far each has got (its cursor: the last event
-- delivered, or skipped as not of its types: position, id and index, server/ledger/events.py). status 'enabled' or 'disabled' (after the retry
-- schedule ran out, or by PATCH); failures counts the attempts failed in a row; next_attempt_at is
-- when the dispatcher tries again.
CREATE TABLE webhook_endpoints (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url text NOT NULL,
    types event_type[],
    description text,
    secret text NOT NULL,
    status text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    cursor_position bigint NOT NULL,
    cursor_id bigint NOT NULL,
    cursor_index integer NOT NULL,
    failures integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz,
    deleted boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Every attempt to deliver an event to an endpoint: its outcome, latency and, after a failure,
-- when the next attempt is due.
CREATE TABLE webhook_deliveries (
    webhook_id bigint NOT NULL REFERENCES webhook_endpoints (id),
    id bigint GENERATED ALWAYS AS IDENTITY,
    event_position bigint NOT NULL,
    event_id bigint NOT NULL,
    event_index integer NOT NULL,
    attempt integer NOT NULL,
    status_code integer,
    latency_ms double precision NOT NULL,
    error text,
    next_retry_at timestamptz,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (webhook_id, id)
);
