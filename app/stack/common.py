"""Process and port helpers shared by the local Kafka and PostgreSQL managers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


class StackError(Exception):
    """A local service cannot be installed, started or stopped. The message is one line: cause, then fix."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    detail: str
    pid: int | None = None
    rss_bytes: int | None = None

    def line(self) -> str:
        state = "running" if self.running else "stopped"
        rss = f", RSS {self.rss_bytes / 2**20:.0f} MiB" if self.rss_bytes else ""
        pid = f" pid {self.pid}" if self.pid else ""
        return f"{self.name:<9} {state}{pid}: {self.detail}{rss}"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); it is not running.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_bytes(pid: int, field: str = "VmRSS") -> int | None:
    """A live process's resident set now (``VmRSS``) or its peak so far (``VmHWM``), bytes; None if gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def read_pid(pid_file: Path) -> int | None:
    try:
        # First line: postmaster.pid holds more lines after the pid.
        return int(pid_file.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None


def wait_until(
    condition: Callable[[], bool], deadline_s: float, interval_s: float = 0.2, abort: Callable[[], None] | None = None
) -> bool:
    """Poll ``condition`` until true or the deadline passes; ``abort`` may raise to stop early."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        if abort is not None:
            abort()
        time.sleep(interval_s)
    return condition()


def terminate_group(pid: int, grace_s: float) -> bool:
    """SIGTERM the process group led by ``pid``; SIGKILL it after ``grace_s``. True if it stopped cleanly."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    if wait_until(lambda: not pid_alive(pid), grace_s):
        return True
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return True
    wait_until(lambda: not pid_alive(pid), 10)
    return False


def require_tool(name: str, fix: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} not found on PATH; {fix}")
    return path


def run_checked(args: Sequence[str], what: str, log_file: Path | None = None, timeout: float = 600) -> str:
    """Run a command; on failure raise a one-line StackError quoting the last line of its output."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise StackError(f"{what} failed: {exc.filename} not found") from None
    except subprocess.TimeoutExpired:
        raise StackError(f"{what} did not finish within {timeout:.0f} s") from None
    out = (proc.stdout or "") + (proc.stderr or "")
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("a") as fh:
            fh.write(f"$ {' '.join(args)}\n{out}\n")
    if proc.returncode != 0:
        last = next((ln for ln in reversed(out.strip().splitlines()) if ln.strip()), "no output")
        where = f" (full output in {log_file})" if log_file else ""
        raise StackError(f"{what} failed with exit {proc.returncode}: {last.strip()}{where}")
    return out


def tail(path: Path, lines: int = 40) -> list[str]:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            return fh.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
