-- Rollback of 0010: 0010 adds one function and stores nothing, so nothing stored can be lost.

DROP FUNCTION apply_ledger_batch(text[], bigint[], bigint[], bigint[], bigint[], integer[], bigint[], text[], text[],
                                 jsonb[], boolean[], integer[], text[], bigint[], text[]);
