"""balance-api bench reports each figure as a ratio of the ceiling and says which goals are met.
(The benchmark itself is a script, run by hand: it measures, it does not assert times.)"""

from loadtest.bench import Measurement, format_table


def measurement(workload, server, wall, rate, ratio=0.0):
    return Measurement(workload, server, "h2load", wall, rate, 1.0, 2.0, {"2xx": 10}, 0.5, 0.5, ratio)


def test_the_table_gives_ratios_to_the_ceiling_and_the_verdict_on_each_goal():
    table = format_table([
        measurement("hot, all at once", "ceiling", 2.0, 5000),
        measurement("hot, all at once", "batching on", 2.2, 4500, ratio=2.0 / 2.2),
        measurement("hot, keep-alive", "ceiling", 0.4, 25000),
        measurement("hot, keep-alive", "batching on", 1.0, 10000, ratio=0.4),
    ])
    assert "| hot, all at once | batching on | 2.20 s | 4,500 | 1.0 ms | 2.0 ms | 1.10 x wall |" in table
    assert "| hot, keep-alive | batching on | 1.00 s | 10,000 | 1.0 ms | 2.0 ms | 0.40 x throughput |" in table
    assert "- hot, all at once: wall time <= 1.2 x ceiling: MET" in table
    assert "- hot, keep-alive: throughput >= 0.5 x ceiling: NOT MET" in table
    assert "spread" not in table.split("\n\n")[1]  # no verdict without a measurement
