"""The publisher against the real broker (and without one), and the choice of credentials."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.bridge.assignments import AssignmentFollower
from app.bridge.journal import Journal, JournalRecord
from app.bridge.metrics import BridgeMetrics
from app.bridge.publisher import Mode, Publisher, PublisherConfig
from app.config import ConfigError, Settings
from app.kis.credentials import choose_credentials, simulator_credentials
from app.records import default_codec
from app.slots.policy import Decision
from app.topics import apply_topics, load_topics


async def read_all(settings: Settings, topic: str, expected: int, deadline_s: float = 30) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[bytes] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    try:
        while len(out) < expected and loop.time() < end:
            batch = await consumer.getmany(timeout_ms=500)
            out.extend(r.value for rs in batch.values() for r in rs if r.value is not None)
        # Anything beyond ``expected`` would be a duplicate: read on until the topic is quiet.
        while batch := await consumer.getmany(timeout_ms=1000):
            out.extend(r.value for rs in batch.values() for r in rs if r.value is not None)
    finally:
        await consumer.stop()
    return out


def test_a_partly_failed_journal_batch_is_retried_without_duplicates(isolated: Settings, tmp_path: Path) -> None:
    """Records for a topic that does not exist yet fail; the ones around them are acked once, not per retry."""
    catalogue = load_topics()
    ticks, late = isolated.topic("kis.ticks.raw"), isolated.topic("kis.dlq")

    async def scenario() -> None:
        await apply_topics(isolated, {k: v for k, v in catalogue.items() if k != "kis.dlq"})
        journal = Journal(tmp_path / "journal", max_bytes=2**24)
        records = [
            JournalRecord(
                late if i % 10 == 5 else ticks, b"005930", f"record-{i:04d}".encode(), 1_700_000_000_000 + i, i
            )
            for i in range(300)
        ]
        journal.append(records)
        metrics = BridgeMetrics()
        publisher = Publisher(
            PublisherConfig(isolated.bootstrap_servers, request_timeout_ms=1500, drain_batch=500), journal, metrics
        )
        assert publisher.mode is Mode.SPILL, "leftovers of a previous run are published first"
        await publisher.start()
        try:
            loop = asyncio.get_running_loop()
            end = loop.time() + 60
            while publisher.errors_total < 2:  # at least two attempts failed on the missing topic
                assert loop.time() < end, "the missing topic made the drain fail"
                await asyncio.sleep(0.05)
            assert len(journal) == 300, "nothing committed while part of the batch is unacked"
            await apply_topics(isolated, catalogue)
            await asyncio.wait_for(publisher.flush(), 60)
        finally:
            await publisher.stop()
            journal.close()
        got_ticks = await read_all(isolated, ticks, 270)
        got_late = await read_all(isolated, late, 30)
        assert sorted(got_ticks) == sorted(r.value for r in records if r.topic == ticks), "each tick exactly once"
        assert got_ticks == [r.value for r in records if r.topic == ticks], "in journal order"
        assert sorted(got_late) == sorted(r.value for r in records if r.topic == late)
        assert publisher.published_total == 300 and publisher.mode is Mode.DIRECT

    asyncio.run(scenario())


def test_stop_right_after_submit_publishes_every_record(isolated: Settings, tmp_path: Path) -> None:
    """Records the producer is being handed are neither queued nor in flight: flush and stop must wait for them.

    (They once returned at once in that window, and stop then cancelled the hand-over: the records were lost.)
    """
    topic = isolated.topic("kis.ticks.raw")

    async def scenario() -> None:
        await apply_topics(isolated)
        journal = Journal(tmp_path / "journal", max_bytes=2**24)
        publisher = Publisher(PublisherConfig(isolated.bootstrap_servers), journal, BridgeMetrics())
        await publisher.start()
        sent = 0
        for round_ in range(20):
            records = [
                JournalRecord(topic, b"005930", f"{round_}-{i}".encode(), 1_700_000_000_000, i) for i in range(5)
            ]
            publisher.submit(records)
            sent += len(records)
            await asyncio.sleep(0)  # the pump starts the hand-over before flush looks
            assert await publisher.flush(30), "flushed within the deadline"
            assert publisher.published_total == sent, f"round {round_}: flush returned before the acks"
        publisher.submit([JournalRecord(topic, b"005930", b"last", 1_700_000_000_000, 0)])
        await asyncio.sleep(0)
        await publisher.stop()
        journal.close()
        assert publisher.published_total + len(Journal(tmp_path / "journal", max_bytes=2**24)) == sent + 1
        assert len(await read_all(isolated, topic, sent + 1)) >= publisher.published_total

    asyncio.run(scenario())


def test_a_full_journal_pauses_ingest_loudly_and_keeps_every_record(tmp_path: Path, stack: Settings) -> None:
    """No broker at all and a tiny journal: submit more than fits; nothing is dropped, ingest is paused."""

    async def scenario() -> None:
        journal = Journal(tmp_path / "journal", max_bytes=4_000)
        metrics = BridgeMetrics()
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{s.getsockname()[1]}"
        publisher = Publisher(PublisherConfig(dead, request_timeout_ms=1000), journal, metrics)
        await publisher.start()
        try:
            assert publisher.mode is Mode.SPILL, "no broker at start: straight to the journal"
            records = [JournalRecord("ticks", b"005930", b"x" * 100, 1_700_000_000_000 + i, i) for i in range(100)]
            for i in range(0, 100, 10):
                publisher.submit(records[i : i + 10])
            loop = asyncio.get_running_loop()
            end = loop.time() + 30
            while metrics.journal_full._value.get() == 0:
                assert loop.time() < end, "the journal filled"
                await asyncio.sleep(0.02)
            waiter = asyncio.create_task(publisher.wait_capacity())
            await asyncio.sleep(0)
            assert not waiter.done(), "ingest waits while the journal is full"
            waiter.cancel()
            held = len(journal) + len(publisher._spill_buffer)
            assert held == 100 and publisher.published_total == 0
            assert metrics.journal_records._value.get() == len(journal) > 0
        finally:
            await publisher.stop(timeout_s=1)
            journal.close()
        reopened = Journal(tmp_path / "journal", max_bytes=10**6)
        try:
            kept, _ = reopened.peek(1_000)
        finally:
            reopened.close()
        assert [r.received_at_us for r in kept] == list(range(100)), "every record kept, in order, across a stop"

    asyncio.run(scenario())


def test_credentials_are_required_for_a_real_kis_and_never_invented() -> None:
    real = Settings(kis_rest_url="https://kis.example:9443")
    with pytest.raises(ConfigError, match=r"no KIS credentials for https://kis\.example:9443"):
        choose_credentials(real, {})
    creds = choose_credentials(real, {"OBSERVER_KIS_APP_KEY": "PSabc", "OBSERVER_KIS_APP_SECRET": "s3cret"})
    assert creds.app_key.get_secret_value() == "PSabc" and "s3cret" not in repr(creds)
    sim = choose_credentials(Settings(), {})
    assert sim == simulator_credentials("main"), "the simulator's fake credentials only for a loopback KIS"


def test_the_assignment_is_rebuilt_from_slot_decisions_and_bad_records_are_counted(isolated: Settings) -> None:
    """What the bridge subscribes after a restart comes from Kafka: assigns minus releases, per app key."""

    async def scenario() -> None:
        await apply_topics(isolated)
        codec = default_codec()
        topic = isolated.topic("slot.decisions")
        producer = AIOKafkaProducer(bootstrap_servers=isolated.bootstrap_servers, acks="all")
        await producer.start()
        try:
            for key, symbol, action in [
                ("main", "005930", "assign"),
                ("main", "000660", "assign"),
                ("other", "035720", "assign"),
                ("main", "005930", "release"),
            ]:
                value = codec.encode("SlotDecision", Decision.manual(key, 0, symbol, action, "test").to_record())
                await producer.send_and_wait(topic, value, key=key.encode())
            await producer.send_and_wait(topic, b"not avro", key=b"main")
        finally:
            await producer.stop()
        undecodable: list[int] = []
        follower = AssignmentFollower(
            isolated.bootstrap_servers, topic, "main", codec, on_undecodable=lambda: undecodable.append(1)
        )
        task = asyncio.create_task(follower.run())
        try:
            await asyncio.wait_for(follower.ready.wait(), 30)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert set(follower.assigned) == {"000660"}
        assert follower.undecodable == 1 and undecodable == [1]

    asyncio.run(scenario())
