-- The system balance is read from the accounts and transfers again (the folder of the commit
-- rolled back to); nothing else is lost: the shards only summed the transfers.
DROP TABLE system_balance_changes;
DROP TABLE system_balance_shards;
