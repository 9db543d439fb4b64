"""The local stack against the real services: CLI, topics, Kafka round trips, PostgreSQL, crash recovery."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from psycopg import sql

from app.config import Settings
from app.records import default_codec
from app.smoke import sample_tick
from app.stack.common import StackError, pid_alive, wait_until
from app.stack.kafka import LocalKafka, new_cluster_id
from app.topics import apply_topics, load_topics

OBSERVER = [sys.executable, "-m", "app.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OBSERVER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ticks(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        t = sample_tick()
        t.update(cumulative_volume=t["cumulative_volume"] + i, frame_seq=i, event_time_us=t["event_time_us"] + i)
        out.append(t)
    return out


async def produce(settings: Settings, topic: str, values: list[dict[str, Any]]) -> None:
    codec = default_codec()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, codec.encode("RawTick", v), key=v["symbol"].encode(), timestamp_ms=v["event_time_us"] // 1000
            )
            for v in values
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def consume_all(settings: Settings, topic: str, expected: int, group: str) -> list[dict[str, Any]]:
    """Read until ``expected`` records arrived or 30 s passed (a deadline, not a sleep)."""
    codec = default_codec()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(out) < expected and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for r in records:
                    name, value = codec.decode(r.value)
                    assert name == "RawTick"
                    assert r.timestamp == value["event_time_us"] // 1000, "Kafka timestamp must be event time"
                    out.append(value)
    finally:
        await consumer.stop()
    return out


# ---------------------------------------------------------------------------------------------- CLI


def test_cluster_ids_never_look_like_an_option() -> None:
    """One random id in 64 starts with '-', which the storage tool parses as an option (a CI failure)."""
    ids = [new_cluster_id() for _ in range(5000)]
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids)
    assert len(set(ids)) == len(ids)


def test_status_reports_both_services_running(stack: Settings) -> None:
    res = run_cli("stack", "status")
    assert res.returncode == 0, res.stderr
    assert "kafka     running" in res.stdout and "serving metadata" in res.stdout
    assert "postgres  running" in res.stdout and "accepting connections" in res.stdout


def test_up_is_idempotent_and_reports_what_runs(stack: Settings) -> None:
    res = run_cli("stack", "up", "--no-topics")
    assert res.returncode == 0, res.stderr
    assert "kafka: already running" in res.stdout
    assert "postgres: already running" in res.stdout


def test_smoke_command_passes_on_running_stack(stack: Settings) -> None:
    res = run_cli("smoke")
    assert res.returncode == 0, res.stderr
    assert "kafka ok: 1 RawTick" in res.stdout and "postgres ok" in res.stdout


def test_bad_config_is_one_line_naming_the_variable() -> None:
    res = run_cli("stack", "status", env={"OBSERVER_KAFKA_PORT": "not-a-port"})
    assert res.returncode == 2
    assert "OBSERVER_KAFKA_PORT" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_java_is_a_one_line_cause_and_fix(tmp_path: Path) -> None:
    env = {
        "PATH": str(tmp_path),
        "OBSERVER_HOME": str(tmp_path / "home"),
        "OBSERVER_KAFKA_PORT": str(free_port()),
        "OBSERVER_KAFKA_CONTROLLER_PORT": str(free_port()),
    }
    res = run_cli("stack", "up", env=env)
    assert res.returncode == 1
    assert (
        res.stderr.strip() == "error: java not found on PATH; install a JDK 17+ "
        "(apt-get install openjdk-17-jre-headless)"
    )


def test_missing_maven_is_a_one_line_cause_and_fix(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    java = subprocess.run(["sh", "-c", "command -v java"], capture_output=True, text=True, check=True).stdout.strip()
    (bin_dir / "java").symlink_to(os.path.realpath(java))
    env = {
        "PATH": str(bin_dir),
        "OBSERVER_HOME": str(tmp_path / "home"),
        "OBSERVER_KAFKA_PORT": str(free_port()),
        "OBSERVER_KAFKA_CONTROLLER_PORT": str(free_port()),
    }
    res = run_cli("stack", "up", env=env)
    assert res.returncode == 1
    assert (
        res.stderr.strip() == "error: mvn not found on PATH; install Maven (apt-get install maven) "
        "to fetch the Kafka jars"
    )


def test_port_in_use_names_the_port_and_the_fix(stack: Settings, tmp_path: Path) -> None:
    # A fresh home has no broker of ours, and the "Kafka" port we give it is PostgreSQL's.
    settings = stack.model_copy(update={"home": tmp_path, "kafka_port": stack.pg_port})
    with pytest.raises(StackError, match=rf"port 127\.0\.0\.1:{stack.pg_port} is in use .* OBSERVER_KAFKA_PORT"):
        LocalKafka(settings).start()


# ------------------------------------------------------------------------------------------- topics


def test_topics_apply_creates_missing_then_reports_ok_then_drift(isolated: Settings) -> None:
    specs = load_topics()
    first = asyncio.run(apply_topics(isolated))
    assert sorted(first.created) == sorted(isolated.topic(n) for n in specs)
    assert first.drift == []
    second = asyncio.run(apply_topics(isolated))
    assert second.created == [] and second.drift == []
    assert sorted(second.unchanged) == sorted(first.created)

    raw = isolated.topic("kis.ticks.raw")

    async def alter_retention() -> None:
        """Change retention behind the catalogue's back; wait until the broker shows it (applied async)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=isolated.bootstrap_servers)
        await admin.start()
        resource = ConfigResource(ConfigResourceType.TOPIC, raw)
        try:
            await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, raw, {"retention.ms": "1000"})])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while loop.time() < deadline:
                [resp] = await admin.describe_configs([resource])
                entries = resp.to_object()["resources"][0]["config_entries"]
                if {e["config_names"]: e["config_value"] for e in entries}.get("retention.ms") == "1000":
                    return
                await asyncio.sleep(0.1)
            raise AssertionError("the broker never showed the altered retention.ms")
        finally:
            await admin.close()

    asyncio.run(alter_retention())
    third = asyncio.run(apply_topics(isolated))
    assert len(third.drift) == 1
    assert third.drift[0].startswith(f"{raw}: retention.ms=1000 (declared {specs['kis.ticks.raw'].retention_ms})")

    res = run_cli("topics", "apply", env={"OBSERVER_TOPIC_PREFIX": isolated.topic_prefix})
    assert res.returncode == 1
    assert f"DRIFT     {raw}: retention.ms=1000" in res.stdout


