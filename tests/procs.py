"""Running ``observer`` as a user does: a real process, its output read line by line with a deadline."""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
import time

from app.krx import KST, latest_session, today_kst

OBSERVER = [sys.executable, "-m", "app.cli"]

# Data written to Kafka is stamped with its trade time, and the broker deletes records older than a topic's
# retention (30 days): so tests that go through Kafka trade on a recent day, never a fixed date.
RECENT_SESSION = latest_session(today_kst() - dt.timedelta(days=1), regular=True)
RECENT_OPEN = dt.datetime.combine(RECENT_SESSION, dt.time(9, 0), KST)


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
