-- What is lost: the API keys (clients fall back to API_TOKEN / API_TOKENS_FILE) and the audit log.
-- The folder's functions that write the log must come back as the folder of the commit rolled back
-- to has them (they are re-applied after every migration).
DROP FUNCTION record_audit(bigint, bigint, text, text, text, text, jsonb, jsonb);
DROP FUNCTION account_document(accounts);
DROP TABLE audit_log;
DROP TABLE api_keys;
