"""Where prometheus-client's multiprocess mode keeps its files (``PROMETHEUS_MULTIPROC_DIR``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextlib.contextmanager
def multiprocess_directory(workers: int = 2) -> Iterator[str | None]:
    """Yield the multiprocess metrics directory, exported as ``PROMETHEUS_MULTIPROC_DIR``, or None
    for one worker (``workers`` == 1) without one given: then the metrics stay in memory
    (:mod:`server.running.metrics`).

    It must be set before ``prometheus_client`` is first imported (the library picks its value
    class at import). A directory given in the environment is used as it is (whoever set it wipes
    it between runs, as the prometheus-client docs ask); otherwise a fresh temporary directory is
    made, inherited by worker processes, and deleted when the block exits.
    """
    if given := os.environ.get(MULTIPROC_ENV):
        yield given
        return
    if workers == 1:
        yield None
        return
    directory = tempfile.mkdtemp(prefix="balance-api-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield directory
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)
