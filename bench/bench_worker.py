"""Worker throughput: the surge agent beside a no-op Faust agent on the same pre-filled topic, in one run.

    python bench/bench_worker.py [--ticks 200000] [--rounds 1]

Needs the local broker (started here if it is not running); traffic stays on 127.0.0.1.

``kis.ticks.raw`` of a fresh topic prefix is filled once with ``--ticks`` RawTicks of a simulated KRX
morning (the latest regular session, so the broker's retention keeps them), in the ``--symbols`` most
traded symbols (82 by default: what two app keys' WebSocket slots carry). Then, each under
a fresh app id so each reads the whole topic:

- noop: ``bench/noop_worker.py``, a Faust agent over the same topic, same transport and settings, that only
  counts events (Faust's own floor: fetch, stream, ack, commit);
- worker: ``observer worker`` as users run it (the surge agent decoding Avro and updating its windows table
  with changelog writes, the slot manager agent behind it), the scanner off;

each with one process, then with two processes in one consumer group. Every process is started at once;
throughput is ticks taken in (summed over the processes) over the span from the first tick counted to the
last, read from each process's ``/api/counters`` every 0.1 s. The span includes any rebalance when the
second process joins. Target: the worker at >= 0.8 of the no-op agent.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaProducer

from app.config import Settings, load_settings
from app.kis.ticks import record_to_tick
from app.krx import KST, latest_session, today_kst
from app.records import RecordCodec, default_codec
from app.sim.market import Market, Trade
from app.topics import apply_topics, delete_topics
from bench import report  # rows for make bench (bench/run_all.py)

TARGET_RATIO = 0.8
HERE = Path(__file__).resolve().parent


def kafka_tick(trade: Trade, seq: int, codec: RecordCodec) -> tuple[bytes, bytes, int]:
    """A simulated trade as the bridge publishes it: (key, Avro RawTick, timestamp ms)."""
    tick = record_to_tick(
        trade.record,
        tr_id="H0STCNT0",
        received_at_us=trade.event_time_us,
        app_key_id="main",
        session_id="bench",
        frame_seq=seq,
        record_index=0,
        record_count=1,
    )
    return tick["symbol"].encode(), codec.encode("RawTick", tick), tick["event_time_us"] // 1000


def morning_ticks(n: int, symbols: int) -> list[tuple[bytes, bytes, int]]:
    """(key, Avro RawTick, timestamp ms) of the first ``n`` trades of a simulated morning in the ``symbols``
    most traded symbols (what the bridge sees: only subscribed symbols trade on its sockets)."""
    session = latest_session(today_kst() - dt.timedelta(days=1), regular=True)
    market = Market(seed=1, business_date=session)
    ranked = sorted(market.symbols, key=lambda s: -s.base_rate_per_min)
    wanted = {s.code for s in ranked[:symbols]}
    t = int(dt.datetime.combine(session, dt.time(9, 0), KST).timestamp()) * 1_000_000
    market.start_at(t)
    codec = default_codec()
    out: list[tuple[bytes, bytes, int]] = []
    seq = 0
    while len(out) < n:
        t += 60_000_000
        for trade in market.advance_to(t):
            if trade.symbol not in wanted:
                continue
            seq += 1
            out.append(kafka_tick(trade, seq, codec))
            if len(out) == n:
                break
    return out


async def fill(settings: Settings, records: list[tuple[bytes, bytes, int]]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=5, max_batch_size=1 << 20
    )
    await producer.start()
    start = time.monotonic()
    try:
        topic = settings.topic("kis.ticks.raw")
        futures = [await producer.send(topic, value, key=key, timestamp_ms=ts) for key, value, ts in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    def __init__(self, kind: str, app_id: str, settings: Settings, home: Path) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OBSERVER_HOME": str(home),
            "OBSERVER_TOPIC_PREFIX": settings.topic_prefix,
            "OBSERVER_KAFKA_PORT": str(settings.kafka_port),
            "OBSERVER_WORKER_APP_ID": app_id,
            "OBSERVER_SCANNER_INTERVAL_S": "0",
        }
        if kind == "noop":
            cmd = [sys.executable, str(HERE / "noop_worker.py"), app_id, str(self.port)]
        else:
            cmd = [sys.executable, "-m", "app.cli", "worker", "--web-port", str(self.port)]
        self.log_path = home / f"{kind}-{app_id}-{self.port}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def ticks_in(self) -> int:
        if self.proc.poll() is not None:
            raise RuntimeError(f"exited with {self.proc.returncode}; see {self.log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/counters", timeout=2) as resp:
                doc: dict[str, Any] = json.loads(resp.read())
        except OSError:
            return 0
        return int(doc.get("ticks_in", doc.get("observer_worker_ticks_in_total", 0)))

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (Linux /proc), all its threads."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def run_round(
    kind: str, processes: int, settings: Settings, home: Path, n: int, deadline_s: float, profile: bool
) -> float:
    app_id = f"{kind}{processes}-{uuid.uuid4().hex[:6]}"
    procs = [Process(kind, app_id, settings, home) for _ in range(processes)]
    spy = None
    if profile and kind == "worker" and shutil.which("py-spy"):
        svg = home.parent / f"profile-{app_id}.txt"
        spy = subprocess.Popen(["py-spy", "record", "--format", "raw", "-o", str(svg), "-p", str(procs[0].proc.pid)])
        print(f"  profiling to {svg}", flush=True)
    first: float | None = None
    cpu_first = cpu = 0.0
    end = time.monotonic() + deadline_s
    try:
        while True:
            counts = [p.ticks_in() for p in procs]
            now = time.monotonic()
            total = sum(counts)
            if first is None and total > 0:
                first = now
                cpu_first = sum(p.cpu_seconds() for p in procs)
            if total >= n:
                cpu = sum(p.cpu_seconds() for p in procs) - cpu_first
                break
            if now > end:
                raise RuntimeError(f"{kind} x{processes}: {total:,} of {n:,} ticks after {deadline_s:.0f} s")
            time.sleep(0.1)
    finally:
        for p in procs:
            p.stop()
        if spy is not None:
            spy.wait(timeout=60)
    assert first is not None
    rate = n / max(now - first, 1e-9)
    print(
        f"  {kind:6s} x{processes}: {n:,} ticks in {now - first:6.2f} s = {rate:>9,.0f} ticks/s, "
        f"{cpu / (now - first):.2f} CPU cores busy, {cpu / n * 1e6:.0f} us CPU per tick",
        flush=True,
    )
    return rate


async def prepare(settings: Settings, n: int, symbols: int) -> None:
    await apply_topics(settings)
    t0 = time.monotonic()
    records = morning_ticks(n, symbols)
    print(f"generated {len(records):,} RawTicks in {time.monotonic() - t0:.1f} s", flush=True)
    seconds = await fill(settings, records)
    print(f"filled {settings.topic('kis.ticks.raw')} in {seconds:.1f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=200_000, help="ticks in the topic (default 200000)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the four runs, best counts (default 1)")
    parser.add_argument(
        "--profile", action="store_true", help="record a py-spy profile of the first worker (if py-spy is installed)"
    )
    parser.add_argument("--symbols", type=int, default=82, help="symbols trading (default 82: two app keys' slots)")
    parser.add_argument("--processes", default="1,2", help="process counts to run (default 1,2)")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds allowed per run (default 900)")
    args = parser.parse_args()

    from app.stack.kafka import LocalKafka

    base = load_settings()
    print(LocalKafka(base).start(), flush=True)
    home = Path(tempfile.mkdtemp(prefix="observer-bench-worker-"))
    settings = base.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:8]}.", "home": home})
    asyncio.run(prepare(settings, args.ticks, args.symbols))
    best: dict[tuple[str, int], float] = {}
    counts = [int(c) for c in args.processes.split(",")]
    try:
        for r in range(args.rounds):
            print(f"round {r + 1}:", flush=True)
            for processes in counts:
                for kind in ("noop", "worker"):
                    rate = run_round(kind, processes, settings, home, args.ticks, args.deadline, args.profile)
                    best[(kind, processes)] = max(best.get((kind, processes), 0.0), rate)
    finally:
        asyncio.run(delete_topics(settings))
    shutil.rmtree(home, ignore_errors=True)

    print()
    print(f"machine: {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores")
    for processes in counts:
        noop, worker = best[("noop", processes)], best[("worker", processes)]
        print(
            f"{processes} process{'es' if processes > 1 else ''}: worker {worker:>9,.0f} ticks/s, "
            f"no-op agent {noop:>9,.0f} ticks/s, ratio {worker / noop:.2f} (target >= {TARGET_RATIO})"
        )
        report.row("worker", f"surge worker, {processes} process(es)", worker, "ticks/s", "no-op Faust agent", noop)
    if {1, 2} <= set(counts):
        print(
            f"two processes against one: worker {best[('worker', 2)] / best[('worker', 1)]:.2f}x, "
            f"no-op {best[('noop', 2)] / best[('noop', 1)]:.2f}x"
        )
    met = best[("worker", 1)] / best[("noop", 1)] >= TARGET_RATIO
    print("target met" if met else "target NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
