"""The bridge end to end: the KIS simulator on real sockets, the real Kafka broker, exact reconciliation.

Every scenario ends by releasing all assignments. KIS sends no frame of a symbol after its
UNSUBSCRIBE SUCCESS, so once the bridge has every release confirmed and its publisher is idle, the
simulator's ledger and the topic must agree record for record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from procs import OBSERVER, RECENT_OPEN, free_port, read_line

from app import kafka_backoff
from app.bridge.main import BridgeRun, run_bridge
from app.config import Settings
from app.kis.credentials import simulator_credentials
from app.records import default_codec
from app.sim.market import Market
from app.sim.server import KisSimulator, SimConfig
from app.sim.ws import WsFaults, WsLimits
from app.slots.policy import Decision
from app.stack.kafka import LocalKafka
from app.topics import apply_topics

START = RECENT_OPEN


async def wait_for(condition: Callable[[], bool], deadline_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def decide(settings: Settings, symbols: list[str], action: str, app_key_id: str = "main") -> None:
    codec = default_codec()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for slot, symbol in enumerate(symbols):
            value = codec.encode("SlotDecision", Decision.manual(app_key_id, slot, symbol, action, "test").to_record())
            await producer.send_and_wait(settings.topic("slot.decisions"), value, key=app_key_id.encode())
    finally:
        await producer.stop()


async def read_topic(
    settings: Settings, name: str, expected: int | None = None, idle_s: float = 3.0, deadline_s: float = 60.0
) -> list[dict[str, Any]]:
    """Everything in a topic: until ``expected`` records arrived, or until idle for ``idle_s``."""
    codec = default_codec()
    consumer = AIOKafkaConsumer(
        settings.topic(name),
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    try:
        end = loop.time() + deadline_s
        last = loop.time()
        while loop.time() < end:
            batch = await consumer.getmany(timeout_ms=500)
            got = [codec.decode(r.value)[1] | {"_ts": r.timestamp} for rs in batch.values() for r in rs]
            out.extend(got)
            if got:
                last = loop.time()
            if expected is not None and len(out) >= expected:
                break
            if expected is None and loop.time() - last > idle_s:
                break
    finally:
        await consumer.stop()
    return out


@contextlib.asynccontextmanager
async def sim_and_bridge(
    settings: Settings,
    symbols: list[str] | None = None,
    n_assign: int = 41,
    watchdog_s: float = 30,
    **sim_overrides: Any,
) -> AsyncIterator[tuple[KisSimulator, BridgeRun, Settings]]:
    config = dataclasses.replace(SimConfig(start=START, rest_port=0, ws_port=0, speed=10), **sim_overrides)
    sim = KisSimulator(config)
    await sim.start()
    await apply_topics(settings)
    chosen = symbols or [s.code for s in sim.market.symbols[:n_assign]]
    await decide(settings, chosen, "assign")
    s = settings.model_copy(update={"kis_rest_url": sim.rest_url, "kis_ws_url": sim.ws_url})
    stop = asyncio.Event()
    runs: list[BridgeRun] = []
    task = asyncio.create_task(
        run_bridge(s, stop=stop, on_ready=runs.append, metrics_port=0, watchdog_s=watchdog_s, watchdog_always=True)
    )
    try:
        await wait_for(lambda: bool(runs) or task.done(), 30, "the bridge to start")
        if task.done():
            task.result()
        yield sim, runs[0], s
    finally:
        stop.set()
        await asyncio.wait_for(task, 90)
        await sim.stop()


async def release_all_and_settle(sim: KisSimulator, run: BridgeRun, settings: Settings, symbols: list[str]) -> None:
    await decide(settings, symbols, "release")
    bridge = run.bridge
    await wait_for(
        lambda: bridge.session is not None and not bridge.session.registered and not bridge.session.pending,
        60,
        "every release confirmed by KIS",
    )
    await asyncio.wait_for(run.publisher.flush(), 120)


@pytest.fixture
def bridge_settings(isolated: Settings, tmp_path: Path) -> Settings:
    return isolated.model_copy(update={"home": tmp_path / "home"})


def test_every_record_sent_reaches_kafka_and_every_bad_frame_the_dlq(bridge_settings: Settings) -> None:
    """41 subscriptions, 10x speed, 5 simulated minutes, bad frames injected."""

    async def scenario() -> None:
        faults = WsFaults(malformed_rate=0.01, wrong_field_count_rate=0.005, unknown_tr_rate=0.005, seed=3)
        async with sim_and_bridge(bridge_settings, ws_faults=faults) as (sim, run, s):
            symbols = [x.code for x in sim.market.symbols[:41]]
            await wait_for(lambda: sim.clock.now_kst() >= START + dt.timedelta(minutes=5), 60, "5 simulated min")
            await release_all_and_settle(sim, run, s, symbols)
            totals = sim.ledger.totals()
            ticks = await read_topic(s, "kis.ticks.raw", expected=totals["records_sent"])
            dlq = await read_topic(s, "kis.dlq", expected=totals["bad_frames_total"])
            events = await read_topic(s, "kis.subscriptions")
            bridge = run.bridge
        counts = await read_topic(s, "observer.counts")  # the run's final counts go out as the bridge stops

        assert totals["records_sent"] > 5_000
        assert len(ticks) == totals["records_sent"], "records sent by KIS == records in kis.ticks.raw"
        identities = {(t["session_id"], t["frame_seq"], t["record_index"]) for t in ticks}
        assert len(identities) == len(ticks), "no duplicates"
        assert Counter(t["symbol"] for t in ticks) == Counter(totals["records_by_symbol"])
        assert all(t["_ts"] == t["event_time_us"] // 1000 for t in ticks), "Kafka timestamp = trade time"
        assert len(dlq) == totals["bad_frames_total"] > 0
        assert (
            Counter(d["reason"] for d in dlq)
            == Counter(
                {
                    "bad_number": totals["bad_frames"].get("malformed", 0),
                    "wrong_field_count": totals["bad_frames"].get("wrong_field_count", 0),
                    "unknown_tr_id": totals["bad_frames"].get("unknown_tr", 0),
                }
            )
            - Counter()
        )
        assert all(d["payload"].startswith(b"0|") and d["stage"] == "bridge" for d in dlq)
        outcomes = Counter((e["action"], e["outcome"]) for e in events)
        assert outcomes[("subscribe", "success")] == 41 and outcomes[("unsubscribe", "unsubscribed")] == 41
        assert bridge.records_parsed == len(ticks) and bridge.dead_lettered == len(dlq)
        assert run.metrics.published.labels(s.topic("kis.ticks.raw"))._value.get() == len(ticks)
        # The day's counts for observer audit: the last record of the run is final and matches Kafka's contents.
        day = START.strftime("%Y%m%d")
        final = [c for c in counts if c["final"]]
        assert [(c["stage"], c["instance"], c["business_date"]) for c in final] == [("bridge", "main", day)]
        assert final[0]["counts"]["records_parsed"] == len(ticks)
        assert final[0]["counts"]["frames_received"] == bridge.frames_received
        assert {k.removeprefix("dead_letters."): v for k, v in final[0]["counts"].items() if "dead" in k} == Counter(
            d["reason"] for d in dlq
        )

    asyncio.run(scenario())


def test_a_42nd_assignment_is_refused_and_the_bridge_keeps_running(bridge_settings: Settings) -> None:
    async def scenario() -> None:
        async with sim_and_bridge(bridge_settings, n_assign=42) as (sim, run, s):
            symbols = [x.code for x in sim.market.symbols[:42]]
            await wait_for(
                lambda: (
                    run.bridge.session is not None
                    and len(run.bridge.session.registered) == 41
                    and len(run.bridge.session.refused) == 1
                ),
                30,
                "41 registered and 1 refused",
            )
            frames_before = run.bridge.frames_received
            await wait_for(lambda: run.bridge.frames_received > frames_before + 50, 30, "frames after the refusal")
            assert run.bridge.sessions_opened == 1
            await release_all_and_settle(sim, run, s, symbols)
            events = await read_topic(s, "kis.subscriptions")
        refused = [e for e in events if e["outcome"] == "max_subscribe_over"]
        assert len(refused) == 1
        assert refused[0]["msg_cd"] == "OPSP0008" and refused[0]["decision_id"] == f"test-assign-{refused[0]['symbol']}"

    asyncio.run(scenario())


def test_drops_are_survived_and_only_gap_trades_are_missing(bridge_settings: Settings) -> None:
    async def scenario() -> None:
        async with sim_and_bridge(bridge_settings, ws_faults=WsFaults(drop_every_s=8)) as (sim, run, s):
            symbols = [x.code for x in sim.market.symbols[:41]]
            await wait_for(lambda: sim.ledger.drops >= 3, 60, "three drops")
            await wait_for(lambda: len(run.bridge.restore_times_s) >= 4, 30, "the fourth session restored")
            await release_all_and_settle(sim, run, s, symbols)
            totals = sim.ledger.totals()
            ticks = await read_topic(s, "kis.ticks.raw", expected=totals["records_sent"])
            restore = list(run.bridge.restore_times_s)
        assert len(ticks) == totals["records_sent"]
        assert len({(t["session_id"], t["frame_seq"], t["record_index"]) for t in ticks}) == len(ticks)
        assert totals["drops"] >= 3
        assert max(restore) < 2.0, f"subscriptions restored within 2 s each time: {restore}"
        assert totals["missed_while_unregistered"] > 0, "the gaps are on the ledger"

    asyncio.run(scenario())


class LogCount(logging.Handler):
    """Counts the log records whose message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text, self.n = text, 0

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.n += 1


