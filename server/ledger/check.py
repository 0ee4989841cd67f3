"""``balance-api check``: verify the ledger's invariants over the whole database.

Each check is one SQL query returning the offending rows (at most 20 are named); all of them pass
on a consistent database. Run it after a crash, a restore or a manual fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from server.ledger.definitions import CATALOGUE, HAS_DEFINITIONS_TABLE, definitions_digest

SAMPLE = 20

# What a transfer moved: a plain transfer its amount, a posted hold what was posted, any other hold 0.
MOVED = "(CASE WHEN t.status = 'posted' THEN coalesce(t.posted_amount, t.amount) ELSE 0 END)"

# (name, what must hold, query returning offenders as one text column)
CHECKS: list[tuple[str, str, str]] = [
    ("conservation", "per asset, the sum of all balances is 0: the stored balances of its accounts plus its system "
                     "account's, recomputed from the transfer rows (amounts moved in minus amounts moved out)", f"""
        SELECT format('asset %s: balances sum to %s', s.code, coalesce(b.total, 0) + coalesce(x.total, 0))
          FROM assets s
          LEFT JOIN (SELECT asset_id, sum(balance) AS total FROM accounts WHERE NOT is_system GROUP BY asset_id) b
            ON b.asset_id = s.id
          LEFT JOIN (SELECT a.asset_id, sum(CASE WHEN t.to_account_id = a.id THEN {MOVED} ELSE -{MOVED} END) AS total
                       FROM transfers t JOIN accounts a ON a.is_system AND a.id IN (t.from_account_id, t.to_account_id)
                      GROUP BY a.asset_id) x
            ON x.asset_id = s.id
         WHERE coalesce(b.total, 0) + coalesce(x.total, 0) <> 0
         ORDER BY s.id LIMIT {SAMPLE}"""),
    ("one system account per asset", "every asset has exactly one system account", f"""
        SELECT format('asset %s: %s system accounts', s.code, count(a.id))
          FROM assets s LEFT JOIN accounts a ON a.asset_id = s.id AND a.is_system
         GROUP BY s.id, s.code HAVING count(a.id) <> 1
         ORDER BY s.id LIMIT {SAMPLE}"""),
    ("balance = sum of entries", "every account's stored balance equals the sum of its ledger entries", f"""
        SELECT format('account %s: balance %s, entries sum to %s', a.id, a.balance, coalesce(s.total, 0))
          FROM accounts a
          LEFT JOIN (SELECT account_id, sum(amount) AS total FROM ledger_entries GROUP BY account_id) s
            ON s.account_id = a.id
         WHERE (NOT a.is_system AND a.balance <> coalesce(s.total, 0)) OR (a.is_system AND (a.balance <> 0 OR s.total IS NOT NULL))
         ORDER BY a.id LIMIT {SAMPLE}"""),
    ("balances within limits", "no available balance (balance minus open holds) is below minus its overdraft "
                               "limit, and no balance plus open incoming holds is above its maxBalance", f"""
        SELECT format('account %s: balance %s, pending %s out / %s in, overdraft limit %s, max balance %s', a.id,
                      a.balance, a.pending_debits - coalesce(x.debits, 0), a.pending_credits - coalesce(x.credits, 0),
                      a.overdraft_limit, coalesce(a.max_balance::text, 'none'))
          FROM accounts a LEFT JOIN LATERAL expired_holds(a.id) x ON true
         WHERE NOT a.is_system AND (a.balance - a.pending_debits + coalesce(x.debits, 0) < -a.overdraft_limit
                                    OR a.balance + a.pending_credits - coalesce(x.credits, 0) > a.max_balance)
         ORDER BY a.id LIMIT {SAMPLE}"""),
    ("pending sums", "every account's pending debits and credits are the sums of its holds still pending "
                     "(a system account's are 0: it is never written)", f"""
        SELECT format('account %s: pending %s out / %s in, holds sum to %s / %s', a.id, a.pending_debits,
                      a.pending_credits, coalesce(o.total, 0), coalesce(i.total, 0))
          FROM accounts a
          LEFT JOIN (SELECT from_account_id AS id, sum(amount) AS total FROM transfers WHERE status = 'pending'
                      GROUP BY from_account_id) o ON o.id = a.id
          LEFT JOIN (SELECT to_account_id AS id, sum(amount) AS total FROM transfers WHERE status = 'pending'
                      GROUP BY to_account_id) i ON i.id = a.id
         WHERE (NOT a.is_system AND (a.pending_debits <> coalesce(o.total, 0) OR a.pending_credits <> coalesce(i.total, 0)))
            OR (a.is_system AND (a.pending_debits <> 0 OR a.pending_credits <> 0))
         ORDER BY a.id LIMIT {SAMPLE}"""),
    ("balance_after chain", "each entry's balance_after is the running sum of its account's entries up to it", f"""
        SELECT format('entry %s of account %s: balance_after %s, running sum %s', id, account_id, balance_after, running)
          FROM (SELECT id, account_id, balance_after,
                       sum(amount) OVER (PARTITION BY account_id ORDER BY id) AS running FROM ledger_entries) e
         WHERE balance_after IS DISTINCT FROM running
         ORDER BY id LIMIT {SAMPLE}"""),
    ("transfers balanced", "every transfer moves one amount between two accounts of its asset, and each non-system "
                           "side has exactly its entry: -amount on the sending account, +amount on the receiving one, "
                           "with the balance the transfer records (a hold: none while pending, voided or expired; "
                           "the posted amount once posted)", f"""
        WITH per_transfer AS (  -- one hash join and aggregate over all entries: there is no index by transfer
            SELECT x.transfer_id, count(*) AS entries,
                   count(*) FILTER (WHERE x.account_id = t.from_account_id AND x.amount = -{MOVED}
                                      AND x.balance_after = t.from_balance) AS from_entries,
                   count(*) FILTER (WHERE x.account_id = t.to_account_id AND x.amount = {MOVED}
                                      AND x.balance_after = t.to_balance) AS to_entries
              FROM ledger_entries x
              JOIN transfers t ON t.id = x.transfer_id
             GROUP BY x.transfer_id)
        SELECT format('transfer %s: %s entries', t.id, coalesce(e.entries, 0))
          FROM transfers t
          JOIN accounts f ON f.id = t.from_account_id
          JOIN accounts d ON d.id = t.to_account_id
          LEFT JOIN per_transfer e ON e.transfer_id = t.id
         WHERE f.asset_id <> t.asset_id OR d.asset_id <> t.asset_id
            OR (t.status <> 'posted' AND coalesce(e.entries, 0) <> 0)
            OR (t.status = 'posted' AND (
                coalesce(e.entries, 0) <> (NOT f.is_system)::int + (NOT d.is_system)::int
             OR coalesce(e.from_entries, 0) <> (NOT f.is_system)::int
             OR coalesce(e.to_entries, 0) <> (NOT d.is_system)::int))
            OR (f.is_system AND t.from_balance IS NOT NULL) OR (d.is_system AND t.to_balance IS NOT NULL)
         ORDER BY t.id LIMIT {SAMPLE}"""),
    ("reversals", "what a transfer says has been reversed of it is the sum of its reversals, at most what it "
                  "moved, and each reversal runs the opposite way between the same two accounts", f"""
        SELECT format('transfer %s: reversed %s, reversals sum to %s, moved %s', t.id, t.reversed_amount,
                      coalesce(r.total, 0), {MOVED})
          FROM transfers t
          LEFT JOIN (SELECT reverses, sum(amount) AS total FROM transfers WHERE reverses IS NOT NULL
                      GROUP BY reverses) r ON r.reverses = t.id
         WHERE t.reversed_amount <> coalesce(r.total, 0) OR t.reversed_amount > {MOVED}
        UNION ALL
        SELECT format('transfer %s: reverses transfer %s, which does not run the other way', x.id, x.reverses)
          FROM transfers x LEFT JOIN transfers o ON o.id = x.reverses
         WHERE x.reverses IS NOT NULL AND (o.id IS NULL OR o.from_account_id <> x.to_account_id
                                           OR o.to_account_id <> x.from_account_id)
        LIMIT {SAMPLE}"""),
    ("accounts exist", "every account and asset a transfer or an entry names exists (in place of foreign keys, "
                       "which would lock the system account's row on every change)", f"""
        SELECT format('transfer %s: names a missing account or asset', t.id) FROM transfers t
         WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = t.from_account_id)
            OR NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = t.to_account_id)
            OR NOT EXISTS (SELECT 1 FROM assets s WHERE s.id = t.asset_id)
        UNION ALL
        SELECT format('entry %s: account %s does not exist', e.id, e.account_id) FROM ledger_entries e
         WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = e.account_id)
        LIMIT {SAMPLE}"""),
    ("entries belong to transfers", "every entry names a transfer that exists", f"""
        SELECT format('entry %s: transfer %s does not exist', e.id, e.transfer_id)
          FROM ledger_entries e LEFT JOIN transfers t ON t.id = e.transfer_id
         WHERE t.id IS NULL
         ORDER BY e.id LIMIT {SAMPLE}"""),
]

# The stored system balances (migration 0013 on): run only on a schema that has them, as a
# rollback below 0013 leaves the transfers as the only record of them.
SYSTEM_BALANCES = ("system balances", "each asset's stored system balance (the sum of its shards, server/ledger/sql/"
                    "system_balances.sql) is what its transfers moved into its system account minus out; each "
                    "shard's history is numbered 1, 2, ... without a gap, its times never go back, each "
                    "balance_after is the running sum of its changes and the last one is the shard's balance", f"""
    SELECT format('asset %s: system balance stored %s, transfers say %s', s.code, coalesce(b.total, 0),
                  coalesce(x.total, 0))
      FROM assets s
      LEFT JOIN (SELECT asset_id, sum(balance) AS total FROM system_balance_shards GROUP BY asset_id) b
        ON b.asset_id = s.id
      LEFT JOIN (SELECT a.asset_id, sum(CASE WHEN t.to_account_id = a.id THEN {MOVED} ELSE -{MOVED} END) AS total
                   FROM transfers t JOIN accounts a ON a.is_system AND a.id IN (t.from_account_id, t.to_account_id)
                  GROUP BY a.asset_id) x
        ON x.asset_id = s.id
     WHERE coalesce(b.total, 0) <> coalesce(x.total, 0)
    UNION ALL
    SELECT format('shard %s of asset %s: change %s (%s, balance_after %s) %s', c.shard, c.asset_id, c.number,
                  c.at, c.balance_after,
                  CASE WHEN c.number <> c.position THEN 'is out of sequence'
                       WHEN c.at < c.previous_at THEN 'is earlier than the change before it'
                       ELSE format('is not the running sum %s', c.running) END)
      FROM (SELECT h.*, row_number() OVER w AS position, lag(h.at) OVER w AS previous_at,
                   sum(h.amount) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running
              FROM system_balance_changes h
            WINDOW w AS (PARTITION BY h.asset_id, h.shard ORDER BY h.number)) c
     WHERE c.number <> c.position OR c.at < c.previous_at OR c.balance_after <> c.running
    UNION ALL
    SELECT format('shard %s of asset %s: balance %s after %s changes, its history says %s after %s', b.shard,
                  b.asset_id, b.balance, b.changes, coalesce(l.balance_after, 0), coalesce(l.number, 0))
      FROM system_balance_shards b
      LEFT JOIN LATERAL (SELECT h.number, h.balance_after FROM system_balance_changes h
                          WHERE h.asset_id = b.asset_id AND h.shard = b.shard
                          ORDER BY h.number DESC LIMIT 1) l ON true
     WHERE b.balance <> coalesce(l.balance_after, 0) OR b.changes <> coalesce(l.number, 0)
    UNION ALL
    SELECT format('change %s of shard %s: asset %s has no such shard', h.number, h.shard, h.asset_id)
      FROM system_balance_changes h
     WHERE NOT EXISTS (SELECT 1 FROM system_balance_shards b WHERE b.asset_id = h.asset_id AND b.shard = h.shard)
    LIMIT {SAMPLE}""")
HAS_SYSTEM_BALANCES = "SELECT to_regclass('system_balance_shards') IS NOT NULL"

# The change feed (migration 0015 on; server/ledger/sql/events.sql): every transfer has the event of
# its making and, once resolved, of its resolution, exactly once each and of the right type; every
# event names a subject that exists, of its asset.
EVENTS = ("change feed", "every transfer has exactly one event of its making (transfer.created, or transfer.pending "
                         "for a hold) and a resolved hold exactly one of its resolution (transfer.posted or "
                         "transfer.voided, as its status says); every event names an existing transfer, account or "
                         "asset of its asset", f"""
        (SELECT format('transfer %s (%s%s): %s event(s) of its making (%s), %s of its resolution (%s)', t.id,
                       t.status, CASE WHEN t.resolved_at IS NULL THEN '' ELSE ', resolved' END, coalesce(m.n, 0),
                       coalesce(m.types, 'none'), coalesce(r.n, 0), coalesce(r.types, 'none'))
           FROM transfers t
           LEFT JOIN (SELECT x.transfer_id, count(*) AS n, string_agg(e.type::text, ',') AS types
                        FROM events e CROSS JOIN LATERAL unnest(e.transfer_ids) AS x (transfer_id)
                       WHERE e.type IN ('transfer.created', 'transfer.pending') GROUP BY x.transfer_id) m
             ON m.transfer_id = t.id
           LEFT JOIN (SELECT x.transfer_id, count(*) AS n, string_agg(e.type::text, ',') AS types
                        FROM events e CROSS JOIN LATERAL unnest(e.transfer_ids) AS x (transfer_id)
                       WHERE e.type IN ('transfer.posted', 'transfer.voided') GROUP BY x.transfer_id) r
             ON r.transfer_id = t.id
          WHERE m.n IS DISTINCT FROM 1
             OR m.types <> CASE WHEN t.status = 'posted' AND t.resolved_at IS NULL THEN 'transfer.created'
                                ELSE 'transfer.pending' END
             OR coalesce(r.n, 0) <> CASE WHEN t.resolved_at IS NULL THEN 0 ELSE 1 END
             OR r.types <> 'transfer.' || t.status
          ORDER BY t.id LIMIT {SAMPLE})
        UNION ALL
        (SELECT format('event %s (%s): its %s does not exist or is not of asset %s', e.id, e.type,
                       CASE WHEN x.transfer_id IS NOT NULL THEN 'transfer ' || x.transfer_id
                            WHEN e.account_id IS NOT NULL THEN 'account ' || e.account_id ELSE 'asset' END, e.asset_id)
           FROM events e
           LEFT JOIN LATERAL unnest(e.transfer_ids) AS x (transfer_id) ON true
          WHERE CASE WHEN e.type::text LIKE 'transfer.%%'
                     THEN x.transfer_id IS NULL
                          OR NOT EXISTS (SELECT 1 FROM transfers t
                                          WHERE t.id = x.transfer_id AND t.asset_id = e.asset_id)
                     WHEN e.type::text LIKE 'account.%%'
                     THEN NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = e.account_id AND a.asset_id = e.asset_id)
                     ELSE NOT EXISTS (SELECT 1 FROM assets s WHERE s.id = e.asset_id) END
          ORDER BY e.id LIMIT {SAMPLE})""")
HAS_EVENTS = "SELECT to_regclass('events') IS NOT NULL"

# API keys and the audit log (migration 0016 on; server/ledger/sql/audit.sql): every key is stored
# as a 32-byte digest only, a configured token's key has every scope, and a key's state agrees with
# its log (revoked exactly when a key.revoked entry names it, once); every entry names an existing
# target and a known action.
AUDIT = ("audit log", "every API key is a digest with known scopes, a configured token's has every scope, and a "
                      "key is revoked exactly when the log has one key.revoked entry for it; every audit entry "
                      "names an existing target", f"""
        (SELECT format('key %s (%s): %s', k.id, k.name,
                       CASE WHEN length(k.digest) <> 32 THEN 'its digest is not 32 bytes'
                            WHEN k.configured AND cardinality(k.scopes) <> 8
                            THEN 'a configured token without every scope'
                            ELSE format('%s, %s key.revoked entries', CASE WHEN k.revoked_at IS NULL
                                        THEN 'not revoked' ELSE 'revoked' END, coalesce(r.n, 0)) END)
           FROM api_keys k
           LEFT JOIN (SELECT target, count(*) AS n FROM audit_log WHERE action = 'key.revoked' GROUP BY target) r
             ON r.target = 'key:' || k.id
          WHERE length(k.digest) <> 32 OR (k.configured AND cardinality(k.scopes) <> 8)
             OR (k.revoked_at IS NOT NULL) <> (coalesce(r.n, 0) = 1) OR r.n > 1
          ORDER BY k.id LIMIT {SAMPLE})
        UNION ALL
        (SELECT format('audit entry %s (%s): its target %s does not exist', a.id, a.action, a.target)
           FROM audit_log a
          CROSS JOIN LATERAL (SELECT split_part(a.target, ':', 1) AS kind, split_part(a.target, ':', 2) AS name) t
          CROSS JOIN LATERAL (SELECT CASE WHEN t.name ~ '^[0-9]{{1,18}}$' THEN t.name::bigint END AS id) n
          WHERE NOT CASE t.kind
                    WHEN 'asset' THEN EXISTS (SELECT 1 FROM assets s WHERE s.code = t.name)
                    WHEN 'account' THEN EXISTS (SELECT 1 FROM accounts x WHERE x.id = n.id)
                    WHEN 'key' THEN EXISTS (SELECT 1 FROM api_keys k WHERE k.id = n.id)
                    WHEN 'webhook' THEN EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.id = n.id)
                    ELSE false END
          ORDER BY a.id LIMIT {SAMPLE})""")
HAS_AUDIT = "SELECT to_regclass('audit_log') IS NOT NULL"

# Tamper-evident histories (migration 0017 on; server/ledger/sql/entry_hashes.sql): every entry's
# hash is entry_hash() of its account's previous entry's stored hash and its own content, and every
# account's head is its last entry's hash. Per account, the first entry that does not match is
# named: an entry edited (its own hash), deleted (the next one's), or moved (the first of the two):
# each link is checked against the stored hash before it, so the entries after it still match.
ENTRY_HASHES = ("entry hashes", "each ledger entry's hash is the SHA-256 of its account's previous entry's hash and "
                                "its own account, transfer, amount and balance_after, and each account's head hash "
                                "is its last entry's", f"""
        (SELECT format('account %s: entry %s does not match its hash chain (edited, moved, or an entry before it '
                       'deleted)', c.account_id, min(c.id))
           FROM (SELECT e.id, e.account_id, e.hash,
                        entry_hash(lag(e.hash) OVER (PARTITION BY e.account_id ORDER BY e.id), e.account_id,
                                   e.transfer_id, e.amount, e.balance_after) AS expected
                   FROM ledger_entries e) c
          WHERE c.hash IS DISTINCT FROM c.expected
          GROUP BY c.account_id
          ORDER BY c.account_id LIMIT {SAMPLE})
        UNION ALL
        (SELECT format('account %s: head hash %s, its last entry%s', a.id,
                       coalesce(encode(a.head_hash, 'hex'), 'none'),
                       CASE WHEN l.id IS NULL THEN ': none' ELSE format(' (%s) has %s', l.id, encode(l.hash, 'hex')) END)
           FROM accounts a
           LEFT JOIN LATERAL (SELECT e.id, e.hash FROM ledger_entries e WHERE e.account_id = a.id
                               ORDER BY e.id DESC LIMIT 1) l ON true
          WHERE a.head_hash IS DISTINCT FROM l.hash
          ORDER BY a.id LIMIT {SAMPLE})""")
# Who made each transfer (migration 0018 on): the key a transfer names as its creator exists (in
# place of a foreign key, which would lock the key's row with every transfer).
CREATORS = ("transfer creators", "every transfer made by an API key names a key that exists", f"""
        SELECT format('transfer %s: created by key %s, which does not exist', t.id, t.created_by)
          FROM transfers t
         WHERE t.created_by IS NOT NULL AND NOT EXISTS (SELECT 1 FROM api_keys k WHERE k.id = t.created_by)
         ORDER BY t.id LIMIT {SAMPLE}""")


def _has_column(table: str, column: str) -> str:
    """The query whether the schema has ``table.column`` (a migration that adds a column gates a check)."""
    return ("SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'public'"
            f" AND table_name = '{table}' AND column_name = '{column}')")


HAS_CREATORS = _has_column("transfers", "created_by")
HAS_ENTRY_HASHES = _has_column("accounts", "head_hash")

# The functions and views are those server/ledger/sql/ defines (the folder of this installation
# was applied, and nothing changed them since: each one's fingerprint is the one stored when it
# was). Run only on a schema that has ledger_definitions (migration 0012 on). %(digest)s: the
# digest of this installation's folder.
DEFINITIONS = ("ledger definitions", "the database's functions and views are those server/ledger/sql/ defines: "
                                     "this installation's folder was applied and none was changed, added or "
                                     "dropped since", f"""
        SELECT 'server/ledger/sql/ was never applied (run balance-api migrate)'
         WHERE NOT EXISTS (SELECT 1 FROM ledger_definitions)
        UNION ALL
        SELECT format('the applied server/ledger/sql/ (%%s) is not this installation''s (%%s): run balance-api migrate',
                      left(d.digest, 12), left(%(digest)s, 12))
          FROM ledger_definitions d WHERE d.digest <> %(digest)s
        UNION ALL
        (SELECT format('%%s: %%s since server/ledger/sql/ was applied (balance-api migrate --definitions restores it)',
                       coalesce(now.key, was.key),
                       CASE WHEN now.key IS NULL THEN 'dropped' WHEN was.key IS NULL THEN 'added' ELSE 'changed' END)
           FROM ({CATALOGUE}) now
           FULL JOIN (SELECT e.key, e.value FROM ledger_definitions d, jsonb_each_text(d.catalogue) e) was
             ON was.key = now.key
          WHERE now.value IS DISTINCT FROM was.value AND EXISTS (SELECT 1 FROM ledger_definitions)
          ORDER BY 1 LIMIT {SAMPLE})""")


@dataclass(frozen=True)
class CheckResult:
    """One invariant: its name, what must hold, and up to 20 offenders (empty when it holds)."""

    name: str
    rule: str
    offenders: list[str]

    @property
    def passed(self) -> bool:
        return not self.offenders


def check_ledger(database_url: str) -> list[CheckResult]:
    """Run every check against ``database_url`` in one REPEATABLE READ snapshot, so that the
    checks see one consistent state while the service keeps running; the system balances', the change
    feed's, the audit log's, the entry hashes', the transfer creators' and the ledger definitions'
    checks when the schema has them (migrations 0013, 0015, 0016, 0017, 0018 and 0012 on). Raises
    ``psycopg.Error`` when the database cannot be reached."""
    with psycopg.connect(database_url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            checks = CHECKS + ([SYSTEM_BALANCES] if conn.execute(HAS_SYSTEM_BALANCES).fetchone()[0] else [])
            checks += [EVENTS] if conn.execute(HAS_EVENTS).fetchone()[0] else []
            checks += [AUDIT] if conn.execute(HAS_AUDIT).fetchone()[0] else []
            checks += [ENTRY_HASHES] if conn.execute(HAS_ENTRY_HASHES).fetchone()[0] else []
            checks += [CREATORS] if conn.execute(HAS_CREATORS).fetchone()[0] else []
            results = [CheckResult(name, rule, [row[0] for row in conn.execute(query)])
                       for name, rule, query in checks]
            if conn.execute(HAS_DEFINITIONS_TABLE).fetchone()[0]:
                name, rule, query = DEFINITIONS
                offenders = conn.execute(query, {"digest": definitions_digest()}).fetchall()
                results.append(CheckResult(name, rule, [row[0] for row in offenders]))
            return results
