"""balance-api torture: a 60 s randomized run under client-side faults against the real service
finds no violation; its verifier does report a transfer no operation made; a seed fixes each
client's choices."""

from __future__ import annotations

import json

import aiohttp

from loadtest import torture
from tests.service_process import balance_api, service_env


def test_a_60_second_torture_run_under_client_faults_finds_no_violation(service_url, database_url, tmp_path):
    report_path = tmp_path / "torture.json"
    result = balance_api("torture", "--url", service_url, "--duration", "60", "--seed", "1", "--clients", "16",
                         "--json", str(report_path), timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "violations: 0" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["operations"] > 1000 and report["samples"] > 10
    assert all(report["faults"].get(fault, 0) > 0 for fault in torture.FAULTS), report["faults"]
    assert set(report["kinds"]) >= {"credit", "debit", "patch", "transfer", "hold", "post", "void", "batch",
                                    "reverse", "freeze", "unfreeze"}, report["kinds"]
    assert report["unknown_resolved"] > 0
    assert balance_api("check", env=service_env(database_url=database_url)).returncode == 0


async def test_the_verifier_reports_money_that_no_operation_moved(service_url):
    run, _ = await torture.torture([service_url], duration=2, seed=5, clients=4, accounts=3)
    assert run.violations == []
    async with aiohttp.ClientSession() as session:
        rogue = await _move_one_unit_outside_the_run(session, service_url, run.accounts)
        await torture.verify(session, service_url, run)
    assert any(f"account {rogue}: transfers" in violation and "belong to no operation" in violation
               for violation in run.violations), run.violations
    assert any(violation.startswith(f"account {rogue}: balance") for violation in run.violations), run.violations


async def _move_one_unit_outside_the_run(session, service_url: str, accounts: list[int]) -> int:
    """Debit (or, when it is empty or at a limit, credit) 1 on the first of ``accounts`` that lets
    it through, behind the run's back; return that account. (How the run left each account, a hold
    or a ceiling reached, depends on the interleaving, so one account may refuse both.)"""
    for account in accounts:
        for kind in ("debit", "credit"):
            async with session.post(f"{service_url}/api/accounts/{account}/{kind}", json={"amount": 1}) as response:
                assert response.status in (200, 409)
                if response.status == 200:
                    return account
    raise AssertionError(f"every account of the run refused a debit and a credit of 1: {accounts}")


def test_the_same_seed_gives_each_client_the_same_sequence_of_choices():
    def choices(seed: int) -> list[tuple]:
        run = torture.Run("a", 1, [10, 11, 12, 13], {10: 1, 11: 2, 12: 3, 13: 4})
        client = torture.Client(3, seed, "http://127.0.0.1:1", run, deadline=0)
        client.holds, client.made = [100, 101], [200]
        return [(op.kind, op.method, op.path, json.dumps(op.body)) for op in (client.next_operation() for _ in range(200))]

    assert choices(42) == choices(42) != choices(43)


def test_the_run_shows_its_progress_as_plain_lines_in_a_log(service_url):
    result = balance_api("torture", "--url", service_url, "--duration", "2", "--clients", "2", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = [line.split("] ", 1)[1] for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(steps) == 13 and steps[0].startswith("set up") and steps[-2:] == ["resolve unknown outcomes", "verify"]
    assert [step for step in steps if step.startswith("load: 2 clients")][-1] == "load: 2 clients, 2 of 2 s"
