-- Rollback of 0009: 0008's apply_transfer_batch() again, under its own name. 0009 adds no table
-- or column, so nothing stored can be lost.

DROP FUNCTION apply_transfer_batch(boolean, text[], bigint[], bigint[], bigint[], bigint[], integer[], bigint[], text[],
                                   text[], jsonb[], boolean[], integer[], text[], bigint[]);

ALTER FUNCTION apply_transfer_batch_in_order(boolean, text[], bigint[], bigint[], bigint[], bigint[], integer[], bigint[],
                                             text[], text[], jsonb[], boolean[], integer[], text[], bigint[])
    RENAME TO apply_transfer_batch;
