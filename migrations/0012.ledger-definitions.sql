-- Where the ledger's functions and views are defined from now on: server/ledger/sql/, applied after
-- the migrations (server/running/migrations.py). Migrations from here on hold tables, indexes and
-- data moves only; 0001-0011 stay as they are, as history.
-- depends: 0011.size-independent-plans
--
-- One row: the digest of the folder last applied, so that a start-up with an unchanged folder
-- applies nothing (no lock on the view, no invalidated plans in running workers), and a SHA-256 of
-- each function and view as that apply left it ({"function f(bigint)": "<hex>", ...}), so that
-- `balance-api check` names any changed by hand since (server/ledger/definitions.py).

CREATE TABLE ledger_definitions (
    singleton  boolean     PRIMARY KEY DEFAULT true CONSTRAINT one_row CHECK (singleton),
    digest     text        NOT NULL,
    catalogue  jsonb       NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
