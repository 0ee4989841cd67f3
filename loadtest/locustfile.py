"""Locust scenario: exactly N balance changes for one user, then the same proof as the burst tool.

    locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:8080 -u 500 -r 500 \
        --run-time 120s --changes 10000 --amount -2 --start-balance 10000

``--targets URL1,URL2,...`` spreads the users over several service instances sharing one database
(user i sends to target i mod the count, as a load balancer would); set-up and read-back use ``-H``.

Locust has no request-count limit, so the users share one ticket counter: a task takes a ticket
before it sends and the user stops once none are left (gevent switches only at I/O, so the counter
needs no lock). When the last answer arrives, a watcher greenlet quits the runner (calling
``runner.quit()`` from inside a user greenlet does not end a multi-user run: locust issue #2456). The process exit code is 0 only if
exactly min(N, floor(start/|amount|)) changes succeeded, every other one got ``insufficient_funds``,
the returned balances form the exact chain and the final balance read back matches; ``--run-time``
bounds the run if the service stalls (and the count then fails the check).
"""

from __future__ import annotations

import itertools
import json
import logging
import urllib.request
from collections import Counter

import gevent
from gevent.event import Event
from locust import FastHttpUser, constant, events, task
from locust.exception import StopUser

log = logging.getLogger("balance_proof")


class Proof:
    """Shared state of one run: tickets handed out, outcomes, and the balances returned."""

    issued = 0
    answered = 0
    outcomes: Counter = Counter()
    balances: list[int] = []
    all_answered = Event()


def _api(base_url: str, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        base_url.rstrip("/") + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    parser.add_argument("--changes", type=int, default=10_000, help="exact number of PATCH requests")
    parser.add_argument("--amount", type=int, default=-2, help="signed minor units per change")
    parser.add_argument("--user-id", type=int, default=1)
    parser.add_argument("--start-balance", type=int, default=10_000)
    parser.add_argument("--targets", default="", help="comma-separated base URLs to spread the users over")


@events.test_start.add_listener
def _set_start_balance(environment, **_kwargs) -> None:
    options = environment.parsed_options
    path = f"/api/users/{options.user_id}"
    difference = options.start_balance - _api(environment.host, "GET", path)["balance"]
    if difference:
        _api(environment.host, "PATCH", "/api/balance", {"userId": options.user_id, "amount": difference})
    log.info("user %d starts at %d", options.user_id, options.start_balance)
    gevent.spawn(_quit_when_all_answered, environment)


def _quit_when_all_answered(environment) -> None:
    Proof.all_answered.wait()
    environment.runner.quit()


class BalanceChanger(FastHttpUser):
    """Sends ``PATCH /api/balance`` back to back until the shared tickets run out."""

    wait_time = constant(0)
    _numbers = itertools.count()

    def __init__(self, environment) -> None:
        targets = [url for url in environment.parsed_options.targets.split(",") if url]
        if targets:  # before FastHttpUser makes its client for self.host
            self.host = targets[next(self._numbers) % len(targets)]
        super().__init__(environment)

    @task
    def change_balance(self) -> None:
        options = self.environment.parsed_options
        if Proof.issued >= options.changes:
            raise StopUser()
        Proof.issued += 1
        body = {"userId": options.user_id, "amount": options.amount}
        with self.client.patch("/api/balance", json=body, catch_response=True) as response:
            document = response.json() if response.text else {}
            if response.status_code == 200:
                Proof.outcomes["200"] += 1
                Proof.balances.append(document["balance"])
                response.success()
            elif response.status_code == 409 and document.get("code") == "insufficient_funds":
                Proof.outcomes["409 insufficient_funds"] += 1
                response.success()  # an expected refusal, not a failure of the service
            else:
                Proof.outcomes[f"{response.status_code} {document.get('code', '')}".strip()] += 1
                response.failure(f"unexpected {response.status_code}: {response.text[:200]}")
        Proof.answered += 1
        if Proof.answered == options.changes:
            Proof.all_answered.set()


@events.quitting.add_listener
def _judge(environment, **_kwargs) -> None:
    options = environment.parsed_options
    start, amount, n = options.start_balance, options.amount, options.changes
    expected = n if amount > 0 else min(n, start // -amount)
    successes = Proof.outcomes["200"]
    refusals = Proof.outcomes["409 insufficient_funds"]
    final = _api(environment.host, "GET", f"/api/users/{options.user_id}")["balance"]
    checks = {
        "answered": Proof.answered == n,
        "successes": successes == expected,
        "refusals": refusals == n - expected,
        "balance chain": sorted(Proof.balances) == sorted(start + amount * k for k in range(1, successes + 1)),
        "final balance": final == start + amount * successes,
    }
    log.info("outcomes %s; final balance %d; checks %s", dict(Proof.outcomes), final, checks)
    passed = all(checks.values())
    print(f"PROOF {'PASSED' if passed else 'FAILED'}: {n} sent, {successes} succeeded, "
          f"{refusals} insufficient_funds, final balance {final}, checks {checks}")
    environment.process_exit_code = 0 if passed else 1
