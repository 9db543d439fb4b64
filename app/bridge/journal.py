"""A bounded, crash-safe, on-disk FIFO of Kafka records: where the bridge puts ticks while the broker is away.

The KIS feed does not wait for Kafka. When the broker is unreachable the bridge appends each record here and,
once the broker is back, publishes them *in order* with :meth:`Journal.peek` and advances the durable head with
:meth:`Journal.commit` after the broker acknowledged them. A broker outage of minutes therefore loses nothing,
and the bound (``max_bytes`` of uncommitted records) turns an outage of hours into a loud :class:`JournalFull`
(the caller raises its error and bumps its metric) instead of a full disk.

Why it survives ``kill -9`` at any moment:

* appends are plain ``os.write`` calls, so once :meth:`Journal.append` returns, the bytes are in the kernel's page
  cache and outlive the process; ``fdatasync`` runs at most every ``fsync_interval_s`` (checked on append) and on
  :meth:`Journal.sync` / :meth:`Journal.close`, which bounds what a *power* loss can take;
* every entry carries its length and a CRC32, so a write cut short by the kill (a *torn tail*) is recognised and
  truncated on the next open (:attr:`Journal.recovered_torn_bytes` counts what was cut);
* the head is a separate small file replaced atomically (temp file, fsync, rename, fsync of the directory), so a
  kill during :meth:`Journal.commit` leaves either the old or the new head: at worst the last batch that was being
  committed is published again (at-least-once), never lost;
* segment files wholly before the head are deleted only after the new head is durable; leftovers of a kill
  between the two are deleted on the next open.

On-disk format (all integers big-endian):

* ``seg-<16-digit number>.log``: consecutive numbers; a new segment starts when the next entry would take the
  current one past ``segment_bytes`` (an entry larger than that gets a segment of its own). Each entry is
  ``magic (1 byte, 0xA7) | payload length (4) | CRC32 of the payload (4) | payload`` and the payload is
  ``topic length (2) | topic UTF-8 | key flag (1: 0 = no key, 1 = key) | [key length (4) | key] |
  timestamp_ms (8, signed) | received_at_us (8, signed) | value length (4) | value``.
* ``head``: ``b"KJH1" | segment number (8) | byte offset (8) | CRC32 of the previous 20 bytes (4)``, the position
  of the first uncommitted entry. Absent until the first commit (then the oldest segment's start is the head).
* ``lock``: held with ``flock`` while a :class:`Journal` is open, so two bridges can never share a journal.

Recovery rules (on open):

1. ``head.tmp`` (a kill mid-commit) is removed; segments numbered below the head's segment are deleted.
2. The head must lie on an entry boundary of its segment (or at/after its end). A head file that is unreadable,
   has a bad CRC or points inside an entry is *not trusted*: the journal falls back to the start of the oldest
   segment present, logs a warning and says why in :attr:`Journal.head_fallback_reason`. This is the safe side
   for a capture that must lose nothing: the cost is re-publishing the already committed part of that segment
   (duplicates, bounded by one segment), never dropping pending records. (A CRC-valid head naming a segment
   that does not exist is different: pending records are gone, so that is :class:`JournalCorrupt`.)
3. Segments from the head on are scanned entry by entry (magic, length, CRC) to recount the pending records
   and bytes exactly. A failing entry in the *last* segment is a torn tail when no valid entry follows it
   anywhere in that segment: it is truncated. Anything else - a bad entry followed by valid ones, a damaged
   segment that is not the last, a missing segment in the numbering - is damage in the middle that would lose
   records silently if skipped, so it raises :class:`JournalCorrupt`.
4. If the head lies beyond the valid end of the last segment (possible only after a power loss: the head was
   fsynced, the data it had consumed was not), nothing is pending: a fresh segment is started and the head
   moved to it, so new appends never land before the head.

Positions are physical ``(segment, offset)`` pairs, so one from :meth:`Journal.peek` stays valid across a
reopen; :meth:`Journal.commit` accepts any entry boundary between the head and the tail and ignores positions
at or before the head (acknowledgements may arrive late or twice).

The journal is synchronous file I/O only; a lock makes each public method atomic, so an appending thread and
a replaying thread may share one instance.
"""

from __future__ import annotations

