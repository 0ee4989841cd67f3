-- The documents of transfers, as the API shows them: views that read and lock nothing. This file
-- sorts before the files whose functions return their rows (a function's result type must exist
-- when it is made, even with check_function_bodies off).
--
-- A transfer document, as the API shows it (server/ledger/transfer_reads.py reads these columns):
-- the asset's code, both sides' users, the balances its entries recorded, a pending hold past its
-- expires_at as 'expired', what a posted hold moved, and who made it (issue 25): the API key's id
-- and name (NULL for a transfer made without authentication, or before migration 0018). Every
-- transfer read, apply_transfer_batch(), apply_ledger_batch() and feed_page() (events.sql) return
-- rows of it. A view reads; it locks nothing; the key's row is read by primary key (a key's name
-- never changes).
--
-- It reads the tables themselves, not another view: replacing a view takes its ACCESS EXCLUSIVE
-- lock, and a query takes the lock of the view it names before those of the views inside it, so a
-- view over a view replaced inner-first (the order they must be created in) would deadlock with
-- a request reading the outer one while the folder is applied.
CREATE OR REPLACE VIEW transfer_documents AS
SELECT t.id, s.code AS asset, t.from_account_id, t.to_account_id, fa.user_id AS from_user_id,
       ta.user_id AS to_user_id, t.amount, t.code, t.description, t.metadata, t.created_at, t.from_balance,
       t.to_balance,
       CASE WHEN t.status = 'pending' AND t.expires_at <= now() THEN 'expired' ELSE t.status END AS status,
       t.expires_at,
       CASE WHEN t.status = 'posted' THEN coalesce(t.posted_amount, t.amount) ELSE 0 END AS posted_amount,
       t.reference, t.reverses, t.reversed_amount, t.status <> 'posted' OR t.resolved_at IS NOT NULL AS made_pending,
       t.created_by, k.name AS created_by_name
  FROM transfers t
  JOIN assets s ON s.id = t.asset_id
  JOIN accounts fa ON fa.id = t.from_account_id
  JOIN accounts ta ON ta.id = t.to_account_id
  LEFT JOIN api_keys k ON k.id = t.created_by;


-- transfer_documents without its creator: the columns that the history migrations (0009) gave
-- this view, and they stay so. The rollbacks of 0009-0011 drop and recreate the functions that
-- return its rows (the wrappers in rollback_signatures.sql still do), and a view's columns change
-- only by dropping it and those functions. The service reads no row of it: no request holds its
-- lock while it waits for transfer_documents' (the deadlock above).
CREATE OR REPLACE VIEW transfer_details AS
SELECT id, asset, from_account_id, to_account_id, from_user_id, to_user_id, amount, code, description, metadata,
       created_at, from_balance, to_balance, status, expires_at, posted_amount, reference, reverses,
       reversed_amount, made_pending
  FROM transfer_documents;