def test_declared_partitions_are_what_the_broker_has(isolated: Settings) -> None:
    asyncio.run(apply_topics(isolated))

    async def partitions() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=isolated.bootstrap_servers)
        await admin.start()
        try:
            described = await admin.describe_topics([isolated.topic(n) for n in load_topics()])
        finally:
            await admin.close()
        return {d["topic"]: len(d["partitions"]) for d in described}

    got = asyncio.run(partitions())
    assert got == {isolated.topic(n): s.partitions for n, s in load_topics().items()}


# ------------------------------------------------------------------------------------- round trips


def test_avro_ticks_round_trip_through_the_broker_keyed_and_event_timed(isolated: Settings) -> None:
    asyncio.run(apply_topics(isolated))
    topic = isolated.topic("kis.ticks.raw")
    sent = ticks(500)
    asyncio.run(produce(isolated, topic, sent))
    got = asyncio.run(consume_all(isolated, topic, len(sent), group=f"{isolated.topic_prefix}reader"))
    assert len(got) == len(sent)
    key = lambda t: t["frame_seq"]  # noqa: E731
    assert sorted(got, key=key) == sorted(sent, key=key)


def test_postgres_copy_and_read_back_in_own_schema(stack: Settings, pg_schema: str) -> None:
    rows = [(t["symbol"], t["business_date"], t["cumulative_volume"], t["price"]) for t in ticks(1000)]
    with psycopg.connect(stack.postgres_dsn) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(pg_schema)))
        conn.execute(
            "CREATE TABLE trade (symbol text, business_date text, cumulative_volume bigint, price bigint,"
            " PRIMARY KEY (symbol, business_date, cumulative_volume))"
        )
        with conn.cursor() as cur, cur.copy("COPY trade FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        count = conn.execute("SELECT count(*), sum(cumulative_volume) FROM trade").fetchone()
        public = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name = 'trade'"
        ).fetchone()
    assert count == (1000, sum(r[2] for r in rows))
    assert public == (0,), "the test's table must live in its own schema"


# ----------------------------------------------------------------------------------------- recovery


def test_broker_killed_with_sigkill_comes_back_with_its_data(isolated: Settings) -> None:
    """kill -9 the broker, `observer stack up` again: it restarts and still has what was acked."""
    asyncio.run(apply_topics(isolated))
    topic = isolated.topic("kis.ticks.raw")
    sent = ticks(200)
    asyncio.run(produce(isolated, topic, sent))

    kafka = LocalKafka(isolated)
    pid = kafka.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), 30)

    status = run_cli("stack", "status")
    assert status.returncode == 1
    assert "kafka     stopped" in status.stdout and "crashed or killed?" in status.stdout

    up = run_cli("stack", "up", "--no-topics")
    assert up.returncode == 0, up.stderr
    assert "kafka: started" in up.stdout
    assert kafka.pid() not in (None, pid)

    got = asyncio.run(consume_all(isolated, topic, len(sent), group=f"{isolated.topic_prefix}after-crash"))
    assert sorted(t["frame_seq"] for t in got) == list(range(len(sent)))


def test_catalogue_rejects_a_value_without_schema(tmp_path: Path) -> None:
    from app.topics import TopicsError

    bad = tmp_path / "topics.toml"
    bad.write_text(
        '[defaults]\nreplication_factor=1\ncleanup_policy="delete"\nretention_ms=1\n'
        'min_insync_replicas=1\n[topics."x"]\nkey="k"\nvalue="NoSuchRecord"\npartitions=1\n'
    )
    with pytest.raises(TopicsError, match=r"NoSuchRecord\.avsc not in"):
        load_topics(bad)


def test_missing_postgres_without_apt_is_a_one_line_cause_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.config import load_settings
    from app.stack.postgres import LocalPostgres

    settings = load_settings(home=tmp_path / "home", pg_bin_dir=tmp_path, pg_port=free_port())
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get to install the server with
    with pytest.raises(StackError) as err:
        LocalPostgres(settings).install(progress=False)
    assert str(err.value) == (
        f"PostgreSQL 15 server not found in {tmp_path} and apt-get is unavailable; "
        "install postgresql-15 or set OBSERVER_PG_BIN_DIR"
    )


def test_broker_that_dies_during_start_up_is_reported_with_its_cause(stack: Settings, tmp_path: Path) -> None:
    """A broker that cannot start (here: a heap too small for the JVM) gives one line with the cause."""
    home = tmp_path / "home"
    lib = LocalKafka(stack).lib_dir
    (home / "kafka" / stack.kafka_version).mkdir(parents=True)
    (home / "kafka" / stack.kafka_version / "lib").symlink_to(lib)
    settings = stack.model_copy(
        update={"home": home, "kafka_heap": "1m", "kafka_port": free_port(), "kafka_controller_port": free_port()}
    )
    with pytest.raises(StackError, match=r"kafka exited during start-up: .*(heap|Heap)") as err:
        LocalKafka(settings).start()
    assert "\n" not in str(err.value)