def test_broker_stopped_for_60_s_loses_and_duplicates_nothing(bridge_settings: Settings, stack: Settings) -> None:
    async def scenario() -> None:
        async with sim_and_bridge(bridge_settings, n_assign=20) as (sim, run, s):
            symbols = [x.code for x in sim.market.symbols[:20]]
            await wait_for(lambda: run.publisher.published_total > 1000, 60, "ticks flowing")
            kafka = LocalKafka(stack)  # the real broker (the bridge's own state lives in a temp home)
            failed_updates = LogCount("Unable to update metadata")
            logging.getLogger("aiokafka").addHandler(failed_updates)
            try:
                assert (await asyncio.to_thread(kafka.stop)).startswith("kafka: stopped")
                stopped_at = run.bridge.records_parsed
                # The outage itself: 60 s without a broker while trades keep arriving.
                await asyncio.sleep(60)
                parsed_in_outage = run.bridge.records_parsed - stopped_at
                journaled = run.publisher.journaled_total
            finally:
                logging.getLogger("aiokafka").removeHandler(failed_updates)
                await asyncio.to_thread(kafka.start)  # whatever failed: the tests after this one need it
            assert parsed_in_outage > 1000, "ingest went on during the outage"
            assert journaled > 0, "the journal took the records"
            # Without app.kafka_backoff, aiokafka's clients retry at once: 92,282 failures in these 60 s (125 with it).
            assert 0 < failed_updates.n < 600, f"{failed_updates.n} failed metadata updates in 60 s"
            await release_all_and_settle(sim, run, s, symbols)
            totals = sim.ledger.totals()
            ticks = await read_topic(s, "kis.ticks.raw", expected=totals["records_sent"], deadline_s=120)
        assert len(ticks) == totals["records_sent"]
        assert len({(t["session_id"], t["frame_seq"], t["record_index"]) for t in ticks}) == len(ticks)

    asyncio.run(scenario())


