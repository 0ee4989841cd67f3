-- What is lost: who made each transfer. The functions that take a creator or return
-- transfer_documents go with the column; the folder of the commit rolled back to defines none of
-- them (its migrate applies it). The older signatures (server/ledger/sql/rollback_signatures.sql)
-- stay for the rollbacks of the migrations before this one, which name them.
DROP FUNCTION apply_ledger_batch(text[], bigint[], bigint[], bigint[], bigint[], integer[], bigint[], text[], text[],
                                 jsonb[], boolean[], integer[], text[], bigint[], text[], bigint[]);
DROP FUNCTION apply_transfer_batch(boolean, text[], bigint[], bigint[], bigint[], bigint[], integer[], bigint[],
                                   text[], text[], jsonb[], boolean[], integer[], text[], bigint[], text[], bigint[]);
DROP FUNCTION apply_transfer_batch_in_order(boolean, text[], bigint[], bigint[], bigint[], bigint[], integer[],
                                            bigint[], text[], text[], jsonb[], boolean[], integer[], text[], bigint[],
                                            text[], bigint[]);
DROP FUNCTION reverse_transfer(bigint, bigint, text, text, text, bigint);
DROP FUNCTION transfer_funds(bigint, bigint, bigint, bigint, integer, bigint, text, text, jsonb, text, boolean, integer,
                             text, bigint);
DROP FUNCTION apply_balance_changes(bigint[], bigint[], integer[], bigint[], text[], text[], text[], text[], bigint[]);
DROP FUNCTION feed_page(bigint, bigint, integer, integer, event_type[], integer, bigint, integer);
-- transfer_details as it was before (a view of the tables), so that transfer_documents, which it
-- now reads, can go
CREATE OR REPLACE VIEW transfer_details AS
SELECT t.id, s.code AS asset, t.from_account_id, t.to_account_id, fa.user_id AS from_user_id,
       ta.user_id AS to_user_id, t.amount, t.code, t.description, t.metadata, t.created_at, t.from_balance,
       t.to_balance,
       CASE WHEN t.status = 'pending' AND t.expires_at <= now() THEN 'expired' ELSE t.status END AS status,
       t.expires_at,
       CASE WHEN t.status = 'posted' THEN coalesce(t.posted_amount, t.amount) ELSE 0 END AS posted_amount,
       t.reference, t.reverses, t.reversed_amount, t.status <> 'posted' OR t.resolved_at IS NOT NULL AS made_pending
  FROM transfers t
  JOIN assets s ON s.id = t.asset_id
  JOIN accounts fa ON fa.id = t.from_account_id
  JOIN accounts ta ON ta.id = t.to_account_id;
DROP VIEW transfer_documents;
ALTER TABLE transfers DROP COLUMN created_by;
