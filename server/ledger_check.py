"""``balance-api check``: verify the ledger's invariants over the whole database.

Each check is one SQL query returning the offending rows (at most 20 are named); all of them pass
on a consistent database. Run it after a crash, a restore or a manual fix.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

SAMPLE = 20

# (name, what must hold, query returning offenders as one text column)
CHECKS: list[tuple[str, str, str]] = [
    ("conservation", "per asset, the sum of all balances, the system account's included, is 0", f"""
        SELECT format('asset %s: balances sum to %s', s.code, coalesce(b.total, 0) + coalesce(x.total, 0))
          FROM assets s
          LEFT JOIN (SELECT asset_id, sum(balance) AS total FROM accounts WHERE NOT is_system GROUP BY asset_id) b
            ON b.asset_id = s.id
          LEFT JOIN (SELECT a.asset_id, sum(e.amount) AS total FROM ledger_entries e
                       JOIN accounts a ON a.id = e.account_id WHERE a.is_system GROUP BY a.asset_id) x
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
         WHERE NOT a.is_system AND a.balance <> coalesce(s.total, 0)
         ORDER BY a.id LIMIT {SAMPLE}"""),
    ("balances within limits", "no balance is below minus its overdraft limit or above its maxBalance", f"""
        SELECT format('account %s: balance %s, overdraft limit %s, max balance %s', id, balance, overdraft_limit,
                      coalesce(max_balance::text, 'none'))
          FROM accounts
         WHERE NOT is_system AND (balance < -overdraft_limit OR balance > max_balance)
         ORDER BY id LIMIT {SAMPLE}"""),
    ("balance_after chain", "each stored balance_after is the running sum of the account's entries up to it "
                            "(a system account's entries store none)", f"""
        SELECT format('entry %s of account %s: balance_after %s, running sum %s', id, account_id,
                      coalesce(balance_after::text, 'none'), running)
          FROM (SELECT e.id, e.account_id, e.balance_after, a.is_system,
                       sum(e.amount) OVER (PARTITION BY e.account_id ORDER BY e.id) AS running
                  FROM ledger_entries e JOIN accounts a ON a.id = e.account_id) e
         WHERE CASE WHEN is_system THEN balance_after IS NOT NULL ELSE balance_after IS DISTINCT FROM running END
         ORDER BY id LIMIT {SAMPLE}"""),
    ("transfers balanced", "every transfer has exactly its two entries, -amount on the sending account and "
                           "+amount on the receiving one, both of the transfer's asset", f"""
        SELECT format('transfer %s: %s entries', t.id, count(e.id))
          FROM transfers t
          LEFT JOIN ledger_entries e ON e.transfer_id = t.id
          LEFT JOIN accounts a ON a.id = e.account_id
         GROUP BY t.id, t.amount, t.from_account_id, t.to_account_id
        HAVING count(e.id) <> 2
            OR count(*) FILTER (WHERE e.account_id = t.from_account_id AND e.amount = -t.amount
                                  AND a.asset_id = t.asset_id) <> 1
            OR count(*) FILTER (WHERE e.account_id = t.to_account_id AND e.amount = t.amount
                                  AND a.asset_id = t.asset_id) <> 1
         ORDER BY t.id LIMIT {SAMPLE}"""),
    ("entries belong to transfers", "every entry names a transfer that exists", f"""
        SELECT format('entry %s: transfer %s does not exist', e.id, e.transfer_id)
          FROM ledger_entries e LEFT JOIN transfers t ON t.id = e.transfer_id
         WHERE t.id IS NULL
         ORDER BY e.id LIMIT {SAMPLE}"""),
]


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
    checks see one consistent state while the service keeps running. Raises ``psycopg.Error``
    when the database cannot be reached."""
    with psycopg.connect(database_url) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            return [CheckResult(name, rule, [row[0] for row in conn.execute(query)])
                    for name, rule, query in CHECKS]