def test_a_silent_feed_trips_the_watchdog_and_the_bridge_reconnects(bridge_settings: Settings) -> None:
    """The session stays open but data stops (a stale feed): reconnect, count it, lose nothing sent."""

    async def scenario() -> None:
        faults = WsFaults(stall_after_s=2.0)
        async with sim_and_bridge(bridge_settings, n_assign=10, watchdog_s=1.5, ws_faults=faults) as (sim, run, s):
            symbols = [x.code for x in sim.market.symbols[:10]]
            trips = run.metrics.watchdog_trips
            await wait_for(lambda: trips._value.get() >= 2, 30, "two watchdog trips")
            await wait_for(lambda: len(run.bridge.restore_times_s) >= 3, 30, "the third session restored")
            await release_all_and_settle(sim, run, s, symbols)
            totals = sim.ledger.totals()
            ticks = await read_topic(s, "kis.ticks.raw", expected=totals["records_sent"])
            reconnects = run.metrics.reconnects.labels("watchdog")._value.get()
        assert totals["withheld_by_stall"] > 0 and reconnects >= 2
        assert len(ticks) == totals["records_sent"]

    asyncio.run(scenario())


def test_an_invalid_approval_key_is_replaced_once_not_retried_in_a_loop(bridge_settings: Settings) -> None:
    """KIS forgets the approval key (expiry, server restart): the bridge asks for a new one and carries on."""

    async def scenario() -> None:
        async with sim_and_bridge(bridge_settings, n_assign=5) as (sim, run, s):
            symbols = [x.code for x in sim.market.symbols[:5]]
            await wait_for(lambda: len(run.bridge.restore_times_s) == 1, 30, "the first session restored")
            issued_before = sim.rest_app["stats"].approvals_issued
            sim.rest_app["approval_keys"].clear()  # every issued key is now unknown to the WebSocket server
            await sim.ws.drop_all()
            await wait_for(lambda: len(run.bridge.restore_times_s) == 2, 30, "a session restored with a new key")
            invalid = run.metrics.session_errors.labels("invalid_approval")._value.get()
            issued_after = sim.rest_app["stats"].approvals_issued
            await release_all_and_settle(sim, run, s, symbols)
            events = await read_topic(s, "kis.subscriptions")
        assert invalid == 1
        assert issued_after == issued_before + 1, "exactly one new approval key"
        assert any(e["outcome"] == "invalid_approval" and e["msg_cd"] == "OPSP0011" for e in events)
        assert run.bridge.sessions_opened == 3  # the first, the refused one, the one with the new key

    asyncio.run(scenario())


