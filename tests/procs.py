"""Running ``observer`` as a user does: a real process, its output read line by line with a deadline."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

OBSERVER = [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_line(proc: subprocess.Popen[str], needle: str, deadline_s: float = 30) -> str:
    """Read the process's stdout until a line contains ``needle`` (bounded by a deadline)."""
    assert proc.stdout is not None
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if needle in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no line with {needle!r}; exit {proc.poll()}, stderr: {proc.stderr and proc.stderr.read()}")
