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
    ("balance = sum of entries", "every user's balance equals the sum of their ledger entries", f"""
        SELECT format('user %s: balance %s, entries sum to %s', u.id, u.balance, coalesce(s.total, 0))
          FROM users u LEFT JOIN (SELECT user_id, sum(amount) AS total FROM ledger_entries GROUP BY user_id) s
            ON s.user_id = u.id
         WHERE u.balance <> coalesce(s.total, 0)
         ORDER BY u.id LIMIT {SAMPLE}"""),
    ("no negative balance", "no balance is below zero", f"""
        SELECT format('user %s: balance %s', id, balance) FROM users WHERE balance < 0 ORDER BY id LIMIT {SAMPLE}"""),
    ("balance_after chain", "each entry's balance_after is the running sum of the user's entries up to it", f"""
        SELECT format('entry %s of user %s: balance_after %s, running sum %s', id, user_id, balance_after, running)
          FROM (SELECT id, user_id, balance_after,
                       sum(amount) OVER (PARTITION BY user_id ORDER BY id) AS running FROM ledger_entries) e
         WHERE balance_after <> running
         ORDER BY id LIMIT {SAMPLE}"""),
    ("transfers balanced", "every transfer has exactly its two entries: -amount from the sender, +amount to the receiver", f"""
        SELECT format('transfer %s: %s entries', t.id, count(e.id))
          FROM transfers t LEFT JOIN ledger_entries e ON e.transfer_id = t.id
         GROUP BY t.id, t.amount, t.from_user_id, t.to_user_id
        HAVING count(e.id) <> 2
            OR count(*) FILTER (WHERE e.user_id = t.from_user_id AND e.amount = -t.amount AND e.kind = 'transfer_out') <> 1
            OR count(*) FILTER (WHERE e.user_id = t.to_user_id AND e.amount = t.amount AND e.kind = 'transfer_in') <> 1
         ORDER BY t.id LIMIT {SAMPLE}"""),
    ("entries belong to transfers", "every entry naming a transfer names one that exists", f"""
        SELECT format('entry %s: transfer %s does not exist', e.id, e.transfer_id)
          FROM ledger_entries e LEFT JOIN transfers t ON t.id = e.transfer_id
         WHERE e.transfer_id IS NOT NULL AND t.id IS NULL
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
