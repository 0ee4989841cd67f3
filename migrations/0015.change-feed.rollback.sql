-- The feed's functions go with it (server/ledger/sql/events.sql); the other functions of the
-- folder write events and must come back as the folder of the commit rolled back to has them.
-- What is lost: the events (re-made from the ledger by 0015 when applied again, as before the feed)
-- and the webhook endpoints with their deliveries.
-- (IF EXISTS: 0018's rollback, run before this one, drops feed_page() with transfer_documents)
DROP FUNCTION IF EXISTS feed_page(bigint, bigint, integer, integer, event_type[], integer, bigint, integer);
DROP FUNCTION feed_span(bigint, bigint, integer, bigint, integer);
DROP FUNCTION record_asset_event(assets, bigint);
DROP FUNCTION record_account_event(event_type, accounts);
DROP FUNCTION feed_position_after(bigint);
DROP TABLE webhook_deliveries;
DROP TABLE webhook_endpoints;
DROP TABLE events;
ALTER TABLE accounts DROP COLUMN feed_position;
DROP TYPE event_type;
