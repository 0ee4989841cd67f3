"""Progress of a long run of a known number of steps (``balance-api bench``): a progress bar (rich)
when the output is a terminal, plain lines when it is not (CI logs, files, pipes)."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class RunProgress:
    """``total`` steps, each announced with :meth:`start` and ended with :meth:`done`.

    On a terminal, a bar (rich's :class:`~rich.progress.Progress`) shows the step under way, the
    steps done out of ``total`` and the time elapsed, with each step's result line printed above it;
    elsewhere each step prints ``[i/total] label`` when it starts and its result line when it ends.
    Use it as a context manager; ``stream`` defaults to stdout.
    """

    def __init__(self, total: int, stream: TextIO | None = None):
        self._total = total
        self._stream = stream or sys.stdout
        self._started = 0
        self._bar: Progress | None = None
        if self._stream.isatty():
            self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=Console(file=self._stream))
            self._task = self._bar.add_task("starting", total=total)

    def __enter__(self) -> RunProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._bar is not None:
            self._bar.stop()

    def start(self, label: str) -> None:
        """Step ``label`` begins."""
        self._started += 1
        if self._bar is not None:
            self._bar.update(self._task, description=label)
        else:
            print(f"[{self._started}/{self._total}] {label}", file=self._stream, flush=True)

    def print(self, line: str) -> None:
        """A line of output (above the bar on a terminal)."""
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self._stream, flush=True)

    def done(self, line: str) -> None:
        """The step under way ended; ``line`` says how."""
        self.print(line)
        if self._bar is not None:
            self._bar.advance(self._task)
