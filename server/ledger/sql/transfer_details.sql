-- A transfer as the API shows it (server/ledger/transfer_reads.py reads these columns): the asset's
-- code, both sides' users, the balances its entries recorded, a pending hold past its expires_at as
-- 'expired', what a posted hold moved. A view reads; it locks nothing. apply_transfer_batch(),
-- apply_ledger_batch() and feed_page() (events.sql) return rows of it, so a change of its columns
-- changes their result type (a migration must then drop and recreate them).
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
