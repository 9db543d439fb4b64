"""H0STCNT0 parsing throughput: our parser against a bare split baseline, side by side, in one run.

    python bench/bench_parser.py [--records N] [--repeat 5] [--profile]

Frames are realistic: the seeded simulator market's trades (real 46-field records with consistent
cumulative fields), grouped per symbol into frames of 1-5 records, rendered exactly as KIS sends them. If the
simulator is unavailable, the live 2023-03-24 record of KIS_PROTOCOL.md 4.4 is varied instead.

- baseline: per frame ``text.split("|", 3)`` and ``payload.split("^")`` chunked into records; no mapping;
- ours: ``app.kis.protocol.classify`` + ``app.kis.ticks.frame_to_ticks`` to full RawTick dicts.

Each is timed over all frames, best of ``--repeat`` runs, the two interleaved so drift hits both alike.
Garbage collection stays on (the bridge runs with it on). Target: ours >= 200,000 records/s and
ours/baseline >= 0.5. ``--profile`` (or missing the target) prints a cProfile of ours.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import platform
import pstats
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.kis.protocol import TR_TRADE, classify, render_data_frame
from app.kis.ticks import frame_to_ticks
from bench import report  # rows for make bench (bench/run_all.py)

TARGET_RECORDS_PER_S = 200_000
TARGET_RATIO = 0.5
SAMPLE_2023_TEXT = (
    "005930^112616^62700^2^400^0.64^62700.41^62700^63000^62300^62700^62600^125^9694968^607878273600^25807^15918^"
    "-9889^93.01^4614191^4291558^1^0.45^63.03^090013^3^0^090646^5^-300^100741^2^400^20230324^20^N^71292^244009^"
    "2795345^2044512^0.16^5367918^180.61^0^^62700"
)
SAMPLE_2023 = SAMPLE_2023_TEXT.split("^")


def market_records(n: int, seed: int) -> tuple[list[tuple[str, list[str]]], str]:
    """(symbol, record) of ``n`` simulated trades from 09:00 KST on, in time order."""
    from app.sim.market import Market

    kst = dt.timezone(dt.timedelta(hours=9))
    day = dt.date(2026, 11, 20)
    market = Market(seed=seed, business_date=day)
    start = dt.datetime(day.year, day.month, day.day, 9, 0, tzinfo=kst)
    market.start_at(int(start.timestamp()) * 1_000_000)
    out: list[tuple[str, list[str]]] = []
    minute = 0
    while len(out) < n and minute < 380:
        minute += 1
        until = int((start + dt.timedelta(minutes=minute)).timestamp()) * 1_000_000
        out.extend((t.symbol, t.record) for t in market.advance_to(until))
    return out[:n], f"app.sim.market (seed {seed}, {minute} simulated minutes)"


def sample_records(n: int, seed: int) -> tuple[list[tuple[str, list[str]]], str]:
    """Fallback: the live sample record with varied code, time, price and volumes."""
    rng = random.Random(seed)
    codes = [f"{rng.randrange(1, 999_999):06d}" for _ in range(400)]
    out: list[tuple[str, list[str]]] = []
    acml = {c: rng.randrange(1_000, 1_000_000) for c in codes}
    for i in range(n):
        code = rng.choice(codes)
        rec = list(SAMPLE_2023)
        price = rng.randrange(1_000, 500_000)
        vol = rng.randrange(1, 5_000)
        acml[code] += vol
        rec[0], rec[1] = code, f"{9 + i * 6 // n:02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
        rec[2], rec[10], rec[11] = str(price), str(price), str(price - 50)
        rec[5] = f"{rng.uniform(-29.9, 29.9):.2f}"
        rec[12], rec[13] = str(vol), str(acml[code])
        rec[21] = rng.choice("15")
        out.append((code, rec))
    return out, "KIS_PROTOCOL.md 4.4 sample record, varied"


def build_frames(records: list[tuple[str, list[str]]], seed: int) -> list[str]:
    """Group each symbol's trades, in order, into frames of 1-5 records (KIS batches executions per symbol)."""
    rng = random.Random(seed)
    pending: dict[str, list[list[str]]] = {}
    want: dict[str, int] = {}
    frames: list[str] = []
    for symbol, record in records:
        batch = pending.setdefault(symbol, [])
        batch.append(record)
        if len(batch) >= want.setdefault(symbol, rng.randint(1, 5)):
            frames.append(render_data_frame(TR_TRADE, batch))
            pending[symbol] = []
            want[symbol] = rng.randint(1, 5)
    frames.extend(render_data_frame(TR_TRADE, batch) for batch in pending.values() if batch)
    return frames


