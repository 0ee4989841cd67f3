"""Running a process with an output on a pseudo-terminal, as a person's shell would."""

from __future__ import annotations

import os
import subprocess


def run_on_a_terminal(command: list[str], stream: str, **popen) -> tuple[int, str]:
    """Run ``command`` to completion with ``stream`` (``"stdout"`` or ``"stderr"``) on a new
    pseudo-terminal and the other discarded; return its exit code and what it wrote there."""
    other = "stderr" if stream == "stdout" else "stdout"
    controller, terminal = os.openpty()
    try:
        process = subprocess.run(command, **{stream: terminal, other: subprocess.DEVNULL}, timeout=120, **popen)
        os.close(terminal)
        written = b""
        while chunk := _read(controller):
            written += chunk
    finally:
        os.close(controller)
    return process.returncode, written.decode()


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal's other side is closed: all has been read
        return b""
