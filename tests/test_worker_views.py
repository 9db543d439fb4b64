"""The worker's health view (pure: state in, document and HTTP status out)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from app.worker.views import CRASH_UNHEALTHY_S, WorkerState, health_view


def test_health_is_ok_with_partitions_and_starting_without() -> None:
    state = WorkerState(CollectorRegistry())
    assert health_view(state, 3, rebalancing=False)[0]["status"] == "ok"
    assert health_view(state, 3, rebalancing=False)[1] == 200
    assert health_view(state, 0, rebalancing=False) == ({**health_view(state, 0, False)[0], "status": "starting"}, 503)
    assert health_view(state, 3, rebalancing=True)[0]["status"] == "rebalancing"


def test_a_recent_agent_crash_makes_the_worker_fail_its_health_check() -> None:
    """Faust restarts a crashed agent, so a crash loop would otherwise look healthy."""
    state = WorkerState(CollectorRegistry())
    state.crashes["slot_manager_agent"] = (time.monotonic(), "DateOutOfBounds: 1970-01-01")
    doc, code = health_view(state, 3, rebalancing=False)
    assert (doc["status"], code) == ("failing", 503)
    assert doc["crashed_agents"] == {"slot_manager_agent": "DateOutOfBounds: 1970-01-01"}
    state.crashes["slot_manager_agent"] = (time.monotonic() - CRASH_UNHEALTHY_S - 1, "old")
    doc, code = health_view(state, 3, rebalancing=False)
    assert (doc["status"], code, doc["crashed_agents"]) == ("ok", 200, {})
