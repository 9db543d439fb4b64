"""A pause between failed cluster-metadata updates of aiokafka's clients, while the broker is unreachable.

aiokafka (0.14) updates metadata whenever a producer's sender or a consumer's fetcher asks, and a broker
that refuses connections answers the update at once; both ask again as soon as it fails. With the broker
down, each client of a process then tries about a thousand times a second: the soak's two broker restarts
(15 s each) wrote 29,941 "Unable connect to node" lines into the bridge's log and held its CPU while its
journal should have had it. Here a failed update returns only after a pause (the client's
``retry_backoff_ms``, doubled after each failure in a row, at most ``MAX_PAUSE_S``), so everything waiting
on it waits as well; a successful update resets the pause. The broker's return is seen within ``MAX_PAUSE_S``.

:func:`install` patches ``AIOKafkaClient`` once per process; each role's entry point calls it.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

MAX_PAUSE_S = 1.0
_FAILURES = "_observer_metadata_failures"


def install() -> None:
    from aiokafka.client import AIOKafkaClient

    original = AIOKafkaClient._metadata_update
    if getattr(original, "observer_backoff", False):
        return

    @functools.wraps(original)
    async def metadata_update_with_pause(self: Any, cluster_metadata: Any, topics: Any) -> Any:
        updated = await original(self, cluster_metadata, topics)
        if updated:
            setattr(self, _FAILURES, 0)
            return updated
        failures = getattr(self, _FAILURES, 0)
        setattr(self, _FAILURES, failures + 1)
        await asyncio.sleep(pause_s(self._retry_backoff, failures))
        return updated

    metadata_update_with_pause.observer_backoff = True  # type: ignore[attr-defined]
    AIOKafkaClient._metadata_update = metadata_update_with_pause


def pause_s(retry_backoff_s: float, failures_before: int) -> float:
    """The pause after a failed update that follows ``failures_before`` failed ones."""
    return min(MAX_PAUSE_S, retry_backoff_s * 2.0 ** min(failures_before, 16))
