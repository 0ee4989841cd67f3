-- Scoped API keys and the audit log (issue 25).
-- depends: 0015.change-feed
--
-- A key is stored as the SHA-256 of its text only (server/ledger/api_keys.py): the text is shown
-- once, when it is made, and a database dump gives no usable key. Revoking stamps revoked_at; the
-- row stays (the audit log and transfers name it). The service adds a row for each configured
-- token when it starts (configured: every scope), so tokens are keys too.
CREATE TABLE api_keys (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    digest bytea NOT NULL UNIQUE CHECK (length(digest) = 32),
    hint text NOT NULL,
    scopes text[] NOT NULL
        CHECK (scopes <@ ARRAY['read', 'transfers', 'accounts', 'assets', 'webhooks', 'events', 'keys', 'audit']),
    asset_ids integer[],
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    configured boolean NOT NULL DEFAULT false  -- an API_TOKEN / API_TOKENS_FILE token (every scope)
);

-- One row per change that is not a transfer, written by the statement that makes the change, in
-- its transaction (server/ledger/sql/audit.sql). Its place is (position, id) as in the change
-- feed's events: position is the writing transaction's id, so a reader that hands out only
-- positions below its snapshot's xmin never skips a row that commits later with a smaller id.
CREATE TABLE audit_log (
    position bigint NOT NULL,
    id bigint GENERATED ALWAYS AS IDENTITY,
    at timestamptz NOT NULL DEFAULT now(),
    actor_key_id bigint REFERENCES api_keys (id),
    actor_name text,
    request_id text,
    action text NOT NULL,
    target text NOT NULL,
    before jsonb,
    after jsonb,
    PRIMARY KEY (position, id)
);
-- GET /api/audit?target=account:9: one target's rows in the log's order, whatever the log's size
CREATE INDEX audit_log_by_target ON audit_log (target, position, id);
