"""Running a process with an output on a pseudo-terminal, as a person's shell would."""

from __future__ import annotations

import os
import subprocess
import threading


def run_on_a_terminal(command: list[str], stream: str, **popen) -> tuple[int, str]:
    """Run ``command`` to completion with ``stream`` (``"stdout"`` or ``"stderr"``) on a new
    pseudo-terminal and the other discarded; return its exit code and what it wrote there."""
    other = "stderr" if stream == "stdout" else "stdout"
    controller, terminal = os.openpty()
    chunks: list[bytes] = []
    # read while it runs: a pseudo-terminal holds a few kB, and a process writing more than that
    # to it waits for a reader (14 migrations' log lines did)
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: _read(controller), b"")), daemon=True)
    try:
        reader.start()
        process = subprocess.run(command, **{stream: terminal, other: subprocess.DEVNULL}, timeout=120, **popen)
        os.close(terminal)
        reader.join(10)
    finally:
        os.close(controller)
    return process.returncode, b"".join(chunks).decode()


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal's other side is closed: all has been read
        return b""
