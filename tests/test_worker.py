"""``observer worker`` as a process against the real broker: surges from ticks, state back after kill -9."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from procs import OBSERVER, RECENT_OPEN, free_port
from test_codec import EXAMPLES

from app.config import Settings
from app.krx import is_trading_day
from app.records import default_codec
from app.surge.rule import MINUTE_US
from app.topics import apply_topics

SYMBOL = "005930"
DAY = RECENT_OPEN.strftime("%Y%m%d")
T0 = int(RECENT_OPEN.timestamp()) * 1_000_000  # 09:00 KST of a recent trading day, a minute boundary


def ticks_for(minutes: dict[int, int], start_cum: int = 0, per_minute: int = 5) -> tuple[list[dict[str, Any]], int]:
    """RawTicks of SYMBOL: each minute's volume in ``per_minute`` equal trades, cumulative volume growing."""
    out = []
    cum = start_cum
    seq = 0
    for minute, volume in sorted(minutes.items()):
        for k in range(per_minute):
            size = volume // per_minute
            cum += size
            seq += 1
            tick = dict(EXAMPLES["RawTick"])
            tick.update(
                symbol=SYMBOL,
                business_date=DAY,
                event_time_us=T0 + minute * MINUTE_US + k * 10_000_000,
                trade_volume=size,
                cumulative_volume=cum,
                frame_seq=minute * 100 + k,
                record_index=0,
            )
            out.append(tick)
    return out, cum


async def produce(settings: Settings, ticks: list[dict[str, Any]], stamp_now: bool = False) -> None:
    """Ticks to kis.ticks.raw, each stamped with its trade time (or the time now: an older trade day would
    be deleted by the topic's retention)."""
    codec = default_codec()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for t in ticks:
            await producer.send(
                settings.topic("kis.ticks.raw"),
                codec.encode("RawTick", t),
                key=t["symbol"].encode(),
                timestamp_ms=None if stamp_now else t["event_time_us"] // 1000,
            )
        await producer.flush()
    finally:
        await producer.stop()