import fcntl
import functools
import logging
import os
import re
import struct
import threading
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice, pairwise
from pathlib import Path
from time import monotonic
from types import TracebackType

__all__ = [
    "Journal",
    "JournalCorrupt",
    "JournalFull",
    "JournalLocked",
    "JournalPosition",
    "JournalRecord",
]

_log = logging.getLogger(__name__)

ENTRY_MAGIC = 0xA7
_MAGIC_BYTE = bytes([ENTRY_MAGIC])
_ENTRY_HEADER = struct.Struct(">BII")  # magic, payload length, CRC32 of the payload
ENTRY_HEADER_BYTES = _ENTRY_HEADER.size  # 9
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_PAYLOAD_TAIL = struct.Struct(">qqI")  # timestamp_ms, received_at_us, value length (the value follows)
_MIN_PAYLOAD = _U16.size + 1 + _PAYLOAD_TAIL.size  # empty topic, no key, empty value
_MAX_U32 = 0xFFFF_FFFF

_HEAD_BODY = struct.Struct(">4sQQ")
_HEAD_MAGIC = b"KJH1"
_HEAD_FILE_BYTES = _HEAD_BODY.size + _U32.size
HEAD_FILE = "head"
_HEAD_TMP = "head.tmp"
_LOCK_FILE = "lock"
_SEGMENT_NAME = re.compile(r"^seg-(\d{16})\.log$")
_MAX_SEGMENT_NUMBER = 10**16 - 1

# Reads go through pread in chunks of this size: one syscall per chunk rather than two per entry.
_READ_CHUNK = 256 * 1024


def segment_name(number: int) -> str:
    """The file name of segment ``number`` (fixed width, so names sort in number order)."""
    return f"seg-{number:016d}.log"


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One Kafka record as the bridge would have produced it, plus when the bridge received its frame."""

    topic: str
    key: bytes | None
    value: bytes
    timestamp_ms: int
    received_at_us: int  # when the bridge received the frame (for latency metrics after replay)


@dataclass(frozen=True, slots=True, order=True)
class JournalPosition:
    """A place between two entries: ``offset`` bytes into segment ``segment``.

    Physical rather than a counter, so a position survives a reopen and compares in journal order.
    """

    segment: int
    offset: int


class JournalFull(Exception):
    """An append would take the uncommitted bytes past ``max_bytes``; nothing of it was written.

    Carries the numbers for the caller's error and metric.
    """

    def __init__(
        self, directory: Path, pending_bytes: int, batch_bytes: int, max_bytes: int, pending_records: int
    ) -> None:
        super().__init__(
            f"journal {directory} is full: {pending_bytes} bytes pending ({pending_records} records) + "
            f"{batch_bytes} bytes in this append > limit {max_bytes} bytes "
            f"({100 * pending_bytes / max_bytes:.1f}% used); nothing of this append was written"
        )
        self.directory = directory
        self.pending_bytes = pending_bytes
        self.batch_bytes = batch_bytes
        self.max_bytes = max_bytes
        self.pending_records = pending_records


class JournalCorrupt(Exception):
    """Damage that cannot be repaired without silently losing records (not a torn tail, which is repaired)."""


class JournalLocked(Exception):
    """Another open :class:`Journal` (in this or another process) holds the directory."""


@dataclass(slots=True)
class _Buffered:
    """A decoded entry between the head and the read cursor, kept so repeated peeks need no re-read."""

    record: JournalRecord
    end: JournalPosition  # the position just after this entry
    size: int  # header + payload bytes


@dataclass(slots=True)
class _Scan:
    """What a walk over the valid entries of one segment found."""

    end: int  # offset just after the last valid entry (== the start if none)
    records: int  # valid entries starting at or after the mark
    nbytes: int  # their bytes
    mark_seen: bool  # the mark is the start of a valid entry, or the end of the walk


# --- encoding ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _topic_prefix(topic: str) -> bytes:
    """Length-prefixed UTF-8 topic; cached because a bridge writes to a handful of topics millions of times."""
    raw = topic.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError(f"topic is {len(raw)} bytes in UTF-8; at most 65535 fit the journal format")
    return _U16.pack(len(raw)) + raw


def encode_entry(record: JournalRecord) -> bytes:
    """The complete on-disk entry (header + payload) for ``record``; ValueError if a field does not fit."""
    key = record.key
    value = record.value
    try:
        key_part = b"\x00" if key is None else b"\x01" + _U32.pack(len(key)) + key
        tail = _PAYLOAD_TAIL.pack(record.timestamp_ms, record.received_at_us, len(value))
    except struct.error as exc:
        raise ValueError(f"record does not fit the journal format: {exc}") from exc
    payload = b"".join((_topic_prefix(record.topic), key_part, tail, value))
    if len(payload) > _MAX_U32:
        raise ValueError(f"record payload is {len(payload)} bytes; at most {_MAX_U32} fit the journal format")
    return _ENTRY_HEADER.pack(ENTRY_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _decode_payload(buf: bytes, start: int, end: int) -> JournalRecord:
    """The record in ``buf[start:end]``; ValueError if the payload's inner lengths do not add up."""
    try:
        (topic_len,) = _U16.unpack_from(buf, start)
        pos = start + 2 + topic_len
        if pos >= end:
            raise ValueError("topic runs past the payload")
        topic = buf[start + 2 : pos].decode("utf-8")
        flag = buf[pos]
        pos += 1
        key: bytes | None
        if flag == 0:
            key = None
        elif flag == 1:
            (key_len,) = _U32.unpack_from(buf, pos)
            pos += 4
            key = buf[pos : pos + key_len]
            pos += key_len
        else:
            raise ValueError(f"key flag {flag} is neither 0 nor 1")
        if pos + _PAYLOAD_TAIL.size > end:
            raise ValueError("key runs past the payload")
        timestamp_ms, received_at_us, value_len = _PAYLOAD_TAIL.unpack_from(buf, pos)
        pos += _PAYLOAD_TAIL.size
    except struct.error as exc:
        raise ValueError(f"payload too short: {exc}") from exc
    if pos + value_len != end:
        raise ValueError(f"value length {value_len} does not match the payload length")
    return JournalRecord(topic, key, buf[pos:end], timestamp_ms, received_at_us)


