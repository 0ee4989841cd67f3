"""balance-api bench reports each figure as a ratio of the ceiling, the CPU per request, and says
which goals are met; --plot draws the same figures. (The benchmark itself is a script, run by hand:
it measures, it does not assert times.)"""

from loadtest.bench import Measurement, format_table, plot


def measurement(workload, server, wall, rate, ratio=0.0, per_request=1, baseline_ratio=0.0):
    return Measurement(workload, server, "h2load", wall, rate, 1.0, 2.0, {"2xx": 10}, 0.5, 0.5, ratio,
                       baseline_ratio, per_request)


RESULTS = [
    measurement("hot, all at once", "ceiling", 2.0, 5000),
    measurement("hot, all at once", "batching on", 2.2, 4500, ratio=2.0 / 2.2),
    measurement("hot, keep-alive", "ceiling", 0.4, 25000),
    measurement("hot, keep-alive", "batching off", 1.0, 5000, ratio=0.2),
    measurement("hot, keep-alive", "batching on", 1.0, 10000, ratio=0.4),
    measurement("transfers, 10k accounts", "ceiling", 10.0, 20000),
    measurement("transfers, 10k accounts", "batching on", 10.0, 6000, ratio=0.3, baseline_ratio=1.2),
    measurement("transfers, 10k accounts", "bare SQL", 10.0, 5000),
    measurement("bulk batches of 1,000", "ceiling", 1.0, 1000),
    measurement("bulk batches of 1,000", "batching on", 1.0, 60, ratio=0.06, per_request=1000),
]


def test_the_table_gives_ratios_to_the_ceiling_and_the_verdict_on_each_goal():
    table = format_table(RESULTS)
    assert "| hot, all at once | batching on | 2.20 s | 4,500 | 4,500 | 1.0 ms | 2.0 ms | 1.10 x wall |" in table
    assert "| hot, keep-alive | batching on | 1.00 s | 10,000 | 10,000 | 1.0 ms | 2.0 ms | 0.40 x throughput |" in table
    assert "- hot, all at once: wall time <= 1.2 x ceiling: MET" in table
    assert "- hot, keep-alive: throughput >= 0.5 x ceiling: NOT MET" in table
    assert "spread" not in table.split("\n\n")[1]  # no verdict without a measurement


def test_the_table_counts_the_transfers_of_a_bulk_batch_and_the_cpu_per_request():
    table = format_table(RESULTS)
    # 60 batches/s of 1,000; 0.5 s of service CPU over 60 requests
    assert "| bulk batches of 1,000 | batching on | 1.00 s | 60 | 60,000 |" in table
    assert "| 8,333 + 8,333 us |" in table
    assert "- bulk batches of 1,000: >= 50,000 transfers/s: MET" in table