def test_a_second_session_on_the_same_app_key_backs_off_instead_of_looping(
    bridge_settings: Settings, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with sim_and_bridge(bridge_settings, n_assign=3) as (sim, run, s):
            await wait_for(lambda: len(run.bridge.restore_times_s) == 1, 30, "the first bridge subscribed")
            second_settings = s.model_copy(update={"home": tmp_path / "second-home"})
            stop = asyncio.Event()
            runs: list[BridgeRun] = []
            task = asyncio.create_task(run_bridge(second_settings, stop=stop, on_ready=runs.append, metrics_port=0))
            await wait_for(lambda: bool(runs) or task.done(), 30, "the second bridge to start")
            second = runs[0]
            in_use = second.metrics.session_errors.labels("appkey_in_use")
            await wait_for(lambda: in_use._value.get() == 1 and second.bridge.retry_at is not None, 30, "the refusal")
            assert second.bridge.retry_at is not None
            wait_left = second.bridge.retry_at - time.monotonic()
            assert "ALREADY IN USE appkey" in second.bridge.last_error
            assert sim.ledger.refused_sessions["main"] == 1
            frames_before = run.bridge.frames_received
            await wait_for(lambda: run.bridge.frames_received > frames_before + 20, 30, "the first bridge's frames")
            assert run.bridge.sessions_opened == 1, "the first session was not disturbed"
            stop.set()
            await asyncio.wait_for(task, 30)  # a stop ends the back-off at once
        assert wait_left > 50, f"the next attempt waits about a minute, not {wait_left:.1f} s"
        assert sim.ledger.refused_sessions["main"] == 1, "no second attempt during the back-off"

    asyncio.run(scenario())


def metric_value(port: int, name: str, labels: str = "") -> float:
    """One sample scraped from the bridge's Prometheus endpoint over HTTP (0 if not there yet)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_observer_bridge_serves_metrics_and_prints_a_summary_on_sigterm(isolated: Settings, tmp_path: Path) -> None:
    rest, ws, metrics = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OBSERVER_HOME": str(tmp_path / "home"),
        "OBSERVER_TOPIC_PREFIX": isolated.topic_prefix,
        "OBSERVER_KAFKA_PORT": str(isolated.kafka_port),
        "OBSERVER_KIS_REST_URL": f"http://127.0.0.1:{rest}",
        "OBSERVER_KIS_WS_URL": f"ws://127.0.0.1:{ws}",
    }
    asyncio.run(apply_topics(isolated))
    sim = subprocess.Popen(
        [*OBSERVER, "sim", "--rest-port", str(rest), "--ws-port", str(ws), "--speed", "10", "--start", "09:00"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    bridge = None
    try:
        read_line(sim, "sim: KIS REST on")
        creds = simulator_credentials("main")
        market = Market(seed=SimConfig().seed, business_date=START.date())  # the universe depends on the seed
        asyncio.run(decide(isolated, [s.code for s in market.symbols[:5]], "assign"))
        bridge = subprocess.Popen(
            [*OBSERVER, "bridge", "--metrics-port", str(metrics)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        ticks_label = f'{{topic="{isolated.topic("kis.ticks.raw")}"}}'
        end = time.monotonic() + 60
        published = 0.0
        while published < 200:
            assert time.monotonic() < end and bridge.poll() is None, "200 ticks acked within 60 s"
            with contextlib.suppress(OSError):
                published = metric_value(metrics, "observer_bridge_published_total", ticks_label)
            time.sleep(0.1)
        assert metric_value(metrics, "observer_bridge_subscribed_symbols") == 5
        bridge.send_signal(signal.SIGTERM)
        out, err = bridge.communicate(timeout=60)
        assert bridge.returncode == 0, err
        summary = out.strip().splitlines()[-1]
        m = re.search(r"(\d+) records parsed, (\d+) records acked by Kafka, (\d+) dead-lettered, (\d+) left", summary)
        assert m, summary
        parsed, acked, _dead, left = map(int, m.groups())
        assert parsed >= 200 and acked >= parsed and left == 0, summary  # acked also counts subscription events
        for secret in (creds.app_key.get_secret_value(), creds.app_secret.get_secret_value()):
            assert secret not in out and secret not in err
    finally:
        for proc in (bridge, sim):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_pingpong_is_echoed_so_kis_keeps_the_session(bridge_settings: Settings) -> None:
    """KIS closes a session that does not echo PINGPONG; with a ping every 0.3 s the session must live on."""

    async def scenario() -> None:
        limits = WsLimits(pingpong_interval_s=0.3, pingpong_timeout_s=1.0)
        async with sim_and_bridge(bridge_settings, n_assign=3, limits=limits) as (sim, run, s):
            session = sim.ledger.sessions
            await wait_for(lambda: bool(session) and session[0].pongs_received >= 5, 30, "five PINGPONG echoes")
            await release_all_and_settle(sim, run, s, [x.code for x in sim.market.symbols[:3]])
            pings = run.bridge.metrics.pingpongs._value.get()
        assert run.bridge.sessions_opened == 1 and len(sim.ledger.sessions) == 1
        assert pings >= 5

    asyncio.run(scenario())


def test_the_pause_between_failed_metadata_updates_doubles_up_to_a_second() -> None:
    assert [kafka_backoff.pause_s(0.1, n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert kafka_backoff.pause_s(0.1, 10_000) == kafka_backoff.MAX_PAUSE_S
