"""The JSONL archive keeps its Kafka offsets with its data: crashes at any point neither lose nor repeat a line."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from app.sink.archive import COMMIT_FILE, ArchiveError, JsonlArchive
from app.sink.lines import kst_iso, overflow_line, overflow_path, scalp_line, scalp_path, slot_line, swing_line

TOPIC = "kis.ticks.raw"


def test_a_committed_batch_survives_a_reopen_with_its_offsets(tmp_path: Path) -> None:
    archive = JsonlArchive(tmp_path)
    assert archive.open().truncated == {}
    archive.write({"a/1.jsonl": [b"x\n", b"y\n"], "b.jsonl": [b"z\n"]}, {(TOPIC, 0): 2, (TOPIC, 3): 8})
    again = JsonlArchive(tmp_path)
    assert again.open().truncated == {}
    assert again.lengths == {"a/1.jsonl": 4, "b.jsonl": 2}
    assert [again.is_written(TOPIC, 0, o) for o in (0, 1, 2)] == [True, True, False]
    assert again.next_offset(TOPIC, 3) == 8 and again.next_offset(TOPIC, 5) is None
    assert (tmp_path / "a/1.jsonl").read_bytes() == b"x\ny\n"


def test_bytes_past_the_committed_length_are_cut_on_open(tmp_path: Path) -> None:
    archive = JsonlArchive(tmp_path)
    archive.open()
    archive.write({"f.jsonl": [b"one\n"]}, {(TOPIC, 0): 1})
    with open(tmp_path / "f.jsonl", "ab") as f:  # what a process killed between append and commit leaves
        f.write(b"two\nthr")
    recovery = JsonlArchive(tmp_path).open()
    assert recovery.truncated == {"f.jsonl": 7}
    assert (tmp_path / "f.jsonl").read_bytes() == b"one\n"


def test_a_failed_commit_cuts_the_batch_back_and_raises(tmp_path: Path) -> None:
    archive = JsonlArchive(tmp_path)
    archive.open()
    archive.write({"f.jsonl": [b"one\n"]}, {(TOPIC, 0): 1})
    (tmp_path / (COMMIT_FILE + ".tmp")).mkdir()  # the commit record cannot be written
    with pytest.raises(IsADirectoryError):
        archive.write({"f.jsonl": [b"two\n"]}, {(TOPIC, 0): 2})
    assert (tmp_path / "f.jsonl").read_bytes() == b"one\n" and archive.next_offset(TOPIC, 0) == 1
    (tmp_path / (COMMIT_FILE + ".tmp")).rmdir()
    archive.write({"f.jsonl": [b"two\n"]}, {(TOPIC, 0): 2})  # the retry writes it once
    assert (tmp_path / "f.jsonl").read_bytes() == b"one\ntwo\n"


def test_a_file_shorter_than_committed_or_an_unreadable_record_stops_the_open(tmp_path: Path) -> None:
    archive = JsonlArchive(tmp_path)
    archive.open()
    archive.write({"f.jsonl": [b"one\n"]}, {(TOPIC, 0): 1})
    (tmp_path / "f.jsonl").write_bytes(b"on")
    with pytest.raises(ArchiveError, match="has 2 bytes but 4 were committed"):
        JsonlArchive(tmp_path).open()
    (tmp_path / COMMIT_FILE).write_bytes(b"{not json")
    with pytest.raises(ArchiveError, match="unreadable commit record"):
        JsonlArchive(tmp_path).open()


WRITER = """
import random, sys
from pathlib import Path
from app.sink.archive import JsonlArchive
archive = JsonlArchive(Path(sys.argv[1]))
archive.open()
offset = archive.next_offset("t", 0) or 0
rng = random.Random(offset)
print("ready", flush=True)
while True:
    n = rng.randint(1, 300)
    lines = {}
    for o in range(offset, offset + n):
        lines.setdefault(f"h/{o // 1000:04d}.jsonl", []).append(b'{"offset": %d}\\n' % o)
    archive.write(lines, {("t", 0): offset + n})
    offset += n
