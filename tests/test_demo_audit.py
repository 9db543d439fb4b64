"""``observer demo`` end to end, then ``observer audit`` on its day: 100 % when clean, exit 1 once a row or a
line is gone. Real processes, the real broker and database; the simulator is the only fake."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import psycopg
from procs import OBSERVER
from psycopg import sql

from app.config import Settings
from app.topics import delete_topics


def run_observer(args: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OBSERVER, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False)


def test_demo_accounts_for_every_trade_and_audit_catches_a_missing_row_or_line(stack: Settings, tmp_path: Path) -> None:
    env = {**os.environ, "OBSERVER_DEMO_ROOT": str(tmp_path / "demo")}
    # A shorter morning than the README's, at the same speed: the same code path in a third of the time.
    demo = run_observer(["demo", "--until", "10:00", "--json", "--keep-stack"], env, timeout_s=600)
    assert demo.returncode == 0, f"demo failed:\n{demo.stderr[-3000:]}"
    summary: dict[str, Any] = orjson.loads(demo.stdout)
    run_env = env | {
        "OBSERVER_TOPIC_PREFIX": summary["topic_prefix"],
        "OBSERVER_PG_SCHEMA": summary["pg_schema"],
        "OBSERVER_DATA_ROOT": summary["data_root"],
    }
    try:
        assert summary["kis_records_sent"] > 10_000
        # Every trade KIS sent was parsed (the bridge stopped after the simulator's last frame), published, and
        # written once to each store; the bad frames the simulator injected were dead-lettered.
        assert (
            summary["records_parsed"]
            == summary["ticks_in_kafka"]
            == summary["jsonl_lines"]
            == summary["postgres_rows"]
            > 10_000
        )
        assert summary["receive_to_persist"] == 1.0 and summary["unaccounted"] == []
        assert summary["dead_letters"] > 0 and set(summary["dead_letters_by_reason"]) == {"bad_number"}
        assert summary["surges"] > 0 and summary["slot_assigns"] >= 6, "the bootstrap and some surges"
        assert "demo summary" not in demo.stdout, "--json prints JSON only"

        date = summary["date"]
        clean = run_observer(["audit", "--date", date, "--json"], run_env, timeout_s=300)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        report = orjson.loads(clean.stdout)
        assert report["ratio"] == 1.0 and report["problems"] == []
        assert report["kinds"]["ticks"]["pg_rows"] == summary["postgres_rows"]

        # One row gone from PostgreSQL: the audit names it and exits 1.
        with psycopg.connect(stack.postgres_dsn, autocommit=True) as conn:
            deleted = conn.execute(
                sql.SQL(
                    "DELETE FROM {}.ticks WHERE ctid = (SELECT ctid FROM {}.ticks LIMIT 1) RETURNING symbol"
                ).format(sql.Identifier(summary["pg_schema"]), sql.Identifier(summary["pg_schema"]))
            ).fetchall()
        assert len(deleted) == 1
        missing_row = run_observer(["audit", "--date", date], run_env, timeout_s=300)
        assert missing_row.returncode == 1
        expected = summary["postgres_rows"]
        assert f"ticks: {expected - 1} PostgreSQL rows, {expected} expected from Kafka" in missing_row.stdout

        # And one JSONL line gone (the row problem stays): both are reported.
        scalp = sorted((Path(summary["data_root"]) / "observer" / "scalp").glob("*.jsonl"))[0]
        lines = scalp.read_bytes().splitlines(keepends=True)
        scalp.write_bytes(b"".join(lines[:-1]))
        missing_line = run_observer(["audit", "--date", date], run_env, timeout_s=300)
        assert missing_line.returncode == 1
        assert f"ticks: {expected - 1} distinct JSONL lines, {expected} expected from Kafka" in missing_line.stdout
        assert "PostgreSQL rows" in missing_line.stdout
    finally:
        with psycopg.connect(stack.postgres_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(summary["pg_schema"])))
        asyncio.run(delete_topics(stack.model_copy(update={"topic_prefix": summary["topic_prefix"]})))