async def committed(settings: Settings, group: str, topic: str, partitions: int = 12) -> tuple[int, int]:
    """(offsets the group has committed, records in the topic), summed over the topic's partitions."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    await consumer.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        done = sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return done, sum(ends.values())
    finally:
        await consumer.stop()
        await admin.close()


def wait_committed(settings: Settings, group: str, topic: str, deadline_s: float = 60, partitions: int = 12) -> None:
    """Until the group has committed every record the topic holds now (its state is then in the changelogs)."""
    end = time.monotonic() + deadline_s
    target = asyncio.run(committed(settings, group, topic, partitions))[1]
    seen = (0, target)
    while time.monotonic() < end:
        seen = asyncio.run(committed(settings, group, topic, partitions))
        if target > 0 and seen[0] >= target:
            return
        time.sleep(0.3)
    raise AssertionError(f"{group} committed {seen[0]} of {seen[1]} offsets of {topic} in {deadline_s} s")


class WorkerProcess:
    def __init__(self, settings: Settings, home: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OBSERVER_HOME": str(home),
            "OBSERVER_TOPIC_PREFIX": settings.topic_prefix,
            "OBSERVER_KAFKA_PORT": str(settings.kafka_port),
            "OBSERVER_SURGE_MIN_VOLUME": "1000",
            "OBSERVER_SCANNER_INTERVAL_S": "0",  # no KIS here; the scanner test turns it on
            **(extra_env or {}),
        }
        self.log = open(home / f"worker-{self.port}.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*OBSERVER, "worker", "--web-port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT, env=env
        )

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " "):  # exact name and labels
                    return float(line.split()[1])
        return 0.0

    def metric_or_zero(self, name: str) -> float:
        try:
            return self.metric(name)
        except OSError:
            return 0.0

    def wait_metric(self, name: str, value: float, deadline_s: float = 60) -> None:
        end = time.monotonic() + deadline_s
        seen = None
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"worker exited {self.proc.returncode}"
            try:
                seen = self.metric(name)
            except OSError:
                seen = None
            if seen == value:
                return
            time.sleep(0.2)
        raise AssertionError(f"{name} is {seen}, not {value}, after {deadline_s} s")

    def log_text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=60)
        finally:
            self.log.close()
        return code


async def read_surges(
    settings: Settings,
    expected: int,
    worker: WorkerProcess,
    deadline_s: float = 90,
    until: Callable[[list[dict[str, Any]]], bool] | None = None,
) -> list[dict[str, Any]]:
    """Surges from the start of the topic, until ``expected`` of them (or ``until`` holds) or the deadline."""
    done = until or (lambda got: len(got) >= expected)
    codec = default_codec()
    consumer = AIOKafkaConsumer(
        settings.topic("observer.surges"),
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[dict[str, Any]] = []
    end = time.monotonic() + deadline_s
    try:
        while not done(out) and time.monotonic() < end:
            assert worker.proc.poll() is None, f"the worker exited with {worker.proc.returncode}; see {worker.log.name}"
            batch = await consumer.getmany(timeout_ms=500)
            out.extend(codec.decode(r.value)[1] for rs in batch.values() for r in rs)
    finally:
        await consumer.stop()
    return out


@pytest.fixture
def worker_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    yield home


def test_worker_finds_a_surge_and_keeps_its_windows_across_kill_9(isolated: Settings, worker_home: Path) -> None:
    asyncio.run(apply_topics(isolated))
    quiet = {m: 1_000 for m in range(10)}
    first, cum = ticks_for({**quiet, 10: 5_000})  # minute 10: 3,000 of 5,000 crosses 3 x 1,000
    asyncio.run(produce(isolated, first))
    worker = WorkerProcess(isolated, worker_home)
    try:
        surges = asyncio.run(read_surges(isolated, 1, worker))
        assert [(s["current_volume"], s["avg_volume_10m"], s["surge_ratio"]) for s in surges] == [(3_000, 1_000.0, 3.0)]
        assert surges[0]["window_start_us"] == T0 + 10 * MINUTE_US and surges[0]["source"] == "ticks"
        worker.wait_metric("observer_worker_ticks_in_total", len(first))
        # Once the ticks are committed, a restart does not read them again: the windows must come back
        # from the changelog, which is written before every commit.
        wait_committed(isolated, f"{isolated.topic_prefix}observer", isolated.topic("kis.ticks.raw"))
    finally:
        assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
    # Minute 11 surges only against the restored windows: avg of minutes 1..10 = (9 x 1,000 + 5,000) / 10.
    second, _ = ticks_for({11: 5_000}, start_cum=cum)
    asyncio.run(produce(isolated, second))
    restarted = WorkerProcess(isolated, worker_home)
    try:
        surges = asyncio.run(read_surges(isolated, 2, restarted))
        restarted.wait_metric("observer_worker_ticks_in_total", len(second))  # only the new ticks
        assert len(surges) == 2, f"minute 10 once, then minute 11: {surges}"
        assert (surges[1]["current_volume"], surges[1]["avg_volume_10m"]) == (5_000, 1_400.0)
    finally:
        assert restarted.stop() == 0


SURGING = [f"{i:06d}" for i in range(100, 900, 100)]  # eight symbols surge in minute 12, at different seconds


def morning(symbols: list[str]) -> list[dict[str, Any]]:
    """09:00-09:15 for each symbol, 1,000 shares a minute; the i-th of SURGING trades 4,000 + 500 i in minute
    12, so each crosses 3 x 1,000 at a different trade, and they compete for three slots."""
    out = []
    for symbol in symbols:
        minutes = {m: 1_000 for m in range(16)}
        if symbol in SURGING:
            minutes[12] = 4_000 + 500 * SURGING.index(symbol)
        ticks, _ = ticks_for(minutes)
        out.extend(t | {"symbol": symbol} for t in ticks)
    return sorted(out, key=lambda t: (t["event_time_us"], t["symbol"]))


async def read_raw(settings: Settings, topic: str, idle_s: float = 3.0) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[bytes] = []
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            batch = await consumer.getmany(timeout_ms=500)
            got = [r.value for rs in batch.values() for r in rs if r.value is not None]
            out.extend(got)
            if got:
                last = time.monotonic()
    finally:
        await consumer.stop()
    return out


def get_json(worker: WorkerProcess, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def check_views(worker: WorkerProcess, home: Path) -> None:
    """The JSON views and the status page, as a browser renders it, after 8 surges fought for 3 slots."""
    code, health = get_json(worker, "/api/health")
    assert (code, health["status"]) == (200, "ok") and health["assigned_partitions"] > 0, health
    _, slots = get_json(worker, "/api/slots")
    held = {h["symbol"] for h in slots["pools"]["main"]}
    assert slots["owner"] and slots["held"] == 3 and held <= set(SURGING), slots
    _, surges = get_json(worker, "/api/surges")
    assert sorted(s["symbol"] for s in surges["surges"]) == sorted(SURGING)
    _, windows = get_json(worker, f"/api/symbols/{SURGING[0]}/windows")
    ticks = windows["ticks"]
    assert ticks["business_date"] == DAY and sum(m["volume"] for m in ticks["minutes"]) > 0, windows
    code, missing = get_json(worker, "/api/symbols/999999/windows")
    assert code == 404 and "no windows" in missing["error"]
    _, counters = get_json(worker, "/api/counters")
    assert counters['observer_worker_surges_total{source="ticks"}'] == len(SURGING)

    chromium = shutil.which("chromium")
    assert chromium, "the status page test needs Debian's chromium package (.ci/run installs it)"
    url = f"http://127.0.0.1:{worker.port}/"
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    assert 'id="health" class="big ok">health: ok<' in dom, dom[:2000]
    assert '<span id="held">3</span> of 3 held' in dom
    assert f'<span id="surge-count">{len(SURGING)}</span>' in dom
    for symbol in held:
        assert f'<td class="sym">{symbol}</td>' in dom
    shot = home / "status.png"
    subprocess.run(
        [*browser, "--window-size=1000,1400", f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True
    )
    assert shot.stat().st_size > 10_000, "a rendered page, not a blank one"


def test_two_fresh_app_ids_make_byte_identical_slot_decisions(isolated: Settings, tmp_path: Path) -> None:
    asyncio.run(apply_topics(isolated))
    symbols = [f"{i:06d}" for i in range(100, 2_000, 100)]
    ticks = morning(symbols)
    asyncio.run(produce(isolated, ticks))
    runs = {}
    for run in ("runA", "runB"):
        home = tmp_path / run
        home.mkdir()
        worker = WorkerProcess(
            isolated,
            home,
            {
                "OBSERVER_WORKER_APP_ID": run,
                "OBSERVER_OUTPUT_PREFIX": f"{isolated.topic_prefix}{run}.",
                "OBSERVER_SLOT_CAPACITY": "3",
                "OBSERVER_SLOT_BOOTSTRAP": "[]",
            },
        )
        try:
            worker.wait_metric("observer_worker_ticks_in_total", len(ticks), deadline_s=90)
            worker.wait_metric('observer_worker_slot_decisions_total{action="assign"}', 3, deadline_s=60)
            worker.wait_metric('observer_worker_slot_overflow_total{reason="weaker_holders_within_min_dwell"}', 5)
            if run == "runA":
                check_views(worker, home)
        finally:
            assert worker.stop() == 0
        out = isolated.model_copy(update={"topic_prefix": f"{isolated.topic_prefix}{run}."})
        runs[run] = (
            asyncio.run(read_raw(isolated, out.topic("slot.decisions"))),
            asyncio.run(read_raw(isolated, out.topic("slot.overflow"))),
        )
    decisions_a, overflow_a = runs["runA"]
    decisions_b, overflow_b = runs["runB"]
    assert decisions_a == decisions_b and overflow_a == overflow_b, "byte-identical streams"
    codec = default_codec()
    decided = [codec.decode(v)[1] for v in decisions_a]
    overflowed = [codec.decode(v)[1] for v in overflow_a]
    assert [d["action"] for d in decided] == ["assign"] * 3
    assert {d["symbol"] for d in decided} | {o["symbol"] for o in overflowed} == set(SURGING)
    times = [d["decided_at_us"] for d in decided] + [o["decided_at_us"] for o in overflowed]
    assert times == sorted(times), "decided in event-time order, the first three crossings took the slots"


def test_partitions_read_to_their_end_do_not_hold_decisions_back(isolated: Settings, tmp_path: Path) -> None:
    """Silence never counts here (``OBSERVER_SLOT_IDLE_S`` is an hour) and no snapshot partition ever
    speaks, so only the live edge can let the merge go: with it the surges are decided as soon as the
    worker has read everything; without it (as in an event-time replay) they wait."""
    asyncio.run(apply_topics(isolated))
    ticks = morning([f"{i:06d}" for i in range(100, 2_000, 100)])
    asyncio.run(produce(isolated, ticks))
    surges = 'observer_worker_slot_inputs_total{kind="surge"}'
    for run, at_end in (("edgeOn", "true"), ("edgeOff", "false")):
        home = tmp_path / run
        home.mkdir()
        env = {
            "OBSERVER_WORKER_APP_ID": run,
            "OBSERVER_OUTPUT_PREFIX": f"{isolated.topic_prefix}{run}.",
            "OBSERVER_SLOT_CAPACITY": "3",
            "OBSERVER_SLOT_BOOTSTRAP": "[]",
            "OBSERVER_SLOT_IDLE_S": "3600",
            "OBSERVER_SLOT_RELEASE_AT_LOG_END": at_end,
        }
        worker = WorkerProcess(isolated, home, env)
        try:
            worker.wait_metric(surges, len(SURGING), deadline_s=90)
            if at_end == "true":
                worker.wait_metric('observer_worker_slot_decisions_total{action="assign"}', 3, deadline_s=60)
                worker.wait_metric("observer_worker_slot_pending_inputs", 0, deadline_s=30)
            else:
                worker.wait_metric("observer_worker_slot_pending_inputs", len(SURGING), deadline_s=30)
                assert worker.metric('observer_worker_slot_decisions_total{action="assign"}') == 0
        finally:
            assert worker.stop() == 0


def test_the_scanner_lets_a_symbol_without_a_slot_surge_on_snapshots(isolated: Settings, worker_home: Path) -> None:
    """The simulator at 60x; nobody subscribes to anything, so 003920's volume is seen only by the scanner's
    inquire_price polls. Its surge at 09:12 (20x for 3 minutes) must come out as a snapshot surge, stamped
    with the simulated time the REST replies carried."""
    asyncio.run(apply_topics(isolated))
    rest_port, ws_port = free_port(), free_port()
    worker = WorkerProcess(
        isolated,
        worker_home,
        {
            "OBSERVER_KIS_REST_URL": f"http://127.0.0.1:{rest_port}",
            "OBSERVER_SCANNER_INTERVAL_S": "0.5",
            "OBSERVER_SCANNER_RANKINGS": '["0"]',
            "OBSERVER_SCANNER_WATCHLIST": '["003920"]',
        },
    )
    sim = None
    try:
        worker.wait_metric('observer_scanner_polls_total{outcome="failed_call"}', 1, deadline_s=60)  # ready, no KIS
        sim_args = ["--rest-port", str(rest_port), "--ws-port", str(ws_port), "--speed", "60", "--start", "09:00"]
        sim_args += ["--date", RECENT_OPEN.date().isoformat(), "--surge", "003920@09:12+3x20"]
        sim = subprocess.Popen(
            [*OBSERVER, "sim", *sim_args],
            stdout=subprocess.DEVNULL,
            stderr=open(worker_home / "sim.err", "w"),  # noqa: SIM115 - the child keeps it
        )
        ours = lambda got: any(s["symbol"] == "003920" for s in got)  # noqa: E731
        surges = asyncio.run(read_surges(isolated, 0, worker, deadline_s=90, until=ours))
        assert sim.poll() is None, (worker_home / "sim.err").read_text()
        # Others may surge too (the volume ranking sees the whole market); ours is seen by its price polls.
        surge = next(s for s in surges if s["symbol"] == "003920")
        assert surge["source"] == "snapshots" and all(s["source"] == "snapshots" for s in surges)
        window = dt.datetime.fromtimestamp(surge["window_start_us"] / 1e6, RECENT_OPEN.tzinfo)
        assert dt.time(9, 12) <= window.time() < dt.time(9, 15), f"the surge's minute is simulated time: {window}"
        assert surge["surge_ratio"] >= 3 and surge["business_date"] == DAY
    finally:
        if sim is not None:
            sim.terminate()
            sim.wait(timeout=30)
        assert worker.stop() == 0
    snapshots = [default_codec().decode(v)[1] for v in asyncio.run(read_raw(isolated, isolated.topic("kis.snapshots")))]
    assert snapshots and all(s["business_date"] == DAY for s in snapshots)
    assert {s["source"] for s in snapshots} == {"volume_rank", "multi_price"}


def decisions_and_overflow(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    codec = default_codec()
    decided = [codec.decode(v)[1] for v in asyncio.run(read_raw(settings, settings.topic("slot.decisions")))]
    overflowed = [codec.decode(v)[1] for v in asyncio.run(read_raw(settings, settings.topic("slot.overflow")))]
    return decided, overflowed


def test_slot_state_comes_back_from_the_changelog_after_kill_9(isolated: Settings, worker_home: Path) -> None:
    """Three slots held and committed, kill -9, restart: the restarted manager still holds them, so a
    stronger surge four minutes later *replaces* the weakest (release + assign) instead of taking one of
    three free slots, and nothing decided before the kill is decided again."""
    asyncio.run(apply_topics(isolated))
    ticks = morning(SURGING)
    asyncio.run(produce(isolated, ticks))
    env = {"OBSERVER_SLOT_CAPACITY": "3", "OBSERVER_SLOT_BOOTSTRAP": "[]"}
    group = f"{isolated.topic_prefix}observer"
    worker = WorkerProcess(isolated, worker_home, env)
    try:
        worker.wait_metric("observer_worker_ticks_in_total", len(ticks), deadline_s=90)
        worker.wait_metric('observer_worker_slot_decisions_total{action="assign"}', 3, deadline_s=60)
        worker.wait_metric('observer_worker_slot_overflow_total{reason="weaker_holders_within_min_dwell"}', 5)
        wait_committed(isolated, group, isolated.topic("kis.ticks.raw"))
        wait_committed(isolated, group, f"{group}-slot-candidates", partitions=1)
        _, before = get_json(worker, "/api/slots")
    finally:
        assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
    held = {(h["slot_id"], h["symbol"], h["since_us"]) for h in before["pools"]["main"]}
    assert len(held) == 3, before

    restarted = WorkerProcess(isolated, worker_home, env)
    try:
        end = time.monotonic() + 60
        after: dict[str, Any] = {}
        while time.monotonic() < end:
            try:
                _, after = get_json(restarted, "/api/slots")
            except OSError:
                after = {}
            if after.get("owner"):
                break
            time.sleep(0.3)
        assert {(h["slot_id"], h["symbol"], h["since_us"]) for h in after["pools"]["main"]} == held, after
        # Minute 16: a symbol without a slot trades 20,000 against a ten-minute average under 2,000.
        challenger = next(sym for sym in SURGING if sym not in {h[1] for h in held})
        cum = sum(t["trade_volume"] for t in ticks if t["symbol"] == challenger)
        more, _ = ticks_for({16: 20_000}, start_cum=cum)
        asyncio.run(produce(isolated, [t | {"symbol": challenger} for t in more]))
        restarted.wait_metric('observer_worker_slot_decisions_total{action="assign"}', 1, deadline_s=60)
    finally:
        assert restarted.stop() == 0
    decided, overflowed = decisions_and_overflow(isolated)
    assert [d["action"] for d in decided] == ["assign"] * 3 + ["release", "assign"], decided
    release, assign = decided[3], decided[4]
    assert (release["slot_id"], release["symbol"]) in {(h[0], h[1]) for h in held}
    assert (assign["symbol"], assign["slot_id"]) == (challenger, release["slot_id"])
    assert len(overflowed) == 5, "no candidate of the first run was decided on again"


def test_a_worker_killed_before_storing_its_state_repeats_what_its_merge_log_says(
    isolated: Settings, worker_home: Path
) -> None:
    """Slots decided and published, the state that says so never stored (no commit before the kill -9): the
    restarted worker takes every input again, and applies the merge-log steps the killed run published, in
    their order, before it decides anything itself. Its decisions are the published ones again, same ids."""
    asyncio.run(apply_topics(isolated))
    ticks = morning(SURGING)
    asyncio.run(produce(isolated, ticks))
    env = {"OBSERVER_SLOT_CAPACITY": "3", "OBSERVER_SLOT_BOOTSTRAP": "[]"}
    worker = WorkerProcess(isolated, worker_home, env | {"OBSERVER_WORKER_COMMIT_INTERVAL_S": "3600"})
    try:
        worker.wait_metric('observer_worker_slot_decisions_total{action="assign"}', 3, deadline_s=90)
        worker.wait_metric('observer_worker_slot_overflow_total{reason="weaker_holders_within_min_dwell"}', 5)
        first, _ = decisions_and_overflow(isolated)
        steps = [
            default_codec().decode(v)[1] for v in asyncio.run(read_raw(isolated, isolated.topic("slot.merge-log")))
        ]
    finally:
        assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
    assert len(first) == 3 and [s["kind"] for s in steps].count("candidate") == 8, steps

    restarted = WorkerProcess(isolated, worker_home, env)
    try:
        restarted.wait_metric('observer_worker_slot_recovered_steps_total{outcome="applied"}', len(steps), 90)
        restarted.wait_metric("observer_worker_slot_recovering_steps", 0)
        restarted.wait_metric('observer_worker_slot_decisions_total{action="assign"}', 3)
        restarted.wait_metric('observer_worker_slot_overflow_total{reason="weaker_holders_within_min_dwell"}', 5)
        assert restarted.metric('observer_worker_slot_recovered_steps_total{outcome="abandoned"}') == 0
    finally:
        assert restarted.stop() == 0
    assert f"slot manager recovering: {len(steps)} merge-log steps after offset -1" in restarted.log_text()
    decided, overflowed = decisions_and_overflow(isolated)
    assert decided == first + first, "the same decisions again, ids included, and no other"
    assert len(overflowed) == 10 and overflowed[5:] == overflowed[:5]


def test_a_krx_holiday_gets_no_bootstrap_and_no_decisions(isolated: Settings, worker_home: Path) -> None:
    """The same morning on the last weekday KRX holiday, then on a trading day: surges both days, slot
    decisions (bootstrap at the open, then the surges) only on the trading day."""
    holiday = RECENT_OPEN.date() - dt.timedelta(days=1)
    while holiday.weekday() >= 5 or is_trading_day(holiday):
        holiday -= dt.timedelta(days=1)
    shift = int(dt.datetime.combine(holiday, dt.time(9, 0), RECENT_OPEN.tzinfo).timestamp()) * 1_000_000 - T0
    trading = morning(SURGING)
    on_holiday = [
        t | {"business_date": holiday.strftime("%Y%m%d"), "event_time_us": t["event_time_us"] + shift} for t in trading
    ]
    asyncio.run(apply_topics(isolated))
    asyncio.run(produce(isolated, on_holiday, stamp_now=True))
    worker = WorkerProcess(isolated, worker_home)
    try:
        worker.wait_metric("observer_worker_ticks_in_total", len(on_holiday), deadline_s=90)
        worker.wait_metric('observer_worker_surges_total{source="ticks"}', len(SURGING))
        asyncio.run(produce(isolated, trading))
        worker.wait_metric("observer_worker_ticks_in_total", len(on_holiday) + len(trading), deadline_s=90)
        worker.wait_metric('observer_worker_surges_total{source="ticks"}', 2 * len(SURGING))
        bootstrap = len(Settings().slot_bootstrap)
        worker.wait_metric('observer_worker_slot_decisions_total{action="assign"}', bootstrap + len(SURGING))
    finally:
        assert worker.stop() == 0
    decided, overflowed = decisions_and_overflow(isolated)
    days = {dt.datetime.fromtimestamp(d["decided_at_us"] / 1e6, RECENT_OPEN.tzinfo).date() for d in decided}
    assert days == {RECENT_OPEN.date()}, f"decisions on {sorted(days)}, holiday {holiday}"
    assert len(decided) == bootstrap + len(SURGING) and not overflowed
    assert {d["symbol"] for d in decided[:bootstrap]} == set(Settings().slot_bootstrap)
