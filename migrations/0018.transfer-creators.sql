-- depends: 0017.entry-hash-chains
--
-- Who made each transfer (issue 25): the API key that asked for it (api_keys.id), NULL for a
-- transfer made without authentication or before this migration. The functions that make
-- transfers take it as one more parameter (server/ledger/sql/; their older signatures stay as
-- wrappers, rollback_signatures.sql) and transfer documents show it with the key's name
-- (transfer_documents, documents.sql). No foreign key: its check would lock the key's row
-- (FOR KEY SHARE) with every transfer, every transfer of one key on one row; balance-api check
-- verifies that every creator exists instead.
ALTER TABLE transfers ADD COLUMN created_by bigint;

-- feed_page() now returns transfer_documents rows: a result type changes only by dropping the
-- function (the folder, applied right after the migrations, makes it again)
DROP FUNCTION IF EXISTS feed_page(bigint, bigint, integer, integer, event_type[], integer, bigint, integer);
