"""The bridge's on-disk journal: order, bounds, durability, crash and damage recovery.

The on-disk format is checked against an encoder written here from the specification (not the module's own),
the crash test kills a real child process with SIGKILL mid-append, and a Hypothesis state machine compares
random append/peek/commit/reopen/torn-tail sequences with an in-memory model.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import app.bridge.journal as journal_mod
from app.bridge.journal import (
    Journal,
    JournalCorrupt,
    JournalFull,
    JournalLocked,
    JournalPosition,
    JournalRecord,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BIG = 1 << 40  # a max_bytes that never fills


# --- an independent rendering of the specified format -----------------------------------------------------------


def entry_bytes(r: JournalRecord) -> bytes:
    """magic | length | CRC32(payload) | topic(2+utf8) key-flag [4+key] ts(8) recv(8) value(4+bytes)."""
    topic = r.topic.encode("utf-8")
    payload = struct.pack(">H", len(topic)) + topic
    payload += b"\x00" if r.key is None else b"\x01" + struct.pack(">I", len(r.key)) + r.key
    payload += struct.pack(">qqI", r.timestamp_ms, r.received_at_us, len(r.value)) + r.value
    return struct.pack(">BII", 0xA7, len(payload), zlib.crc32(payload)) + payload


def head_bytes(segment: int, offset: int) -> bytes:
    body = b"KJH1" + struct.pack(">QQ", segment, offset)
    return body + struct.pack(">I", zlib.crc32(body))


def rec(seq: int, size: int = 40, topic: str = "ticks", key: bytes | None = b"005930") -> JournalRecord:
    """A record whose value starts with its 12-digit sequence number."""
    return JournalRecord(topic, key, b"%012d" % seq + b"v" * max(0, size - 12), seq * 1000, seq * 1_000_000 + 7)


def seq_of(r: JournalRecord) -> int:
    return int(r.value[:12])


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.log"))


def drain(j: Journal) -> list[JournalRecord]:
    records, _ = j.peek(10**9)
    return records


@pytest.fixture
def jdir(tmp_path: Path) -> Path:
    return tmp_path / "journal"


# --- format, order, counts ---------------------------------------------------------------------------------------


def test_on_disk_format_matches_the_specification(jdir: Path) -> None:
    records = [
        rec(1),
        JournalRecord("한글.topic", None, b"", -5, -(2**63)),
        JournalRecord("t", b"", b"\x00\xa7", 2**63 - 1, 0),
    ]
    with Journal(jdir, max_bytes=BIG) as j:
        j.append(records)
        _, pos = j.peek(2)
        j.commit(pos)
    assert [p.name for p in segments(jdir)] == ["seg-0000000000000000.log"]
    assert segments(jdir)[0].read_bytes() == b"".join(entry_bytes(r) for r in records)
    assert (jdir / "head").read_bytes() == head_bytes(0, len(entry_bytes(records[0])) + len(entry_bytes(records[1])))
    with Journal(jdir, max_bytes=BIG) as j:
        assert drain(j) == records[2:]


def test_order_and_counts_across_many_segments(jdir: Path) -> None:
    sizes = [0]
    with Journal(jdir, max_bytes=BIG, segment_bytes=1000) as j:
        seq = 0
        for batch in range(60):
            n = 1 + batch % 13
            batch_records = [rec(s, size=20 + (s * 37) % 150) for s in range(seq, seq + n)]
            j.append(batch_records)
            seq += n
            sizes.append(sizes[-1] + sum(len(entry_bytes(r)) for r in batch_records))
            assert j.pending_records == len(j) == seq
            assert j.pending_bytes == sizes[-1]
        files = segments(jdir)
        assert len(files) > 20
        assert all(f.stat().st_size <= 1000 for f in files)
        total_bytes = j.pending_bytes
        assert sum(f.stat().st_size for f in files) == total_bytes

        got: list[int] = []
        while len(j):
            records, pos = j.peek(37)
            got.extend(seq_of(r) for r in records)
            before = j.pending_bytes
            j.commit(pos)
            assert j.pending_records == seq - len(got)
            assert j.pending_bytes == before - sum(len(entry_bytes(r)) for r in records)
        assert got == list(range(seq))
        assert j.pending_bytes == 0
        assert j.peek(5) == ([], pos)
        # Every segment wholly before the head is gone; at most the active one is left.
        assert len(segments(jdir)) == 1


def test_peek_does_not_consume_and_rereads_nothing(jdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Journal(jdir, max_bytes=BIG, segment_bytes=4096) as j:
        j.append([rec(s) for s in range(50)])
        first, pos10 = j.peek(10)
        reads: list[int] = []
        real_pread = os.pread

        def counting_pread(fd: int, n: int, off: int) -> bytes:
            reads.append(n)
            return real_pread(fd, n, off)

        monkeypatch.setattr(os, "pread", counting_pread)
        for _ in range(100):
            assert j.peek(10) == (first, pos10)
        assert reads == []  # repeated peeks are served from the decoded buffer
        # Commit a position short of what was read: the next peek starts right after it.
        _, pos4 = j.peek(4)
        j.commit(pos4)
        records, _ = j.peek(10)
        assert [seq_of(r) for r in records] == list(range(4, 14))
        assert len(j) == 46
        # Late or repeated acknowledgements are ignored.
        j.commit(pos4)
        j.commit(JournalPosition(0, 0))
        assert len(j) == 46
        monkeypatch.undo()
        # Positions are physical: the one peeked before, also beyond the read cursor after reopen.
        j.commit(pos10)
        assert [seq_of(r) for r in j.peek(1)[0]] == [10]
        _, pos30 = j.peek(20)  # just after record 29
    with Journal(jdir, max_bytes=BIG, segment_bytes=4096) as j:
        j.commit(pos30)
        assert [seq_of(r) for r in drain(j)] == list(range(30, 50))


def test_commit_rejects_positions_that_are_not_entry_boundaries(jdir: Path) -> None:
    with Journal(jdir, max_bytes=BIG) as j:
        j.append([rec(s) for s in range(3)])
        with pytest.raises(ValueError, match="not an entry boundary"):
            j.commit(JournalPosition(0, 5))
        with pytest.raises(ValueError, match="beyond the tail"):
            j.commit(JournalPosition(0, 10**6))
        with pytest.raises(ValueError, match="beyond the tail"):
            j.commit(JournalPosition(7, 0))
        assert len(j) == 3
        assert [seq_of(r) for r in drain(j)] == [0, 1, 2]


def test_journal_full_is_all_or_nothing_and_clears_after_commit(jdir: Path) -> None:
    entry = len(entry_bytes(rec(0)))
    with Journal(jdir, max_bytes=10 * entry, segment_bytes=3 * entry) as j:
        j.append([rec(s) for s in range(8)])
        files_before = {f.name: f.stat().st_size for f in segments(jdir)}
        with pytest.raises(JournalFull) as info:
            j.append([rec(s) for s in range(8, 11)])
        message = str(info.value)
        assert str(jdir) in message
        assert f"{8 * entry} bytes pending" in message
        assert f"{3 * entry} bytes in this append" in message
        assert f"limit {10 * entry} bytes" in message
        assert (info.value.pending_bytes, info.value.batch_bytes, info.value.max_bytes) == (
            8 * entry,
            3 * entry,
            10 * entry,
        )
        assert {f.name: f.stat().st_size for f in segments(jdir)} == files_before
        assert (j.pending_records, j.pending_bytes) == (8, 8 * entry)
        j.append([rec(8), rec(9)])  # exactly at the limit is allowed
        with pytest.raises(JournalFull):
            j.append([rec(10)])
        _, pos = j.peek(3)
        j.commit(pos)
        j.append([rec(s) for s in range(10, 13)])
        assert [seq_of(r) for r in drain(j)] == list(range(3, 13))
    with Journal(jdir, max_bytes=10 * entry, segment_bytes=3 * entry) as j:
        assert [seq_of(r) for r in drain(j)] == list(range(3, 13))


def test_io_error_mid_append_leaves_nothing_behind(jdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = len(entry_bytes(rec(0)))
    with Journal(jdir, max_bytes=BIG, segment_bytes=4 * entry) as j:
        j.append([rec(s) for s in range(3)])
        files_before = {f.name: f.stat().st_size for f in segments(jdir)}
        real_write = os.write
        calls = 0

        def failing_write(fd: int, data: bytes | memoryview) -> int:
            nonlocal calls
            calls += 1
            if calls == 2:  # the first segment's part went through; the second one hits a full disk
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", failing_write)
        with pytest.raises(OSError, match="No space"):
            j.append([rec(s) for s in range(3, 9)])  # 1 fits the first segment, then a roll
        monkeypatch.undo()
        assert calls == 2
        assert {f.name: f.stat().st_size for f in segments(jdir)} == files_before
        assert (j.pending_records, j.pending_bytes) == (3, 3 * entry)
        j.append([rec(s) for s in range(3, 9)])
        assert [seq_of(r) for r in drain(j)] == list(range(9))
    with Journal(jdir, max_bytes=BIG, segment_bytes=4 * entry) as j:
        assert [seq_of(r) for r in drain(j)] == list(range(9))
        assert j.recovered_torn_bytes == 0


def test_reopen_gives_the_same_pending_records_and_commit_is_durable(jdir: Path) -> None:
    records = [rec(s, size=10 + s, key=None if s % 3 == 0 else b"k%d" % s) for s in range(40)]
    with Journal(jdir, max_bytes=BIG, segment_bytes=500) as j:
        j.append(records)
        expected_bytes = j.pending_bytes
    with Journal(jdir, max_bytes=BIG, segment_bytes=500) as j:
        assert (j.pending_records, j.pending_bytes) == (40, expected_bytes)
        assert drain(j) == records
        _, pos = j.peek(25)
        j.commit(pos)
        committed_bytes = sum(len(entry_bytes(r)) for r in records[:25])
    with Journal(jdir, max_bytes=BIG, segment_bytes=500) as j:
        assert j.head == pos
        assert (j.pending_records, j.pending_bytes) == (15, expected_bytes - committed_bytes)
        assert drain(j) == records[25:]
        assert j.recovered_torn_bytes == 0 and j.head_fallback_reason is None
        j.append([rec(99)])
    with Journal(jdir, max_bytes=BIG, segment_bytes=500) as j:
        assert drain(j) == [*records[25:], rec(99)]


def test_second_open_of_the_same_directory_is_refused(jdir: Path) -> None:
    j = Journal(jdir, max_bytes=BIG)
    with pytest.raises(JournalLocked):
        Journal(jdir, max_bytes=BIG)
    j.close()
    j.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        j.append([rec(0)])
    Journal(jdir, max_bytes=BIG).close()


def test_fsync_at_most_every_interval_and_on_sync_and_close(jdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(journal_mod, "monotonic", lambda: now[0])
    syncs: list[int] = []
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real_fdatasync(fd))[1])
    j = Journal(jdir, max_bytes=BIG, fsync_interval_s=10.0)
    j.append([rec(0)])
    now[0] += 5
    j.append([rec(1)])
    assert syncs == []
    now[0] += 5
    j.append([rec(2)])  # 10 s since the last sync (the open)
    assert len(syncs) == 1
    now[0] += 9.9
    j.append([rec(3)])
    assert len(syncs) == 1
    j.sync()
    assert len(syncs) == 2
    j.sync()  # nothing new written: nothing to sync
    assert len(syncs) == 2
    j.append([rec(4)])
    j.close()
    assert len(syncs) == 3


# --- torn tails and damage ---------------------------------------------------------------------------------------


def _write_three_segments(jdir: Path) -> tuple[list[JournalRecord], int]:
    entry = len(entry_bytes(rec(0)))
    records = [rec(s) for s in range(12)]
    with Journal(jdir, max_bytes=BIG, segment_bytes=4 * entry) as j:
        j.append(records)
    assert len(segments(jdir)) == 3
    return records, entry


@pytest.mark.parametrize("keep", [1, 4, 9, 20, -1])
def test_torn_last_entry_is_cut_on_open(jdir: Path, keep: int) -> None:
    records, entry = _write_three_segments(jdir)
    last = segments(jdir)[-1]
    size = last.stat().st_size
    cut = entry - keep if keep > 0 else 1  # keep bytes of the last entry (-1: all but its last byte)
    os.truncate(last, size - cut)
    with Journal(jdir, max_bytes=BIG, segment_bytes=4 * entry) as j:
        assert j.recovered_torn_bytes == entry - cut
        assert drain(j) == records[:-1]
        assert last.stat().st_size == size - entry
        j.append([rec(100)])
    with Journal(jdir, max_bytes=BIG, segment_bytes=4 * entry) as j:
        assert j.recovered_torn_bytes == 0
        assert drain(j) == [*records[:-1], rec(100)]


def test_flipped_byte_in_the_last_entry_is_cut_on_open(jdir: Path) -> None:
    records, entry = _write_three_segments(jdir)
    last = segments(jdir)[-1]
    data = bytearray(last.read_bytes())
    data[-3] ^= 0x10  # inside the last value: its CRC no longer matches
    last.write_bytes(bytes(data))
    with Journal(jdir, max_bytes=BIG, segment_bytes=4 * entry) as j:
        assert j.recovered_torn_bytes == entry
        assert drain(j) == records[:-1]


def test_zero_filled_tail_is_cut_on_open(jdir: Path) -> None:
    records, entry = _write_three_segments(jdir)
    with segments(jdir)[-1].open("ab") as f:
        f.write(b"\x00" * 4096)  # what a power loss can leave after an extended file
    with Journal(jdir, max_bytes=BIG, segment_bytes=4 * entry) as j:
        assert j.recovered_torn_bytes == 4096
        assert drain(j) == records


def test_damage_followed_by_valid_entries_is_corruption(jdir: Path) -> None:
    _, entry = _write_three_segments(jdir)
    last = segments(jdir)[-1]
    data = bytearray(last.read_bytes())
    data[entry + entry // 2] ^= 0x01  # the second of four entries of the last segment
    last.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt, match="valid entries follow"):
        Journal(jdir, max_bytes=BIG)


def test_damage_in_a_segment_that_is_not_the_last_is_corruption(jdir: Path) -> None:
    _write_three_segments(jdir)
    middle = segments(jdir)[1]
    os.truncate(middle, middle.stat().st_size - 3)
    with pytest.raises(JournalCorrupt, match="not the last segment"):
        Journal(jdir, max_bytes=BIG)


def test_missing_segment_in_the_middle_is_corruption(jdir: Path) -> None:
    _write_three_segments(jdir)
    segments(jdir)[1].unlink()
    with pytest.raises(JournalCorrupt, match="missing"):
        Journal(jdir, max_bytes=BIG)


def test_missing_head_segment_is_corruption(jdir: Path) -> None:
    _, entry = _write_three_segments(jdir)
    with Journal(jdir, max_bytes=BIG, segment_bytes=4 * entry) as j:
        _, pos = j.peek(5)
        j.commit(pos)
    assert pos.segment == 1
    segments(jdir)[0].unlink()
    with pytest.raises(JournalCorrupt, match="does not exist"):
        Journal(jdir, max_bytes=BIG)


def test_damage_before_the_head_is_ignored(jdir: Path) -> None:
    records, entry = _write_three_segments(jdir)
    with Journal(jdir, max_bytes=BIG, segment_bytes=4 * entry) as j:
        _, pos = j.peek(10)
        j.commit(pos)
    last = segments(jdir)[-1]
    data = bytearray(last.read_bytes())
    data[entry // 2] ^= 0x01  # the first entry of the last segment, already committed
    last.write_bytes(bytes(data))
    with Journal(jdir, max_bytes=BIG, segment_bytes=4 * entry) as j:
        assert drain(j) == records[10:]
        assert j.head_fallback_reason is None


@pytest.mark.parametrize("damage", ["flip", "short", "inside-entry"])
def test_untrusted_head_falls_back_to_the_oldest_segment(jdir: Path, damage: str) -> None:
    """Decision: a head that cannot be trusted replays from the oldest segment (duplicates, never loss)."""
    records, entry = _write_three_segments(jdir)
    with Journal(jdir, max_bytes=BIG, segment_bytes=4 * entry) as j:
        _, pos = j.peek(6)
        j.commit(pos)
    assert pos == JournalPosition(1, 2 * entry)
    head = jdir / "head"
    assert head.read_bytes() == head_bytes(1, 2 * entry)
    if damage == "flip":
        data = bytearray(head.read_bytes())
        data[12] ^= 0x04
        head.write_bytes(bytes(data))
    elif damage == "short":
        head.write_bytes(head.read_bytes()[:10])
    else:
        head.write_bytes(head_bytes(1, 2 * entry + 5))  # a valid CRC, but not an entry boundary
    with Journal(jdir, max_bytes=BIG, segment_bytes=4 * entry) as j:
        assert j.head_fallback_reason is not None
        # Segment 0 went with the commit; segment 1 replays whole: records 4..11, nothing pending lost.
        assert drain(j) == records[4:]
        _, end = j.peek(100)
        j.commit(end)
    with Journal(jdir, max_bytes=BIG, segment_bytes=4 * entry) as j:
        assert j.head_fallback_reason is None
        assert len(j) == 0


def test_head_beyond_the_surviving_tail_starts_a_fresh_segment(jdir: Path) -> None:
    """A power loss can keep the fsynced head but not the data it consumed: nothing is pending then."""
    entry = len(entry_bytes(rec(0)))
    with Journal(jdir, max_bytes=BIG) as j:
        j.append([rec(s) for s in range(5)])
        _, pos = j.peek(5)
        j.commit(pos)
    os.truncate(segments(jdir)[0], 2 * entry + 3)
    with Journal(jdir, max_bytes=BIG) as j:
        assert len(j) == 0 and j.recovered_torn_bytes == 3
        assert j.head == JournalPosition(1, 0)
        assert [p.name for p in segments(jdir)] == ["seg-0000000000000001.log"]
        j.append([rec(5), rec(6)])
    with Journal(jdir, max_bytes=BIG) as j:
        assert [seq_of(r) for r in drain(j)] == [5, 6]


# --- kill -9 ---------------------------------------------------------------------------------------------------

CHILD = r"""
import sys
from pathlib import Path
from app.bridge.journal import Journal, JournalRecord