def _payload_shape_ok(buf: bytes, start: int, length: int) -> bool:
    """Whether the inner lengths of ``buf[start:start+length]`` add up exactly: a cheap filter before a CRC."""
    end = start + length
    if length < _MIN_PAYLOAD:
        return False
    pos: int = start + 2 + _U16.unpack_from(buf, start)[0]
    if pos + 1 > end:
        return False
    flag = buf[pos]
    pos += 1
    if flag == 1:
        if pos + 4 > end:
            return False
        pos += 4 + _U32.unpack_from(buf, pos)[0]
    elif flag != 0:
        return False
    if pos + _PAYLOAD_TAIL.size > end:
        return False
    value_len: int = _U32.unpack_from(buf, pos + 16)[0]
    return pos + _PAYLOAD_TAIL.size + value_len == end


# --- low-level file helpers --------------------------------------------------------------------------------------


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    """Up to ``length`` bytes at ``offset``; fewer only at end of file (pread may return short reads)."""
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a regular file may take a write in parts, e.g. near ENOSPC)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_dir(directory: Path) -> None:
    """Make creations, renames and deletions in ``directory`` durable (a file's fsync does not cover its name)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Window:
    """Sequential reads of one file through a pread buffer, so scanning costs one syscall per chunk."""

    def __init__(self, fd: int, limit: int) -> None:
        self._fd = fd
        self._limit = limit
        self._buf = b""
        self._base = 0

    def get(self, offset: int, length: int) -> tuple[bytes, int] | None:
        """``(buffer, index)`` with ``buffer[index:index+length]`` = the file bytes at ``offset``; None past the end."""
        if offset + length > self._limit:
            return None
        rel = offset - self._base
        if rel < 0 or rel + length > len(self._buf):
            self._buf = _pread_exact(self._fd, min(max(length, _READ_CHUNK), self._limit - offset), offset)
            self._base = offset
            rel = 0
            if len(self._buf) < length:
                return None
        return self._buf, rel


def _scan(fd: int, size: int, start: int, mark: int) -> _Scan:
    """Walk the valid entries of a segment from ``start`` until the first invalid one or the end of file.

    Counts the entries starting at or after ``mark`` and reports whether ``mark`` fell on an entry boundary.
    Only magic, length and CRC are checked: a CRC-valid payload was written whole by this module.
    """
    window = _Window(fd, size)
    off = start
    records = nbytes = 0
    mark_seen = False
    while True:
        if off == mark:
            mark_seen = True
        got = window.get(off, ENTRY_HEADER_BYTES)
        if got is None:
            break
        buf, rel = got
        magic, length, crc = _ENTRY_HEADER.unpack_from(buf, rel)
        if magic != ENTRY_MAGIC:
            break
        total = ENTRY_HEADER_BYTES + length
        got = window.get(off, total)
        if got is None:
            break
        buf, rel = got
        if zlib.crc32(memoryview(buf)[rel + ENTRY_HEADER_BYTES : rel + total]) != crc:
            break
        if off >= mark:
            records += 1
            nbytes += total
        off += total
    return _Scan(off, records, nbytes, mark_seen)


def _valid_entry_after(fd: int, start: int, size: int) -> int | None:
    """The offset of the first valid entry strictly after ``start`` (a damaged entry), or None.

    This is what separates a torn tail (nothing valid follows: safe to cut) from damage in the middle (valid
    records follow: cutting would lose them). Candidates must have the magic, fit the file, have inner lengths
    that add up exactly and match their CRC, so random bytes practically never pass.
    """
    data = _pread_exact(fd, size - start, start)
    view = memoryview(data)
    p = data.find(_MAGIC_BYTE, 1)
    while p != -1:
        if p + ENTRY_HEADER_BYTES <= len(data):
            _, length, crc = _ENTRY_HEADER.unpack_from(data, p)
            body = p + ENTRY_HEADER_BYTES
            if (
                body + length <= len(data)
                and _payload_shape_ok(data, body, length)
                and zlib.crc32(view[body : body + length]) == crc
            ):
                return start + p
        p = data.find(_MAGIC_BYTE, p + 1)
    return None


# --- the journal -------------------------------------------------------------------------------------------------


class Journal:
    """A bounded FIFO of :class:`JournalRecord` in segment files under ``directory`` (see the module docstring).

    ``max_bytes`` bounds the *uncommitted* entry bytes (headers included; :attr:`pending_bytes`). Disk use can
    exceed it by the committed prefix of the head's segment (< ``segment_bytes``), which is deleted once the
    head leaves that segment.
    """

    def __init__(
        self, directory: Path, max_bytes: int, segment_bytes: int = 64 * 2**20, fsync_interval_s: float = 0.05
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, not {segment_bytes}")
        if fsync_interval_s < 0:
            raise ValueError(f"fsync_interval_s must not be negative, not {fsync_interval_s}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync_interval_s = fsync_interval_s
        #: Bytes cut from the end of the last segment on open (a write torn by a kill or a power loss).
        self.recovered_torn_bytes = 0
        #: Why the head file was not trusted and the journal replays from the oldest segment; None if it was.
        self.head_fallback_reason: str | None = None

        self._mutex = threading.Lock()
        self._closed = False
        self._failed: str | None = None
        self._lock_fd = -1
        self._write_fd = -1
        self._read_fd = -1
        self._read_segment = -1
        self._sizes: dict[int, int] = {}  # live segment number -> bytes in it (the active one grows)
        self._active = 0
        self._head = JournalPosition(0, 0)
        self._cursor = JournalPosition(0, 0)  # where the next entry to decode for peek starts
        self._buffer: deque[_Buffered] = deque()  # decoded entries from the head up to the cursor
        self._pending_records = 0
        self._pending_bytes = 0
        self._dirty = False  # bytes written to the active segment since its last fdatasync
        self._last_sync = monotonic()

        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._acquire_lock()
        try:
            self._recover()
        except BaseException:
            self._release_fds()
            raise

    # --- public API ----------------------------------------------------------------------------------------------

    @property
    def pending_records(self) -> int:
        """Records appended and not yet committed."""
        return self._pending_records

    @property
    def pending_bytes(self) -> int:
        """On-disk bytes (headers included) of the uncommitted records: what ``max_bytes`` bounds."""
        return self._pending_bytes

    @property
    def head(self) -> JournalPosition:
        """The position of the oldest uncommitted entry (where replay starts)."""
        return self._head

    def __len__(self) -> int:
        return self._pending_records

    def append(self, records: Sequence[JournalRecord], *, over_limit: bool = False) -> None:
        """Write ``records`` after the tail, all or nothing.

        Raises :class:`JournalFull` (writing nothing) if they would take :attr:`pending_bytes` past
        ``max_bytes``, unless ``over_limit`` (at shutdown, keeping records matters more than the bound);
        ValueError if one does not fit the format. On an I/O error the part already written is truncated
        away again before the error propagates. Once this returns, the records survive a kill of the
        process; they survive a power loss after the next fdatasync (within ``fsync_interval_s`` if appends
        keep coming, else at :meth:`sync` / :meth:`close`).
        """
        with self._mutex:
            self._check_usable()
            if not records:
                return
            entries = [encode_entry(record) for record in records]
            batch_bytes = sum(map(len, entries))
            if self._pending_bytes + batch_bytes > self.max_bytes and not over_limit:
                raise JournalFull(
                    self.directory, self._pending_bytes, batch_bytes, self.max_bytes, self._pending_records
                )
            self._write_entries(entries)
            self._pending_records += len(entries)
            self._pending_bytes += batch_bytes

    def peek(self, max_records: int) -> tuple[list[JournalRecord], JournalPosition]:
        """The oldest uncommitted records (at most ``max_records``), without consuming them.

        Returns them with the position just after the last one (the head itself if there are none); commit that
        position once they are published. Decoded entries are kept between calls, so peeking the same
        records again (a retry after a failed publish) reads nothing from disk.
        """
        if max_records < 0:
            raise ValueError(f"max_records must not be negative, not {max_records}")
        with self._mutex:
            self._check_usable()
            self._fill(max_records)
            records: list[JournalRecord] = []
            end = self._head
            for item in islice(self._buffer, max_records):
                records.append(item.record)
                end = item.end
            return records, self._normalise(end)

    def commit(self, position: JournalPosition) -> None:
        """Durably mark everything before ``position`` as published, and delete segments wholly before it.

        ``position`` must be an entry boundary between the head and the tail (any position :meth:`peek`
        returned, also one from before a reopen, also one short of the latest peek's). One at or before the head
        is ignored, so late or repeated acknowledgements are harmless. The head file is replaced atomically, so
        a kill here leaves the old or the new head, never a damaged one.
        """
        with self._mutex:
            self._check_usable()
            if not isinstance(position, JournalPosition):
                raise TypeError(f"commit needs a JournalPosition, not {type(position).__name__}")
            target = self._normalise(position)
            if target <= self._normalise(self._head):
                return
            tail = JournalPosition(self._active, self._sizes[self._active])
            if target > tail:
                raise ValueError(f"position {position} is beyond the tail {tail} of journal {self.directory}")
            count = self._entries_before(target)
            self._write_head(target)
            nbytes = 0
            for _ in range(count):
                nbytes += self._buffer.popleft().size
            self._head = target
            self._pending_records -= count
            self._pending_bytes -= nbytes
            # The cursor may still name the end of a segment about to go; name it as the start of the next.
            self._cursor = self._normalise(self._cursor)
            for number in [n for n in self._sizes if n < target.segment]:
                self._delete_segment(number)

    def sync(self) -> None:
        """fdatasync what was appended since the last sync, so it survives a power loss too."""
        with self._mutex:
            self._check_usable()
            self._sync_active()

    def close(self) -> None:
        """Sync and release the files and the directory lock. Idempotent."""
        with self._mutex:
            if self._closed:
                return
            try:
                if self._failed is None:
                    self._sync_active()
            finally:
                self._closed = True
                self._release_fds()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- opening and recovery ------------------------------------------------------------------------------------

    def _acquire_lock(self) -> int:
        """flock the directory's lock file: a second writer would interleave entries and corrupt the journal."""
        fd = os.open(self.directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalLocked(f"journal {self.directory} is already open (lock file held)") from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _segment_path(self, number: int) -> Path:
        return self.directory / segment_name(number)

    def _list_segments(self) -> list[int]:
        numbers = []
        for entry in os.scandir(self.directory):
            match = _SEGMENT_NAME.match(entry.name)
            if match is not None:
                numbers.append(int(match.group(1)))
        return sorted(numbers)

    def _read_head(self) -> tuple[JournalPosition | None, str | None]:
        """The committed head, or ``(None, reason)`` if the head file exists but cannot be trusted."""
        try:
            data = (self.directory / HEAD_FILE).read_bytes()
        except FileNotFoundError:
            return None, None
        if len(data) != _HEAD_FILE_BYTES:
            return None, f"head file is {len(data)} bytes, not {_HEAD_FILE_BYTES}"
        magic, segment, offset = _HEAD_BODY.unpack_from(data)
        (crc,) = _U32.unpack_from(data, _HEAD_BODY.size)
        if crc != zlib.crc32(data[: _HEAD_BODY.size]):
            return None, "head file CRC mismatch"
        if magic != _HEAD_MAGIC:
            return None, f"head file magic {magic!r} is not {_HEAD_MAGIC!r}"
        return JournalPosition(segment, offset), None

    def _recover(self) -> None:
        """Establish head, tail and pending counts from the files (rules in the module docstring)."""
        (self.directory / _HEAD_TMP).unlink(missing_ok=True)
        segments = self._list_segments()
        head, distrust = self._read_head()
        consumed_tail = False  # the head lies beyond the valid end of the last segment (power loss)
        first_scan: _Scan | None = None

        if head is not None:
            if head.segment not in segments:
                later = [n for n in segments if n > head.segment]
                raise JournalCorrupt(
                    f"journal {self.directory}: the head {head} names segment {segment_name(head.segment)}, "
                    f"which does not exist"
                    + (f" while later segments do ({len(later)})" if later else "")
                    + "; its pending records are lost"
                )
            is_last = head.segment == segments[-1]
            fd = os.open(self._segment_path(head.segment), os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                scan = _scan(fd, size, 0, head.offset)
                if scan.mark_seen:
                    first_scan = scan
                elif head.offset == size or (head.offset < size and _scan(fd, size, head.offset, head.offset).records):
                    # Damage before the head sits in committed data, which is never read again.
                    _log.warning(
                        "journal %s: committed part of segment %s is damaged at offset %d; ignored",
                        self.directory,
                        segment_name(head.segment),
                        scan.end,
                    )
                    first_scan = _scan(fd, size, head.offset, head.offset)
                elif is_last and head.offset > scan.end and _valid_entry_after(fd, scan.end, size) is None:
                    consumed_tail = True
                    first_scan = scan
                else:
                    distrust = (
                        f"head {head} is not an entry boundary of {segment_name(head.segment)} "
                        f"(valid entries end at {scan.end} of {size} bytes)"
                    )
                    head = None
            finally:
                os.close(fd)

        if head is None:
            if distrust is not None:
                self.head_fallback_reason = distrust
                _log.warning(
                    "journal %s: %s; replaying from the oldest segment (committed records of it will be "
                    "published again)",
                    self.directory,
                    distrust,
                )
            head = JournalPosition(segments[0], 0) if segments else JournalPosition(0, 0)
        else:
            for number in [n for n in segments if n < head.segment]:
                self._segment_path(number).unlink(missing_ok=True)
            segments = [n for n in segments if n >= head.segment]

        for prev, number in pairwise(segments):
            if number != prev + 1:
                raise JournalCorrupt(
                    f"journal {self.directory}: segments {prev + 1}..{number - 1} are missing "
                    f"between {segment_name(prev)} and {segment_name(number)}"
                )

        records = nbytes = 0
        for index, number in enumerate(segments):
            is_last = index == len(segments) - 1
            path = self._segment_path(number)
            fd = os.open(path, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                if number == head.segment and first_scan is not None:
                    scan = first_scan
                else:
                    scan = _scan(fd, size, head.offset if number == head.segment else 0, 0)
                if scan.end < size:
                    if not is_last:
                        raise JournalCorrupt(
                            f"journal {self.directory}: {segment_name(number)} is damaged at offset {scan.end} "
                            f"of {size} and is not the last segment; records after the damage would be lost"
                        )
                    resume = _valid_entry_after(fd, scan.end, size)
                    if resume is not None:
                        raise JournalCorrupt(
                            f"journal {self.directory}: {segment_name(number)} is damaged at offset {scan.end} "
                            f"but valid entries follow at offset {resume}; refusing to drop them"
                        )
                    self._truncate(path, scan.end)
                    self.recovered_torn_bytes += size - scan.end
                    _log.warning(
                        "journal %s: cut a torn tail of %d bytes from %s at offset %d",
                        self.directory,
                        size - scan.end,
                        segment_name(number),
                        scan.end,
                    )
            finally:
                os.close(fd)
            self._sizes[number] = scan.end
            records += scan.records
            nbytes += scan.nbytes

        if consumed_tail:
            # The head consumed data a power loss took back. Appending at the valid end would put new records
            # before the head; start a fresh segment and move the head there instead.
            records = nbytes = 0
            old = head.segment
            head = JournalPosition(old + 1, 0)
            self._create_segment(head.segment)
            self._write_head(head)
            self._delete_segment(old)
        elif not segments:
            self._create_segment(head.segment)

        self._active = max(self._sizes)
        self._write_fd = os.open(self._segment_path(self._active), os.O_WRONLY | os.O_APPEND)
        self._head = head
        self._cursor = head
        self._pending_records = records
        self._pending_bytes = nbytes

    def _truncate(self, path: Path, length: int) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, length)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _create_segment(self, number: int) -> None:
        """Create an empty segment and make its name durable, so a later one can never exist without it."""
        if number > _MAX_SEGMENT_NUMBER:
            raise JournalCorrupt(f"journal {self.directory}: segment numbers exhausted")
        fd = os.open(self._segment_path(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        _fsync_dir(self.directory)
        self._sizes[number] = 0

    # --- appending -----------------------------------------------------------------------------------------------

    def _write_entries(self, entries: list[bytes]) -> None:
        """Write whole entries after the tail, rolling segments; on an I/O error undo the partial write."""
        start_segment = self._active
        start_size = self._sizes[start_segment]
        try:
            chunk: list[bytes] = []
            size = start_size
            for entry in entries:
                if size > 0 and size + len(entry) > self.segment_bytes:
                    if chunk:
                        self._write_active(b"".join(chunk))
                        chunk = []
                    self._roll()
                    size = 0
                chunk.append(entry)
                size += len(entry)
            if chunk:
                self._write_active(b"".join(chunk))
            if monotonic() - self._last_sync >= self.fsync_interval_s:
                self._sync_active()
        except OSError as exc:
            self._undo_append(start_segment, start_size, exc)
            raise

    def _write_active(self, data: bytes) -> None:
        self._dirty = True
        _write_all(self._write_fd, data)
        self._sizes[self._active] += len(data)

    def _roll(self) -> None:
        """Seal the active segment and start the next one.

        The sealed segment is fdatasynced first so that, even after a power loss, a segment never exists while
        its predecessor misses data (which recovery would have to call damage in the middle).
        """
        self._sync_active()
        os.close(self._write_fd)
        self._write_fd = -1
        number = self._active + 1
        self._create_segment(number)
        self._write_fd = os.open(self._segment_path(number), os.O_WRONLY | os.O_APPEND)
        self._active = number

    def _undo_append(self, start_segment: int, start_size: int, cause: OSError) -> None:
        """Restore the tail as it was before a failed append, keeping append all-or-nothing.

        Segments the append created are found by listing the directory, which also catches one whose creation
        got as far as the file but failed later.
        """
        try:
            if self._write_fd >= 0:
                os.close(self._write_fd)
                self._write_fd = -1
            for number in self._list_segments():
                if number > start_segment:
                    self._segment_path(number).unlink(missing_ok=True)
                    self._sizes.pop(number, None)
            self._active = start_segment
            self._write_fd = os.open(self._segment_path(start_segment), os.O_WRONLY | os.O_APPEND)
            os.ftruncate(self._write_fd, start_size)
            self._sizes[start_segment] = start_size
        except OSError as exc:
            self._failed = (
                f"an append failed ({cause}) and undoing its partial write failed too ({exc}); "
                f"reopen the journal to recover"
            )
            _log.error("journal %s: %s", self.directory, self._failed)

    def _sync_active(self) -> None:
        if self._dirty and self._write_fd >= 0:
            os.fdatasync(self._write_fd)
            self._dirty = False
        self._last_sync = monotonic()

    # --- reading and committing ----------------------------------------------------------------------------------

    def _normalise(self, position: JournalPosition) -> JournalPosition:
        """The end of a sealed segment is the start of the next one; prefer the latter (it frees the former)."""
        while position.segment < self._active and position.offset == self._sizes.get(position.segment):
            position = JournalPosition(position.segment + 1, 0)
        return position

    def _reader(self, segment: int) -> int:
        if self._read_segment != segment:
            if self._read_fd >= 0:
                os.close(self._read_fd)
                self._read_fd = -1
            self._read_fd = os.open(self._segment_path(segment), os.O_RDONLY)
            self._read_segment = segment
        return self._read_fd

    def _corrupt(self, segment: int, offset: int, what: str) -> JournalCorrupt:
        return JournalCorrupt(
            f"journal {self.directory}: {segment_name(segment)} offset {offset}: {what} "
            f"(it was valid when the journal was opened or written)"
        )

    def _fill(self, want: int) -> None:
        """Decode entries after the read cursor into the buffer until it holds ``want`` or the tail is reached."""
        while len(self._buffer) < want:
            segment, off = self._cursor.segment, self._cursor.offset
            bound = self._sizes[segment]
            if off >= bound:
                if segment >= self._active:
                    return
                self._cursor = JournalPosition(segment + 1, 0)
                continue
            fd = self._reader(segment)
            data = _pread_exact(fd, min(bound - off, _READ_CHUNK), off)
            pos = 0
            while pos + ENTRY_HEADER_BYTES <= len(data):
                magic, length, crc = _ENTRY_HEADER.unpack_from(data, pos)
                if magic != ENTRY_MAGIC:
                    raise self._corrupt(segment, off + pos, f"bad magic {magic:#x}")
                total = ENTRY_HEADER_BYTES + length
                if pos + total > len(data):
                    if pos > 0:
                        break  # the rest of this entry comes with the next chunk
                    if off + total > bound:
                        raise self._corrupt(segment, off, f"entry of {total} bytes runs past the end {bound}")
                    data = _pread_exact(fd, total, off)  # one entry larger than a chunk
                    if len(data) < total:
                        raise self._corrupt(segment, off, "entry shorter than its length")
                body = pos + ENTRY_HEADER_BYTES
                if zlib.crc32(memoryview(data)[body : pos + total]) != crc:
                    raise self._corrupt(segment, off + pos, "CRC mismatch")
                try:
                    record = _decode_payload(data, body, pos + total)
                except ValueError as exc:
                    raise self._corrupt(segment, off + pos, str(exc)) from None
                pos += total
                end = JournalPosition(segment, off + pos)
                self._buffer.append(_Buffered(record, end, total))
            if pos == 0:
                raise self._corrupt(segment, off, f"{bound - off} bytes before the end are not a whole entry")
            self._cursor = JournalPosition(segment, off + pos)

    def _entries_before(self, target: JournalPosition) -> int:
        """How many buffered entries end at or before ``target``; ValueError unless one ends exactly there."""
        index = 0
        while True:
            for item in islice(self._buffer, index, None):
                index += 1
                end = self._normalise(item.end)
                if end == target:
                    return index
                if end > target:
                    raise ValueError(f"position {target} is not an entry boundary of journal {self.directory}")
            before = len(self._buffer)
            self._fill(before + 1)
            if len(self._buffer) == before:
                raise ValueError(f"position {target} is beyond the entries of journal {self.directory}")

    def _write_head(self, position: JournalPosition) -> None:
        """Replace the head file atomically: temp file, fsync, rename, fsync of the directory."""
        body = _HEAD_BODY.pack(_HEAD_MAGIC, position.segment, position.offset)
        data = body + _U32.pack(zlib.crc32(body))
        tmp = self.directory / _HEAD_TMP
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / HEAD_FILE)
        _fsync_dir(self.directory)

    def _delete_segment(self, number: int) -> None:
        """Delete a segment the head has left. Not fsynced: a leftover is deleted again on the next open."""
        if self._read_segment == number:
            os.close(self._read_fd)
            self._read_fd = -1
            self._read_segment = -1
        self._segment_path(number).unlink(missing_ok=True)
        self._sizes.pop(number, None)

    # --- state -----------------------------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise ValueError(f"journal {self.directory} is closed")
        if self._failed is not None:
            raise RuntimeError(f"journal {self.directory} is unusable: {self._failed}")

    def _release_fds(self) -> None:
        for name in ("_write_fd", "_read_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                try:
                    os.close(fd)
                except OSError as exc:
                    _log.warning("journal %s: closing a file failed: %s", self.directory, exc)
        self._read_segment = -1
