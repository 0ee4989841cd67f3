-- Rollback of 0003: changes go one statement at a time again.
DROP FUNCTION apply_balance_changes(bigint, bigint[], text[], text[], text[]);
