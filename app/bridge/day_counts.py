"""The bridge's counts per business date, for ``observer audit``.

Prometheus counters live as long as the process; an audit of a day asks after the processes are gone.
So the bridge also keeps its counts per business date and publishes them, through the same journal as
its data (so they survive a broker outage), to ``observer.counts``: one ``StageCounts`` record per run
and date, cumulative, the latest one per key being the run's count. A run killed with -9 loses only the
counts since its last record (at most one interval); its record then lacks ``final``.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import Counter
from typing import Any

from app.krx import KST

FRAMES_RECEIVED = "frames_received"
RECORDS_PARSED = "records_parsed"
DEAD_LETTERS = "dead_letters"  # "dead_letters.<reason>": messages sent whole to kis.dlq


class DayCounts:
    def __init__(self, stage: str, instance: str, run_id: str | None = None) -> None:
        self.stage = stage
        self.instance = instance
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.started_at_us = time.time_ns() // 1000
        self.by_date: dict[str, Counter[str]] = {}
        self.dirty: set[str] = set()
        self.current_date: str | None = None  # the latest business date seen in a record

    def date_for_unreadable(self) -> str:
        """The date a message without a readable date counts under: the latest seen, else today in KST."""
        return self.current_date or dt.datetime.now(KST).strftime("%Y%m%d")

    def add(self, business_date: str, name: str, n: int = 1) -> None:
        self.by_date.setdefault(business_date, Counter())[name] += n
        self.dirty.add(business_date)

    def frame_parsed(self, business_date: str, records: int) -> None:
        self.current_date = business_date
        self.add(business_date, FRAMES_RECEIVED)
        self.add(business_date, RECORDS_PARSED, records)

    def dead_lettered(self, reason: str, data_frame: bool) -> None:
        date = self.date_for_unreadable()
        if data_frame:
            self.add(date, FRAMES_RECEIVED)
        self.add(date, f"{DEAD_LETTERS}.{reason}")

    def take(self, final: bool = False) -> list[tuple[bytes, dict[str, Any]]]:
        """``StageCounts`` records (key, value) for the dates changed since the last take (all of them if final)."""
        now_us = time.time_ns() // 1000
        dates = sorted(self.by_date) if final else sorted(self.dirty)
        self.dirty.clear()
        return [
            (
                f"{self.stage}/{self.instance}/{self.run_id}/{date}".encode(),
                {
                    "stage": self.stage,
                    "instance": self.instance,
                    "run_id": self.run_id,
                    "business_date": date,
                    "counts": dict(self.by_date[date]),
                    "started_at_us": self.started_at_us,
                    "emitted_at_us": now_us,
                    "final": final,
                },
            )
            for date in dates
        ]
