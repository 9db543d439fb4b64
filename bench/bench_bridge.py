"""Bridge throughput and latency: simulator flood to acked in Kafka, beside a bare aiokafka producer, in one run.

    python bench/bench_bridge.py [--records 100000] [--rounds 2] [--rate 1000] [--latency-seconds 20]

Needs the local broker (started here if it is not running); traffic stays on 127.0.0.1.

- bridge: a KIS simulator in its own process (its market before the open, so only the bench's trades flow)
  sends ``--records`` trades of 41 subscribed symbols as fast as its sockets take them, in KIS frames of
  1-5 records. The bridge runs in this process exactly as ``observer bridge`` runs it (protocol parsing,
  Avro encoding, the publisher with ``acks=all`` and idempotence). Timed from the receipt of the first
  frame to the broker's ack of the last record.
- bare: one ``AIOKafkaProducer`` with the publisher's settings sends the same records (keys, values,
  timestamps read back from the bridge's topic) to a fresh topic with as many partitions. Timed from the
  first send to the last ack.
- latency: the simulator sends ``--rate`` trades per second for ``--latency-seconds``; frame receipt to
  ack, per record.

Rounds alternate bridge and bare so drift hits both alike; the best round of each counts. Targets: the
bridge >= 50,000 ticks/s and >= 0.8 of the bare producer; p99 latency < 20 ms at 1,000 ticks/s.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.bridge.journal import JournalRecord
from app.bridge.main import BridgeRun, run_bridge
from app.config import Settings, load_settings
from app.krx import latest_session, today_kst
from app.records import default_codec
from app.sim.clock import KST
from app.sim.market import Market, Trade
from app.sim.server import KisSimulator, SimConfig
from app.slots.policy import Decision
from app.topics import TopicSpec, apply_topics, delete_topics, load_topics
from bench import report  # rows for make bench (bench/run_all.py)

TARGET_TICKS_PER_S = 50_000
TARGET_RATIO = 0.8
TARGET_P99_MS = 20.0
DAY = latest_session(today_kst() - dt.timedelta(days=1), regular=True)  # within the topics' retention
PRE_OPEN = dt.datetime.combine(DAY, dt.time(8, 0), KST)  # the market makes no trades of its own before 09:00
SLOTS = 41


# ------------------------------------------------------------------------------- the simulator side


def flood_trades(codes: list[str], n: int, seed: int = 7, remap: bool = True) -> list[Trade]:
    """``n`` realistic trades from a seeded market, mapped onto ``codes`` and ordered so that trades of a
    symbol in the same second sit together (the simulator sends those as one multi-record frame).

    ``remap``: every symbol's trades go to one of ``codes`` (dense, but a code's cumulative volume is no
    longer monotonic, so a sink takes later ones for redeliveries); otherwise only the trades of ``codes``
    themselves, as KIS would send them."""
    market = Market(seed=seed, business_date=DAY)
    start = dt.datetime(DAY.year, DAY.month, DAY.day, 9, 0, tzinfo=KST)
    market.start_at(int(start.timestamp()) * 1_000_000)
    mapping: dict[str, str] = {}
    wanted = set(codes)
    out: list[Trade] = []
    second = 0
    while len(out) < n:
        second += 10
        until = int((start + dt.timedelta(seconds=second)).timestamp()) * 1_000_000
        for t in market.advance_to(until):
            if not remap:
                if t.symbol in wanted:
                    out.append(t)
                continue
            code = mapping.setdefault(t.symbol, codes[len(mapping) % len(codes)])
            out.append(Trade(code, t.event_time_us, [code, *t.record[1:]]))
    out = out[:n]
    out.sort(key=lambda t: (t.event_time_us, t.symbol))
    return out


async def serve() -> None:
    """The simulator process: prints its URLs, then obeys FLOOD n / PACED rate seconds / STOP on stdin."""
    sim = KisSimulator(SimConfig(start=PRE_OPEN, speed=1, rest_port=0, ws_port=0))
    await sim.start()
    codes = [s.code for s in sim.market.symbols[:SLOTS]]
    print(f"READY {sim.rest_url} {sim.ws_url}", flush=True)
    loop = asyncio.get_running_loop()
    trades: list[Trade] = []
    paced: list[Trade] = []  # as KIS sends them (a sink downstream keeps every one)
    while True:
        command = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not command or command[0] == "STOP":
            break
        while not any(len(s.trade_symbols()) == SLOTS for s in sim.ws.active.values()):
            await asyncio.sleep(0.01)
        before = sim.ledger.totals()["records_sent"]
        if command[0] == "FLOOD":
            n = int(command[1])
            if len(trades) < n:
                trades = flood_trades(codes, n)
            began = time.perf_counter()
            await sim.ws.flood(trades[:n])
        elif command[0] == "PACED":
            rate, seconds = int(command[1]), float(command[2])
            per_tick = max(1, rate // 100)  # every 10 ms
            need = int(rate * seconds)
            if len(paced) < need:
                paced = flood_trades(codes, need, remap=False)
            began = time.perf_counter()
            started = time.monotonic()
            for k, i in enumerate(range(0, need, per_tick)):
                await sim.ws.deliver(paced[i : i + per_tick])
                delay = started + (k + 1) * per_tick / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the sender, not synchronising anything
        took = time.perf_counter() - began
        print(f"SENT {sim.ledger.totals()['records_sent'] - before} {took:.3f}", flush=True)
    await sim.stop()


# ---------------------------------------------------------------------------------- the bench side


class SimProcess:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        _, self.rest_url, self.ws_url = self._line("READY").split()

    def _line(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(prefix):
            raise RuntimeError(f"simulator process said {line!r}, expected {prefix}")
        return line

    async def command(self, text: str) -> tuple[int, float]:
        """Records the simulator sent for the command, and the seconds its sending took."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        _, sent, seconds = (await asyncio.to_thread(self._line, "SENT")).split()
        return int(sent), float(seconds)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.write("STOP\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class AckProbe:
    """Counts acked ticks and keeps per-record receipt-to-ack latencies (seconds)."""

    def __init__(self, ticks_topic: str) -> None:
        self.ticks_topic = ticks_topic
        self.reset()

    def reset(self) -> None:
        self.acked = 0
        self.first_received_us: int | None = None
        self.last_ack = 0.0
        self.latencies: list[float] = []

    def __call__(self, record: JournalRecord) -> None:
        if record.topic != self.ticks_topic:
            return
        now = time.time()
        self.acked += 1
        self.last_ack = now
        if self.first_received_us is None or record.received_at_us < self.first_received_us:
            self.first_received_us = record.received_at_us
        self.latencies.append(now - record.received_at_us / 1e6)


async def wait_for(condition: Any, deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.005)


async def assign(settings: Settings, codes: list[str]) -> None:
    from aiokafka import AIOKafkaProducer

    codec = default_codec()
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for slot, code in enumerate(codes):
            decision = Decision.manual(settings.bridge_app_key_id, slot, code, "assign", "bench").to_record()
            value = codec.encode("SlotDecision", decision)
            await producer.send_and_wait(
                settings.topic("slot.decisions"), value, key=settings.bridge_app_key_id.encode()
            )
    finally:
        await producer.stop()


async def read_back(settings: Settings, topic: str, n: int) -> list[tuple[bytes | None, bytes | None, int]]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 2**20,
    )
    await consumer.start()
    out: list[tuple[bytes | None, bytes | None, int]] = []
    try:
        end = time.monotonic() + 120
        while len(out) < n and time.monotonic() < end:
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            out.extend((r.key, r.value, r.timestamp) for rs in batch.values() for r in rs)
    finally:
        await consumer.stop()
    return out[:n]


