"""Long runs show progress: a bar on a terminal, plain lines in logs (loadtest/progress.py, used by
``balance-api bench``)."""

import subprocess
import sys

from tests.service_process import PROJECT_ROOT
from tests.terminal import run_on_a_terminal

THREE_STEPS = """
from loadtest.progress import RunProgress
with RunProgress(3) as progress:
    for step in ("ceiling: spread", "batching off: spread", "batching on: spread"):
        progress.start(step)
        progress.done(f"measured {step}")
"""


def test_without_a_terminal_each_step_is_a_plain_line_then_its_result():
    result = subprocess.run([sys.executable, "-c", THREE_STEPS], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.splitlines() == [
        "[1/3] ceiling: spread", "measured ceiling: spread",
        "[2/3] batching off: spread", "measured batching off: spread",
        "[3/3] batching on: spread", "measured batching on: spread",
    ]


def test_on_a_terminal_a_bar_counts_the_steps_with_each_result_above_it():
    returncode, screen = run_on_a_terminal([sys.executable, "-c", THREE_STEPS], "stdout", cwd=PROJECT_ROOT)
    assert returncode == 0
    assert "\x1b[" in screen and "[1/3]" not in screen  # drawn, not logged
    assert "3/3" in screen and "━" in screen  # the bar, complete
    for step in ("ceiling", "batching off", "batching on"):
        assert f"measured {step}: spread" in screen