def baseline(frames: list[str]) -> int:
    n = 0
    for text in frames:
        _flag, _tr_id, count_text, payload = text.split("|", 3)
        fields = payload.split("^")
        width = len(fields) // int(count_text)
        records = [fields[i : i + width] for i in range(0, len(fields), width)]
        n += len(records)
    return n


def ours(frames: list[str]) -> int:
    n = 0
    for seq, text in enumerate(frames):
        frame = classify(text)
        ticks = frame_to_ticks(
            frame,
            received_at_us=1_795_132_800_000_000 + seq,  # type: ignore[arg-type]
            app_key_id="main",
            session_id="bench",
            frame_seq=seq,
        )
        n += len(ticks)
    return n


def best_of(fn: Callable[[list[str]], int], frames: list[str]) -> tuple[float, int]:
    gc.collect()
    t0 = time.perf_counter()
    n = fn(frames)
    return time.perf_counter() - t0, n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000, help="records to parse per run (default 200000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each, best counts (default 5)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of our parser")
    parser.add_argument("--source", choices=("market", "sample"), default="market")
    args = parser.parse_args()

    t0 = time.perf_counter()
    if args.source == "market":
        try:
            records, source = market_records(args.records, args.seed)
        except ImportError as exc:
            print(f"app.sim.market unavailable ({exc}); using the sample record", file=sys.stderr)
            records, source = sample_records(args.records, args.seed)
    else:
        records, source = sample_records(args.records, args.seed)
    frames = build_frames(records, args.seed)
    sizes = [int(f.split("|", 3)[2]) for f in frames]
    mix = ", ".join(f"{k}:{sizes.count(k)}" for k in range(1, 6))
    print(f"python {platform.python_version()} on {platform.machine()}; frames from {source}")
    print(
        f"{len(records):,} records in {len(frames):,} frames (records per frame {mix}); "
        f"mean frame {sum(map(len, frames)) / len(frames):,.0f} chars; built in {time.perf_counter() - t0:.1f} s"
    )

    n_records = len(records)
    del records  # the bridge holds frames (strings), not parsed records, while it parses
    # Correctness first: both see every record, ours maps them all.
    assert baseline(frames) == n_records == ours(frames), "record counts disagree"

    best = {"baseline": float("inf"), "ours": float("inf")}
    for _ in range(args.repeat):
        for name, fn in (("baseline", baseline), ("ours", ours)):
            elapsed, n = best_of(fn, frames)
            assert n == n_records
            best[name] = min(best[name], elapsed)
    rate = {name: n_records / elapsed for name, elapsed in best.items()}
    ratio = rate["ours"] / rate["baseline"]
    ok_rate, ok_ratio = rate["ours"] >= TARGET_RECORDS_PER_S, ratio >= TARGET_RATIO
    print(f"best of {args.repeat}, interleaved:")
    print(
        f"  baseline (split + chunk)          {rate['baseline']:>12,.0f} records/s  "
        f"{best['baseline'] / n_records * 1e9:7.0f} ns/record"
    )
    print(
        f"  ours (classify + frame_to_ticks)  {rate['ours']:>12,.0f} records/s  "
        f"{best['ours'] / n_records * 1e9:7.0f} ns/record   target >= {TARGET_RECORDS_PER_S:,}: "
        f"{'MET' if ok_rate else 'MISSED'}"
    )
    print(
        f"  ratio ours/baseline               {ratio:>12.2f}                            target >= "
        f"{TARGET_RATIO}: {'MET' if ok_ratio else 'MISSED'}"
    )

    report.row(
        "parser", "H0STCNT0 frames -> RawTick dicts", rate["ours"], "records/s", "bare split + chunk", rate["baseline"]
    )
    if args.profile or not (ok_rate and ok_ratio):
        profiler = cProfile.Profile()
        profiler.runcall(ours, frames)
        print("\ncProfile of ours (top 15 by own time):")
        pstats.Stats(profiler, stream=sys.stdout).strip_dirs().sort_stats("tottime").print_stats(15)
    return 0 if ok_rate and ok_ratio else 1


if __name__ == "__main__":
    raise SystemExit(main())