def publisher_like_producer(settings: Settings, **extra: Any) -> Any:
    """A bare AIOKafkaProducer with the bridge publisher's settings (acks=all, idempotence, its batching)."""
    from aiokafka import AIOKafkaProducer

    from app.bridge.publisher import PublisherConfig

    pc = PublisherConfig(bootstrap_servers=settings.bootstrap_servers)
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=pc.linger_ms,
        max_batch_size=pc.max_batch_bytes,
        request_timeout_ms=pc.request_timeout_ms,
        **extra,
    )


async def bare_producer(
    settings: Settings, topic: str, records: list[tuple[bytes | None, bytes | None, int]], batched: bool
) -> float:
    """Seconds for a bare producer, configured like the publisher, to have every record acked.

    ``batched``: aiokafka's batch API (one ``send_batch`` per partition and full batch, as the publisher
    does); otherwise the usual ``send`` per record.
    """
    from aiokafka.partitioner import DefaultPartitioner

    producer = publisher_like_producer(settings, max_request_size=4 * 2**20)
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        started = time.perf_counter()
        futures = []
        if batched:
            partitioner = DefaultPartitioner()
            open_batches: dict[int, Any] = {}
            for key, value, ts in records:
                partition = partitioner(key, partitions, partitions)
                batch = open_batches.get(partition) or open_batches.setdefault(partition, producer.create_batch())
                if batch.append(key=key, value=value, timestamp=ts) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = open_batches[partition] = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=ts)
            for partition, batch in open_batches.items():
                futures.append(await producer.send_batch(batch, topic, partition=partition))
        else:
            futures = [await producer.send(topic, value, key=key, timestamp_ms=ts) for key, value, ts in records]
        await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def bare_paced_latency(
    settings: Settings, topic: str, records: list[tuple[bytes | None, bytes | None, int]], rate: int, seconds: float
) -> list[float]:
    """Send-to-ack milliseconds of a bare producer (the publisher's settings) sending ``records`` at ``rate``
    per second for ``seconds``: the latency floor of Kafka and the client at the bridge's latency load."""
    producer = publisher_like_producer(settings)
    await producer.start()
    latencies: list[float] = []

    def acked(sent_at: float) -> Any:
        return lambda _future: latencies.append((time.perf_counter() - sent_at) * 1000)

    try:
        n = min(len(records), int(rate * seconds))
        started = time.perf_counter()
        futures = []
        for i, (key, value, ts) in enumerate(records[:n]):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            future = await producer.send(topic, value, key=key, timestamp_ms=ts)
            future.add_done_callback(acked(time.perf_counter()))
            futures.append(future)
        await asyncio.gather(*futures)
        await asyncio.sleep(0)  # the last done-callbacks
    finally:
        await producer.stop()
    return latencies


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else values[0]


