"""Simulated time: a KST start instant that runs at an acceleration factor against the wall clock."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from zoneinfo import ZoneInfo

KST = ZoneInfo("Asia/Seoul")


class SimClock:
    """``now_us()`` = start + (monotonic elapsed since construction) x speed, in UTC microseconds."""

    def __init__(self, start: dt.datetime, speed: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        if start.tzinfo is None:
            raise ValueError("the simulated start time needs a time zone (use Asia/Seoul)")
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.start_us = int(start.timestamp() * 1_000_000)
        self.speed = speed
        self._monotonic = monotonic
        self._t0 = monotonic()
        self._paused_at_us: int | None = None

    def now_us(self) -> int:
        if self._paused_at_us is not None:
            return self._paused_at_us
        return self.start_us + int((self._monotonic() - self._t0) * self.speed * 1_000_000)

    def pause(self) -> None:
        """Stop simulated time where it is (a supervisor bringing its consumers up first, say)."""
        if self._paused_at_us is None:
            self._paused_at_us = self.now_us()

    def resume(self) -> None:
        """Let simulated time run on from where it stopped, without a jump."""
        if self._paused_at_us is not None:
            self.start_us, self._paused_at_us = self._paused_at_us, None
            self._t0 = self._monotonic()

    def now_kst(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.now_us() / 1_000_000, KST)

    def wall_seconds_until(self, sim_us: int) -> float:
        """Wall seconds until the simulated clock reaches ``sim_us`` (0 if already past)."""
        return max(0.0, (sim_us - self.now_us()) / 1_000_000 / self.speed)


def parse_kst(text: str) -> dt.datetime:
    """``YYYY-MM-DD HH:MM[:SS]`` or ISO 8601 in KST unless it carries an offset."""
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=KST)
