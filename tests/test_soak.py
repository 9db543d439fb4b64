"""``observer soak --short``: a simulated morning under every fault of the soak's schedule, end to end. Real
processes, the real broker and database (both restarted by the soak itself); the simulator is the only fake.

The soak checks itself (its ``failures``); this test also holds it to the issue's points one by one, so a
check that silently stopped checking would show here."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from procs import OBSERVER
from psycopg import sql

from app.config import Settings
from app.topics import delete_topics

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def soak(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("soak-home")
    env = {**os.environ, "OBSERVER_DEMO_ROOT": str(root / "demo")}
    done = subprocess.run(
        [*OBSERVER, "soak", "--short", "--json", "--keep-stack"],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    summary: dict[str, Any] = orjson.loads(done.stdout) if done.stdout.strip() else {}
    yield done, summary, root
    if summary:
        with psycopg.connect(stack.postgres_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(summary["demo"]["pg_schema"]))
            )
        asyncio.run(delete_topics(stack.model_copy(update={"topic_prefix": summary["demo"]["topic_prefix"]})))


def test_the_short_soak_passes_every_check(soak: Any) -> None:
    done, summary, _ = soak
    assert done.returncode == 0, f"soak failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert summary["failures"] == []


def test_every_trade_kis_sent_is_in_kafka_jsonl_and_postgres_once(soak: Any) -> None:
    _, summary, _ = soak
    d = summary["demo"]
    assert summary["kis_records_sent"] > 100_000
    # What a WebSocket cut resets in TCP buffers never reached the bridge; the soak counts it per connection.
    received = summary["kis_records_received"]
    assert received == summary["kis_records_sent"] - summary["lost_in_flight_at_cuts"]
    assert summary["lost_in_flight_at_cuts"] < 0.05 * summary["kis_records_sent"]
    assert received == d["ticks_in_kafka"] == d["jsonl_lines"] == d["postgres_rows"]
    assert d["receive_to_persist"] == 1.0 and d["unaccounted"] == []
    assert set(d["dead_letters_by_reason"]) == {"bad_number", "wrong_field_count", "unknown_tr_id"}


def test_every_fault_was_injected_and_the_pipeline_answered_it(soak: Any) -> None:
    _, summary, _ = soak
    kinds = [f["kind"] for f in summary["faults"]]
    assert sorted(set(kinds)) == sorted(
        ["ws_drop", "kill_sink", "restart_kafka", "kill_worker", "restart_postgres", "leak_registration", "surge_burst"]
    )
    assert summary["kis_replies"].get("OPSP0008", 0) >= 1, "the 42nd subscription was made and refused"
    assert summary["demo"]["overflow"] > 0, "the burst outnumbered the pool"
    assert summary["busiest_hour"]["trades"] >= 3 * 50_287
    logs = Path(summary["demo"]["data_root"]).parent / "logs"
    worker_starts = (logs / "worker.log").read_text(errors="replace").count("[^Worker]: Starting...")
    assert worker_starts >= 1 + kinds.count("kill_worker")


def test_the_slot_policy_held_and_memory_and_latency_are_reported(soak: Any) -> None:
    _, summary, _ = soak
    policy = summary["slot_policy"]
    assert policy["violations"] == [] and policy["decisions"] > 0
    assert policy["max_held"]["main"] <= 41
    assert policy["shortest_eviction_dwell_s"] is None or policy["shortest_eviction_dwell_s"] >= 120
    memory = summary["memory"]
    assert all(mb > 20 for mb in memory["peak_rss_mb"].values()), memory
    assert 0 < memory["together_max_mb"]["realistic"] <= memory["limit_mb"]
    latency = summary["latency_s"]
    for name in ("frame_to_kafka_ack", "tick_to_jsonl", "tick_to_postgres"):
        q = latency[name]
        assert q["count"] > 0 and q["p50"] is not None and q["p50"] <= q["p90"] <= q["p99"], (name, q)
    assert latency["tick_to_postgres"]["count"] >= summary["kis_records_sent"] * 0.5  # every sink life counted
    sts = latency["surge_to_subscribe"]
    assert sts["assignments"] > sts["unmatched"] >= 0 and sts["p50"] > 0
