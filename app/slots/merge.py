"""A deterministic event-time merge of several ordered sources (Kafka partitions) into one sequence.

The slot manager takes its input from many partitions (surges computed per partition of
``kis.ticks.raw``, snapshots, subscription replies). Kafka gives no order across partitions, and a
consumer interleaves them differently on every run; decisions that depend on the interleaving would
differ between live and replay. So items are released in the order of ``(time, source, seq)``, and
only once every source has progressed past that time: the released sequence is the same for every
interleaving of the same per-source streams.

- ``time`` is the source's running maximum of event time, so a slightly out-of-order item keeps its
  place in its own source's order instead of jumping back past items already released.
- A source reports progress with every item and with progress markers; the watermark is the lowest
  progress of the sources that are not idle. Items strictly below it are released.
- Idleness is decided by the caller: a partition with no data at all (no subscribed symbol hashes to it)
  after wall-clock silence, or one the worker has read to its live edge (what it has not sent has not
  happened yet). It is the one input that is not data; with every source idle, everything pending goes.
  A live run records the order it released in (``slot.merge-log``) so that a replay can follow it.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(order=True, frozen=True)
class Pending:
    time_us: int
    source: str
    seq: int
    item: Any = field(compare=False)


@dataclass
class EventTimeMerger:
    sources: frozenset[str]
    progress: dict[str, int] = field(default_factory=dict)  # source -> highest event time seen
    seqs: dict[str, int] = field(default_factory=dict)  # source -> items added so far
    pending: list[Pending] = field(default_factory=list)  # a heap
    released_until_us: int = -1  # every item below this time has been released

    def add(self, source: str, event_time_us: int, item: Any) -> Pending:
        """Add an item of ``source`` (which also reports progress to its event time)."""
        self._check(source)
        time_us = max(event_time_us, self.progress.get(source, event_time_us), self.released_until_us)
        self.progress[source] = time_us
        seq = self.seqs.get(source, 0)
        self.seqs[source] = seq + 1
        entry = Pending(time_us, source, seq, item)
        heapq.heappush(self.pending, entry)
        return entry

    def advance(self, source: str, event_time_us: int) -> None:
        """A progress marker: ``source`` has nothing more before ``event_time_us``."""
        self._check(source)
        if event_time_us > self.progress.get(source, -1):
            self.progress[source] = event_time_us

    def watermark(self, idle: Iterable[str] = ()) -> int | None:
        """The lowest progress over the sources that are not idle (None while one has not reported)."""
        idle_set = set(idle)
        live = [s for s in self.sources if s not in idle_set]
        if not live:  # nothing else is coming: everything up to the latest time seen goes
            top = max(self.progress.values(), default=None)
            return None if top is None else top + 1
        if any(s not in self.progress for s in live):
            return None
        return min(self.progress[s] for s in live)

    def release(self, idle: Iterable[str] = ()) -> list[Pending]:
        """Items strictly below the watermark, in (time, source, seq) order."""
        mark = self.watermark(idle)
        out: list[Pending] = []
        if mark is None:
            return out
        while self.pending and self.pending[0].time_us < mark:
            out.append(heapq.heappop(self.pending))
        if mark > self.released_until_us:
            self.released_until_us = mark
        return out

    def _check(self, source: str) -> None:
        if source not in self.sources:
            raise KeyError(f"unknown source {source!r}; known: {sorted(self.sources)}")