"""


def test_kill_9_at_random_moments_neither_loses_nor_repeats_a_line(tmp_path: Path) -> None:
    """A writer appends batches of 1-300 lines across rolling files; it is killed with SIGKILL five times at
    random moments
    (more if none landed mid-batch). After each kill the archive reopens to exactly offsets [0, next), once each."""
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    nxt, kills, cuts = 0, 0, 0
    while kills < 5 or (cuts == 0 and kills < 20):  # at least one kill must land between append and commit
        kills += 1
        before = nxt
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.05, 0.5))  # a random moment to kill at, not a wait for anything
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        archive = JsonlArchive(tmp_path)
        cuts += bool(archive.open().truncated)
        nxt = archive.next_offset("t", 0) or 0
        got = [
            orjson.loads(line)["offset"]
            for path in sorted((tmp_path / "h").glob("*.jsonl"))
            for line in path.read_bytes().splitlines()
        ]
        assert got == list(range(nxt)), f"lines 0..{nxt} exactly once, in order"
        assert nxt >= before
    assert nxt > 0 and cuts > 0


TICK = {
    "symbol": "005930",
    "event_time_us": 1_769_407_238_000_000,  # 2026-01-26 15:00:38 KST
    "price": 53000,
    "trade_volume": 12,
    "cumulative_volume": 10_000_000,
    "change_rate": 0.05,
    "best_bid": 52900,
    "best_ask": 53000,
    "side": "buy",
    "received_at_us": 1_769_407_238_053_915,
}


def test_lines_are_in_the_seed_format_and_filed_by_kst_time() -> None:
    assert kst_iso(TICK["received_at_us"]) == "2026-01-26T15:00:38.053915+09:00"
    assert scalp_path(TICK) == "observer/scalp/20260126_15.jsonl"
    line = orjson.loads(scalp_line(TICK, 1, "surge"))
    assert line == {
        "timestamp": "2026-01-26T15:00:38.000000+09:00",
        "symbol": "005930",
        "slot_id": 1,
        "price": 53000,
        "volume": 12,
        "accumulated_volume": 10_000_000,
        "change_rate": 0.05,
        "best_bid": 52900,
        "best_ask": 53000,
        "side": "buy",
        "received_at": "2026-01-26T15:00:38.053915+09:00",
        "trigger_type": "surge",
    }
    assert scalp_line(TICK, 1, "surge") == scalp_line(dict(TICK), 1, "surge"), "same record, same bytes"
    decision = {
        "decision_id": "main-1-x",
        "app_key_id": "main",
        "slot_id": 1,
        "symbol": "005930",
        "trigger_type": "surge",
        "priority_score": 0.9,
        "decided_at_us": TICK["received_at_us"],
        "detected_at_us": TICK["event_time_us"],
        "current_volume": 10_000_000,
        "avg_volume_10m": 1000.0,
        "surge_ratio": 10.0,
    }
    slot = orjson.loads(slot_line(decision))
    assert {k: slot[k] for k in ("timestamp", "symbol", "slot_id", "trigger_type", "priority_score")} == {
        "timestamp": "2026-01-26T15:00:38.053915+09:00",
        "symbol": "005930",
        "slot_id": 1,
        "trigger_type": "surge",
        "priority_score": 0.9,
    }
    assert slot["details"] == {"current_volume": 10_000_000, "avg_volume_10m": 1000.0, "surge_ratio": 10.0}
    overflow = decision | {"reason": "all_slots_occupied", "decided_at_us": 1_769_440_000_000_000}
    assert overflow_path(overflow) == "system/overflow_20260127.jsonl"  # 00:06 KST the next day
    assert orjson.loads(overflow_line(overflow))["reason"] == "all_slots_occupied"
    snapshot = {
        "symbol": "000660",
        "business_date": "20260126",
        "snapshot_time_us": 1_769_407_237_999_999,
        "source": "volume_rank",
        "rank": 2,
        "price": 180000,
        "cumulative_volume": 5,
        "change_rate": -1.0,
    }
    assert orjson.loads(swing_line(snapshot))["timestamp"] == "2026-01-26T15:00:37.999999+09:00"
