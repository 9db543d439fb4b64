"""Surge to subscribe at 1x: how long after a surge's crossing trade the bridge subscribes the symbol.

    python bench/bench_surge_latency.py [--surges 6] [--scanner-interval 0.5]

Needs the local broker (started here if it is not running); traffic stays on 127.0.0.1.

The KIS simulator runs in this process at 1x, on the latest regular session from 10:00 KST, with
``--surges`` injected surges (30x for 90 s, 25 s apart) in quiet symbols that hold no slot. ``observer
worker`` (scanner polling every ``--scanner-interval`` s, the surge symbols on its watchlist) and ``observer
bridge`` run as users run them. Nothing in the chain knows the bench is watching: the times come from
hooks in the simulator (when a second's trades were generated, when a price was polled, when a subscribe
message arrived) and from a consumer of the worker's outputs, all on this machine's clock.

For each surge the crossing trade is the first trade at which the symbol's volume in the surge's minute
reached the threshold the worker applied (``max(min_volume, 3 x avg)``), found by replaying the same seeded
market offline. Per surge it prints, from the moment the simulator published that trade:

- poll: the scanner's first price poll of the symbol after it;
- surge: the SurgeEvent read from ``observer.surges``;
- decision: the assign read from ``slot.decisions``;
- subscribe: the bridge's subscribe message received by the simulator (the end point).

The simulator publishes a second's trades when that second has passed (trades carry whole-second times,
as KIS's do), so ``published`` is one second after the trade's own time; both origins are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import Settings, load_settings
from app.kis.protocol import H0STCNT0_FIELDS
from app.krx import KST, latest_session, today_kst
from app.records import default_codec
from app.sim.market import BOOTSTRAP_CODES, Market, SurgeSpec
from app.sim.server import KisSimulator, SimConfig
from app.topics import apply_topics, delete_topics
from bench import report  # rows for make bench (bench/run_all.py)

US = 1_000_000
DAY = latest_session(today_kst() - dt.timedelta(days=1), regular=True)  # within the topics' retention
START = dt.datetime.combine(DAY, dt.time(10, 0), KST)
FIRST_SURGE_S = 80  # after START: the worker needs a minute of a symbol's history before it can surge
SURGE_GAP_S = 25
MIN_VOLUME = 10_000
TARGET_S = 1.0
CNTG_VOL = list(H0STCNT0_FIELDS).index("CNTG_VOL")  # the trade's volume


def quiet_symbols(market: Market, n: int) -> list[str]:
    """Symbols trading a few hundred shares a minute: a 30x surge crosses the threshold within seconds."""
    picked = [
        s.code
        for s in market.symbols
        if s.code not in BOOTSTRAP_CODES and 200 <= s.base_rate_per_min * s.mean_lot <= 800
    ]
    if len(picked) < n:
        raise SystemExit(f"only {len(picked)} quiet symbols in the simulated universe, {n} asked")
    return picked[:n]


class Probe:
    """Wall-clock hooks on the in-process simulator: generation, price polls, subscribe messages."""

    def __init__(self, sim: KisSimulator, watched: set[str]) -> None:
        self.generated: list[tuple[int, float]] = []  # (first second not yet generated, wall) per advance
        self.polls: dict[str, list[float]] = {code: [] for code in watched}
        self.subscribed: dict[str, float] = {}
        market, ws = sim.market, sim.ws
        advance, inquire, multi, on_message = (
            market.advance_to,
            market.inquire_price,
            market.multi_price,
            ws._on_message,
        )

        def advance_to(until_us: int) -> Any:
            trades = advance(until_us)
            self.generated.append((market.position_us(), time.time()))
            return trades

        def inquire_price(code: str) -> dict[str, str]:
            if code in self.polls:
                self.polls[code].append(time.time())
            return inquire(code)

        def multi_price(code: str) -> dict[str, str]:  # one row of a multi-price call
            if code in self.polls:
                self.polls[code].append(time.time())
            return multi(code)

        async def message(session: Any, text: str) -> None:
            try:
                doc = orjson.loads(text)
                if doc["header"].get("tr_type") == "1" and doc["body"]["input"].get("tr_key") in watched:
                    self.subscribed.setdefault(doc["body"]["input"]["tr_key"], time.time())
            except (orjson.JSONDecodeError, KeyError, TypeError):
                pass  # the simulator itself answers a malformed message; the probe only watches
            await on_message(session, text)

        market.advance_to = advance_to  # type: ignore[method-assign]
        market.inquire_price = inquire_price  # type: ignore[method-assign]
        market.multi_price = multi_price  # type: ignore[method-assign]
        ws._on_message = message  # type: ignore[method-assign]

    def published_at(self, second_us: int) -> float:
        """Wall time at which the trades of the second starting at ``second_us`` were generated."""
        for position_us, wall in self.generated:
            if position_us > second_us:
                return wall
        raise LookupError(f"second {second_us} was never generated")


def crossing_second(seed: int, surges: list[SurgeSpec], symbol: str, minute_us: int, threshold: float) -> int:
    """The second (UTC µs) of the first trade at which ``symbol``'s volume in the minute reached ``threshold``."""
    market = Market(seed=seed, business_date=DAY, surges=surges)
    market.start_at(minute_us)
    volume = 0
    for second_us in range(minute_us, minute_us + 60 * US, US):
        for trade in market.advance_to(second_us + US):
            if trade.symbol == symbol:
                volume += int(trade.record[CNTG_VOL])
        if volume >= threshold:
            return second_us
    raise LookupError(f"{symbol} never reached {threshold:.0f} shares in the minute at {minute_us}")