def test_the_plot_is_a_png_of_every_workload(tmp_path):
    plot(RESULTS, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_table_ends_with_the_ledger_check_of_each_service_database():
    table = format_table(RESULTS, {"batching off": "passed", "batching on": "FAILED: conservation"})
    assert table.endswith("- balance-api check after the batching off runs: passed\n"
                          "- balance-api check after the batching on runs: FAILED: conservation")


def test_the_transfers_goal_is_a_multiple_of_the_same_transfers_as_bare_sql_in_the_same_run():
    table = format_table(RESULTS)
    assert "| transfers, 10k accounts | bare SQL | 10.00 s | 5,000 | 5,000 |" in table
    assert "| transfers, 10k accounts | bare SQL | 10.00 s | 5,000 | 5,000 | 1.0 ms | 2.0 ms | - |" in table
    assert "- transfers, 10k accounts: >= 1 x the same transfers as bare SQL (pgbench, same run): MET (1.20 x)" in table


def test_the_from_empty_table_compares_each_window_with_the_restarted_server_and_counts_seq_scans():
    from loadtest.from_empty import FromEmptyRun, Window, format_table as from_empty_table

    run = FromEmptyRun(
        windows=[Window("from empty", 1, 4000, 40.0, 90.0, {"201": 32000}),
                 Window("from empty", 2, 3000, 50.0, 99.0, {"201": 24000}),
                 Window("restarted", 1, 5000, 30.0, 80.0, {"201": 40000})],
        accounts_opened_per_s=2500, pgbench_per_s=4000, seq_scans={"transfers": 0, "ledger_entries": 0, "accounts": 2},
        check="passed")
    table = from_empty_table(run)
    assert "| from empty 1 | 4,000 | 0.80x | 40.0 ms | 90.0 ms |" in table
    assert "| from empty 2 | 3,000 | 0.60x |" in table
    assert "- every window from empty >= 0.8x the restarted service: NOT MET (lowest 0.60x)" in table
    assert "the service from empty: 0.88x of it, restarted 1.25x" in table
    assert "- no sequential scan of transfers from the request paths: MET" in table
    assert table.endswith("- balance-api check after the run: passed")


def test_the_from_empty_table_compares_bulk_batches_with_bulk_on_the_fresh_database_and_counts_refused_ones():
    from loadtest.from_empty import FromEmptyRun, Window, format_table as from_empty_table

    run = FromEmptyRun(
        windows=[Window("from empty", 0, 50000, 100.0, 200.0, {"2xx": 400}, bulk=True, senders=4),
                 Window("from empty", 1, 4000, 40.0, 90.0, {"2xx": 32000}),
                 Window("from empty", 2, 40000, 100.0, 200.0, {"2xx": 300, "5xx": 20}, bulk=True, senders=4),
                 Window("from empty", 3, 35000, 200.0, 300.0, {"2xx": 280}, bulk=True, senders=8),
                 Window("restarted", 1, 5000, 30.0, 80.0, {"2xx": 40000}),
                 Window("restarted", 2, 50000, 80.0, 150.0, {"2xx": 400}, bulk=True, senders=4)],
        check="passed")
    table = from_empty_table(run)
    assert "| from empty, bulk of 1,000 (4 senders, fresh database) | 50,000 | 1.00x |" in table
    assert "| from empty, bulk of 1,000 (4 senders) | 40,000 | 0.80x |" in table
    assert "| from empty, bulk of 1,000 (8 senders) | 35,000 | 0.70x |" in table
    assert "| from empty 1 | 4,000 | 0.80x |" in table  # the bulk windows are not in the transfers' mean
    assert "- every bulk batch answered 200, fresh, after the windows and after the restart: NOT MET " \
           "(20 not 2xx)" in table
    assert "- bulk after the windows of transfers >= 0.8x bulk on the fresh database: NOT MET (lowest 0.70x)" in table


def test_the_scale_table_puts_the_steps_side_by_side_with_the_last_to_first_ratio_and_the_reads_goal():
    from loadtest.scale import Step, format_table as scale_table

    steps = [Step(1000, 20000, {"GET an account": 0.5, "transfers, old window": 2.0}, 12000, 30000,
                  {"transfers 2xx": 100}, 500.0, {"transfers rows": 300.0, "transfers indexes": 200.0}, 0.5,
                  "passed", 1),
             Step(100000, 300000, {"GET an account": 0.6, "transfers, old window": 7.0}, 11000, 27000,
                  {"transfers 2xx": 90, "bulk 5xx": 1}, 450.0, {"transfers rows": 280.0, "transfers indexes": 170.0},
                  3.0, "passed", 40)]
    table = scale_table(steps)
    assert "| accounts / transfers | 1,000 / 20,000 | 100,000 / 300,000 | last / first |" in table
    assert "| GET an account | 0.5 ms | 0.6 ms | 1.20x |" in table
    assert "| - transfers indexes | 200 B | 170 B | 0.85x |" in table
    assert "- no read route more than 3x slower from the smallest step to the largest: NOT MET " \
           "(slowest to grow: transfers, old window, 3.50x)" in table
    assert "- every write answered 2xx: NOT MET {'bulk 5xx': 1}" in table


def test_the_scale_steps_are_accounts_slash_transfers_each_at_least_the_one_before():
    import pytest

    from loadtest.scale import parse_steps

    assert parse_steps("1000/20000,10000/100000") == ((1000, 20000), (10000, 100000))
    for wrong in ("1000", "1000/20000,500/30000", "1000/20000,2000/20000", "1/10"):
        with pytest.raises(ValueError):
            parse_steps(wrong)