directory, seq = Path(sys.argv[1]), int(sys.argv[2])
journal = Journal(directory, max_bytes=1 << 40, segment_bytes=32 * 1024, fsync_interval_s=0.05)
i = 0
while True:
    n = 1 + (i * 37) % 64
    journal.append([JournalRecord("ticks", b"k", b"%012d" % s + b"x" * 300, s, -s) for s in range(seq, seq + n)])
    seq += n
    print("A", seq, flush=True)
    i += 1
    if i % 7 == 0 and len(journal) > 300:
        records, position = journal.peek(len(journal) - 150)
        journal.commit(position)
        print("C", int(records[-1].value[:12]) + 1, flush=True)
"""


def test_kill_9_mid_append_loses_nothing_that_was_appended(jdir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    next_seq, prev_first = 0, 0
    for round_no in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(jdir), str(next_seq)],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        appended = committed = 0
        target = next_seq + 4000 + 1500 * round_no
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if not line.endswith("\n"):  # torn by the kill: never a promise
                    break
                kind, value = line.split()
                if kind == "A":
                    appended = int(value)
                else:
                    committed = int(value)
                if appended >= target and committed:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            # Whatever the child printed in full before it died is a promise as well.
            for line in proc.stdout:
                if not line.endswith("\n"):  # torn by the kill: never a promise
                    break
                kind, value = line.split()
                if kind == "A":
                    appended = int(value)
                else:
                    committed = int(value)
        finally:
            if proc.poll() is None:
                proc.kill()
            stderr = proc.communicate()[1]
        assert proc.returncode == -signal.SIGKILL, stderr
        assert appended >= target

        with Journal(jdir, max_bytes=BIG, segment_bytes=32 * 1024) as j:
            records = drain(j)
            seqs = [seq_of(r) for r in records]
            first = seqs[0]
            assert seqs == list(range(first, first + len(seqs))), "duplicates or gaps"
            assert first >= committed, "a commit that returned was lost"
            assert first >= prev_first, "the head moved backwards"
            assert seqs[-1] + 1 >= appended, "an append that returned was lost"
            assert all(r.timestamp_ms == s and r.received_at_us == -s for r, s in zip(records, seqs, strict=True))
            assert j.pending_bytes == sum(len(entry_bytes(r)) for r in records)
            assert len(segments(jdir)) <= j.pending_bytes // (32 * 1024) + 3  # committed segments were deleted
            next_seq, prev_first = seqs[-1] + 1, first


# --- model-based ---------------------------------------------------------------------------------------------------

MODEL_MAX_BYTES = 1500
MODEL_SEGMENT_BYTES = 300

record_strategy = st.builds(
    JournalRecord,
    topic=st.sampled_from(["t", "ticks.raw", "한글.토픽"]),
    key=st.none() | st.binary(max_size=12),
    value=st.binary(max_size=160),
    timestamp_ms=st.integers(-(2**63), 2**63 - 1),
    received_at_us=st.integers(-(2**63), 2**63 - 1),
)


class JournalMachine(RuleBasedStateMachine):
    """The journal must behave like a list of pending records, whatever happens between reopens."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="journal-model-"))
        self.journal = self._open()
        self.model: list[JournalRecord] = []
        self.committed = 0  # records committed since the start, so a position is an absolute count
        self.positions: list[tuple[int, JournalPosition]] = []

    def _open(self) -> Journal:
        return Journal(self.dir, max_bytes=MODEL_MAX_BYTES, segment_bytes=MODEL_SEGMENT_BYTES, fsync_interval_s=60)

    @rule(batch=st.lists(record_strategy, min_size=1, max_size=6))
    def append(self, batch: list[JournalRecord]) -> None:
        pending = sum(len(entry_bytes(r)) for r in self.model)
        if pending + sum(len(entry_bytes(r)) for r in batch) > MODEL_MAX_BYTES:
            with pytest.raises(JournalFull):
                self.journal.append(batch)
        else:
            self.journal.append(batch)
            self.model.extend(batch)

    @rule(n=st.integers(0, 12))
    def peek(self, n: int) -> None:
        records, position = self.journal.peek(n)
        assert records == self.model[:n]
        self.positions.append((self.committed + len(records), position))

    @precondition(lambda self: self.positions)
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        recent = st.sampled_from(self.positions[-3:])  # mostly fresh acknowledgements, sometimes stale ones
        absolute, position = data.draw(recent | recent | st.sampled_from(self.positions))
        self.journal.commit(position)
        if absolute > self.committed:
            del self.model[: absolute - self.committed]
            self.committed = absolute

    @rule()
    def sync(self) -> None:
        self.journal.sync()

    @rule()
    def reopen(self) -> None:
        self.journal.close()
        self.journal = self._open()
        assert self.journal.recovered_torn_bytes == 0

    @rule(data=st.data())
    def reopen_after_torn_write(self, data: st.DataObject) -> None:
        self.journal.close()
        whole = entry_bytes(data.draw(record_strategy))
        torn = data.draw(st.sampled_from([whole[:cut] for cut in range(1, len(whole))] + [b"\x00" * 64]))
        with segments(self.dir)[-1].open("ab") as f:
            f.write(torn)
        self.journal = self._open()
        assert self.journal.recovered_torn_bytes == len(torn)

    @rule()
    def peek_everything(self) -> None:
        # A rule rather than an invariant: reading to the tail after every step would hide read-cursor states.
        records, position = self.journal.peek(len(self.model) + 1)
        assert records == self.model
        self.positions.append((self.committed + len(records), position))

    @invariant()
    def counts_match(self) -> None:
        assert self.journal.pending_records == len(self.journal) == len(self.model)
        assert self.journal.pending_bytes == sum(len(entry_bytes(r)) for r in self.model)

    def teardown(self) -> None:
        self.journal.close()
        shutil.rmtree(self.dir, ignore_errors=True)


JournalMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_journal_matches_a_list_model = JournalMachine.TestCase