class Outputs:
    """Arrival times of the worker's surges and assigns for the watched symbols."""

    def __init__(self, settings: Settings, watched: set[str]) -> None:
        self.watched = watched
        self.surges: dict[str, tuple[float, dict[str, Any]]] = {}
        self.assigns: dict[str, float] = {}
        self.consumer = AIOKafkaConsumer(
            settings.topic("observer.surges"),
            settings.topic("slot.decisions"),
            bootstrap_servers=settings.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=5,  # the bench times arrivals; the default would add up to 0.5 s
        )

    async def run(self) -> None:
        codec = default_codec()
        await self.consumer.start()
        try:
            async for msg in self.consumer:
                now = time.time()
                name, value = codec.decode(msg.value or b"")
                if value["symbol"] not in self.watched:
                    continue
                if name == "SurgeEvent":
                    self.surges.setdefault(value["symbol"], (now, value))
                elif name == "SlotDecision" and value["action"] == "assign":
                    self.assigns.setdefault(value["symbol"], now)
        finally:
            await self.consumer.stop()


def start_process(kind: str, home: Path, env: dict[str, str], args: list[str]) -> Any:
    log = open(home / f"{kind}.log", "w")  # noqa: SIM115 - the child keeps it
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OBSERVER_HOME": str(home), **env}
    cmd = [sys.executable, "-m", "app.cli", kind, *args]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)


async def wait_until(check: Callable[[], bool], deadline_s: float, what: str, procs: list[Any]) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"{proc.args[3]} exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > end:
            raise SystemExit(f"no {what} within {deadline_s:.0f} s")
        await asyncio.sleep(0.1)