async def bench(args: argparse.Namespace) -> int:
    from app.stack.kafka import LocalKafka

    base = load_settings()
    print(await asyncio.to_thread(LocalKafka(base).start), flush=True)
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    sim = SimProcess()
    home = Path(tempfile.mkdtemp(prefix="observer-bench-"))
    settings = base.model_copy(
        update={"topic_prefix": prefix, "home": home, "kis_rest_url": sim.rest_url, "kis_ws_url": sim.ws_url}
    )
    catalogue = load_topics()
    ticks_spec = catalogue["kis.ticks.raw"]
    bare_names = [f"bare{r}.{kind}.kis.ticks.raw" for r in range(args.rounds) for kind in ("send", "batch")]
    bare_names.append("bare.paced.kis.ticks.raw")
    specs: dict[str, TopicSpec] = dict(catalogue)
    for name in bare_names:
        specs[name] = TopicSpec(**{**ticks_spec.__dict__, "name": name})
    await apply_topics(settings, specs)
    codes = [s.code for s in Market(seed=SimConfig().seed, business_date=DAY).symbols[:SLOTS]]
    await assign(settings, codes)

    ticks_topic = settings.topic("kis.ticks.raw")
    probe = AckProbe(ticks_topic)
    stop = asyncio.Event()
    runs: list[BridgeRun] = []
    task = asyncio.create_task(run_bridge(settings, stop=stop, on_ready=runs.append, metrics_port=0))
    results: dict[str, list[float]] = {"bridge": [], "send": [], "batch": []}
    total_acked = 0
    try:
        await wait_for(lambda: bool(runs) or task.done(), 30, "the bridge to start")
        if task.done():
            task.result()
        run = runs[0]
        run.publisher.on_acked = probe
        await wait_for(lambda: len(run.bridge.restore_times_s) >= 1, 30, f"{SLOTS} subscriptions")
        print(f"bridge subscribed {SLOTS} symbols; flooding {args.records:,} trades per round", flush=True)
        for r in range(args.rounds):
            probe.reset()
            profiler = cProfile.Profile() if args.profile else None
            if profiler is not None:
                profiler.enable()
            sent, sim_seconds = await sim.command(f"FLOOD {args.records}")
            await wait_for(lambda n=sent: probe.acked >= n, 600, f"{sent} acks")  # type: ignore[misc]
            assert probe.first_received_us is not None
            elapsed = probe.last_ack - probe.first_received_us / 1e6
            if profiler is not None:
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            results["bridge"].append(probe.acked / elapsed)
            total_acked += probe.acked
            print(
                f"  round {r + 1} bridge: {probe.acked:,} ticks in {elapsed:.2f} s "
                f"(the simulator took {sim_seconds:.2f} s to send them)",
                flush=True,
            )
            records = await read_back(settings, ticks_topic, total_acked)
            records = records[total_acked - probe.acked :]
            for kind in ("send", "batch"):
                topic = settings.topic(f"bare{r}.{kind}.kis.ticks.raw")
                seconds = await bare_producer(settings, topic, records, batched=kind == "batch")
                results[kind].append(len(records) / seconds)
                print(f"  round {r + 1} bare {kind}: {len(records):,} records in {seconds:.2f} s", flush=True)
        probe.reset()
        print(f"latency: {args.rate:,} trades/s for {args.latency_seconds:.0f} s", flush=True)
        sent, _ = await sim.command(f"PACED {args.rate} {args.latency_seconds}")
        await wait_for(lambda n=sent: probe.acked >= n, 120, f"{sent} acks")  # type: ignore[misc]
        latencies_ms = [x * 1000 for x in probe.latencies]
        print(f"latency of a bare producer: {args.rate:,} records/s for {args.latency_seconds:.0f} s", flush=True)
        paced_topic = settings.topic("bare.paced.kis.ticks.raw")
        bare_ms = await bare_paced_latency(settings, paced_topic, records, args.rate, args.latency_seconds)
    finally:
        stop.set()
        await asyncio.wait_for(task, 120)
        sim.close()
        await delete_topics(settings)

    bridge_best, send_best, batch_best = max(results["bridge"]), max(results["send"]), max(results["batch"])
    ratio = bridge_best / send_best
    p50, p99 = percentile(latencies_ms, 0.5), percentile(latencies_ms, 0.99)
    print()
    print(f"machine: {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores")
    print(f"bridge (sim flood -> acked):  {bridge_best:>9,.0f} ticks/s   target >= {TARGET_TICKS_PER_S:,}")
    print(f"bare aiokafka, send():        {send_best:>9,.0f} records/s")
    print(f"bare aiokafka, send_batch():  {batch_best:>9,.0f} records/s   (Kafka alone, no parsing or encoding)")
    print(f"ratio bridge / bare send():   {ratio:>9.2f}           target >= {TARGET_RATIO}")
    print(f"ratio bridge / bare batch:    {bridge_best / batch_best:>9.2f}")
    print(
        f"latency at {args.rate:,}/s ({len(latencies_ms):,} ticks): p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
        f"max {max(latencies_ms):.2f} ms   target p99 < {TARGET_P99_MS:.0f} ms"
    )
    b50, b99 = percentile(bare_ms, 0.5), percentile(bare_ms, 0.99)
    print(
        f"bare producer at {args.rate:,}/s ({len(bare_ms):,} records, send to ack): p50 {b50:.2f} ms, p99 {b99:.2f} ms"
    )
    report.row("bridge", "sim flood -> acked", bridge_best, "ticks/s", "bare aiokafka send()", send_best)
    report.row("bridge", f"frame -> Kafka ack p50 at {args.rate}/s", p50, "ms", "bare producer send -> ack", b50, False)
    report.row("bridge", f"frame -> Kafka ack p99 at {args.rate}/s", p99, "ms", "bare producer send -> ack", b99, False)
    met = bridge_best >= TARGET_TICKS_PER_S and ratio >= TARGET_RATIO and p99 < TARGET_P99_MS
    print("targets met" if met else "targets NOT met")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="trades per flood round (default 100000)")
    parser.add_argument("--rounds", type=int, default=2, help="bridge/bare rounds, best counts (default 2)")
    parser.add_argument("--rate", type=int, default=1_000, help="trades/s in the latency phase (default 1000)")
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="latency phase length (default 20)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the bridge's flood rounds")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve())
        return 0
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