async def measure(settings: Settings, home: Path, n: int, interval: float) -> list[dict[str, Any]]:
    await apply_topics(settings)
    market = Market(seed=SimConfig().seed, business_date=DAY)
    codes = quiet_symbols(market, n)
    specs = [
        SurgeSpec(code, (START + dt.timedelta(seconds=FIRST_SURGE_S + i * SURGE_GAP_S)).time(), 1.5, 30.0)
        for i, code in enumerate(codes)
    ]
    sim = KisSimulator(SimConfig(start=START, speed=1.0, surges=specs, rest_port=0, ws_port=0))
    await sim.start()
    watched = set(codes)
    probe = Probe(sim, watched)
    pair = (time.time(), sim.clock.now_us())

    def wall_at_sim_us(sim_us: int) -> float:  # 1x: simulated and wall seconds run alike
        return pair[0] + (sim_us - pair[1]) / US

    common = {
        "OBSERVER_TOPIC_PREFIX": settings.topic_prefix,
        "OBSERVER_KAFKA_PORT": str(settings.kafka_port),
        "OBSERVER_KIS_REST_URL": sim.rest_url,
        "OBSERVER_KIS_WS_URL": sim.ws_url,
    }
    worker_env = {
        **common,
        "OBSERVER_WORKER_APP_ID": f"latency{uuid.uuid4().hex[:6]}",
        "OBSERVER_SCANNER_INTERVAL_S": str(interval),
        "OBSERVER_SCANNER_RANKINGS": '["0"]',
        "OBSERVER_SCANNER_WATCHLIST": orjson.dumps(codes).decode(),
        # One minute of history instead of ten, so the bench runs in minutes; the latency does not depend on it.
        "OBSERVER_SURGE_LOOKBACK_MINUTES": "1",
        "OBSERVER_SURGE_MIN_VOLUME": str(MIN_VOLUME),
    }
    outputs = Outputs(settings, watched)
    reader = asyncio.create_task(outputs.run())
    worker = start_process("worker", home, worker_env, ["--web-port", "0"])
    bridge = start_process("bridge", home, common, ["--metrics-port", "0"])
    procs = [worker, bridge]
    try:
        ready = lambda: all(probe.polls[c] for c in codes)  # noqa: E731
        await wait_until(ready, 60, "price poll of every surge symbol", procs)
        sim_now = sim.clock.now_kst()
        print(f"worker polling at simulated {sim_now:%H:%M:%S}; surges from {specs[0].start}", flush=True)
        if sim_now.time() >= (START + dt.timedelta(seconds=60)).time():
            raise SystemExit("the worker took more than a simulated minute to start; the first surge cannot fire")
        last_end = START + dt.timedelta(seconds=FIRST_SURGE_S + (n - 1) * SURGE_GAP_S + 60)
        deadline = sim.clock.wall_seconds_until(int(last_end.timestamp() * US)) + 30
        done = lambda: len(probe.subscribed) == n  # noqa: E731
        await wait_until(done, deadline, f"subscribe of all {n} surge symbols", procs)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await sim.stop()
        await delete_topics(settings)

    rows = []
    for code in codes:
        surge_wall, surge = outputs.surges[code]
        threshold = max(MIN_VOLUME, 3 * surge["avg_volume_10m"])
        second_us = crossing_second(SimConfig().seed, specs, code, surge["window_start_us"], threshold)
        published = probe.published_at(second_us)
        own_second = wall_at_sim_us(second_us)
        polls_after = [t for t in probe.polls[code] if t >= published]
        rows.append(
            {
                "symbol": code,
                "crossing": dt.datetime.fromtimestamp(second_us / US, KST).strftime("%H:%M:%S"),
                "late": published - own_second,  # how long after its second began the trade was published
                "poll": polls_after[0] - published if polls_after else float("nan"),
                "surge": surge_wall - published,
                "decision": outputs.assigns[code] - published,
                "subscribe": probe.subscribed[code] - published,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--surges", type=int, default=6, help="surges injected, 25 s apart (default 6)")
    parser.add_argument("--scanner-interval", type=float, default=0.5, help="scanner poll interval (default 0.5)")
    args = parser.parse_args()

    from app.stack.kafka import LocalKafka

    base = load_settings()
    print(LocalKafka(base).start(), flush=True)
    home = Path(tempfile.mkdtemp(prefix="observer-bench-latency-"))
    settings = base.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:8]}.", "home": home})
    try:
        rows = asyncio.run(measure(settings, home, args.surges, args.scanner_interval))
    except SystemExit:
        print(f"logs kept in {home}", file=sys.stderr)
        raise
    shutil.rmtree(home, ignore_errors=True)

    print()
    print("seconds from the simulator publishing the crossing trade:")
    print(f"{'symbol':<8} {'trade':>8} {'poll':>6} {'surge':>6} {'decide':>6} {'subscribe':>9}")
    for r in rows:
        print(
            f"{r['symbol']:<8} {r['crossing']:>8} {r['poll']:>6.2f} {r['surge']:>6.2f} "
            f"{r['decision']:>6.2f} {r['subscribe']:>9.2f}"
        )
    totals = [r["subscribe"] for r in rows]
    from_own = [r["subscribe"] + r["late"] for r in rows]
    polls = [r["poll"] for r in rows]
    report.row(
        "surge latency",
        "crossing trade -> subscribe, median",
        statistics.median(totals),
        "s",
        "-> first scanner poll (the floor)",
        statistics.median(polls),
        False,
    )
    print(
        f"subscribe after the crossing trade was published: median {statistics.median(totals):.2f} s, "
        f"max {max(totals):.2f} s; after the trade's own second began: median {statistics.median(from_own):.2f} s, "
        f"max {max(from_own):.2f} s (target {TARGET_S:.0f} s; the seed system polled every 30 s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
