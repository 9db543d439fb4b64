"""The JSONL archive: append-only files whose committed length and Kafka offsets are kept together.

The model is Kafka Connect's file sinks: the offsets live with the data, not only in the consumer group.
A batch is appended to its files, every file is fsynced, and only then is the commit record rewritten
(write to a temporary file, fsync, rename, fsync the directory). The commit record holds, for every file
the archive ever wrote, its committed length, and for every input partition the next offset to write.

So after a crash at any point:

- bytes past a file's committed length belong to a batch that never committed: :meth:`open` truncates
  them (the batch will be delivered again, since its offsets were not committed either);
- a record below a partition's committed offset was already written: :meth:`JsonlArchive.is_written`
  says so and the caller skips it, whatever the consumer group's own offsets say.

The commit record also holds the natural-key marks of the lines written (``app.sink.render.Dedupe``), so
a record that is in Kafka twice (a bridge that republished after a crash) gets one line, across restarts.

A file a batch is about to create is first registered at length 0 in the commit record, so recovery
knows every file it may have touched; a file it never registered is left alone. One archive (one sink
process) per data root.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

COMMIT_FILE = ".sink-commit.json"


class ArchiveError(RuntimeError):
    """The archive cannot be opened as it is (a commit record it cannot read, a file shorter than committed)."""


@dataclass
class Recovery:
    truncated: dict[str, int] = field(default_factory=dict)  # file -> bytes cut off


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class JsonlArchive:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.lengths: dict[str, int] = {}  # relative path -> committed length
        self.offsets: dict[str, int] = {}  # "topic:partition" -> next offset to write
        self.marks: dict[str, list[Any]] = {}  # natural-key marks of what was written (see app.sink.render)

    # ------------------------------------------------------------------------------------------ state

    def open(self) -> Recovery:
        """Read the commit record and cut every file back to its committed length."""
        self.root.mkdir(parents=True, exist_ok=True)
        commit = self.root / COMMIT_FILE
        recovery = Recovery()
        if commit.exists():
            try:
                doc = orjson.loads(commit.read_bytes())
                self.lengths = {str(k): int(v) for k, v in doc["lengths"].items()}
                self.offsets = {str(k): int(v) for k, v in doc["offsets"].items()}
                self.marks = dict(doc.get("marks", {}))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise ArchiveError(f"{commit}: unreadable commit record ({exc}); refusing to guess") from exc
        for rel, length in self.lengths.items():
            path = self.root / rel
            size = path.stat().st_size if path.exists() else 0
            if size < length:
                raise ArchiveError(f"{path} has {size} bytes but {length} were committed: it was cut outside the sink")
            if size > length:
                with open(path, "r+b") as f:
                    f.truncate(length)
                    os.fsync(f.fileno())
                recovery.truncated[rel] = size - length
                log.warning("archive: cut %d uncommitted bytes from %s", size - length, path)
        return recovery

    def is_written(self, topic: str, partition: int, offset: int) -> bool:
        return offset < self.offsets.get(f"{topic}:{partition}", 0)

    def next_offset(self, topic: str, partition: int) -> int | None:
        return self.offsets.get(f"{topic}:{partition}")

    # ------------------------------------------------------------------------------------------ writes

    def write(
        self,
        lines: Mapping[str, Sequence[bytes]],
        offsets: Mapping[tuple[str, int], int],
        marks: Mapping[str, list[Any]] | None = None,
    ) -> None:
        """Append ``lines`` (relative path -> lines) and commit them with ``offsets`` ((topic, partition) ->
        next offset) and, when given, the new ``marks`` (replacing the old). On any error the files are cut
        back to their committed lengths and the error is raised: the caller retries the same batch."""
        new = [rel for rel in lines if rel not in self.lengths]
        if new:
            for rel in new:
                (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            self._commit({**self.lengths, **{rel: 0 for rel in new}}, self.offsets, self.marks)
            self.lengths.update({rel: 0 for rel in new})
        written: dict[str, int] = {}
        try:
            for rel, chunk in lines.items():
                data = b"".join(chunk)
                path = self.root / rel
                with open(path, "ab") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                written[rel] = len(data)
            for rel in new:
                _fsync_dir((self.root / rel).parent)
            lengths = {**self.lengths, **{rel: self.lengths[rel] + n for rel, n in written.items()}}
            merged = dict(self.offsets)
            for (topic, partition), nxt in offsets.items():
                key = f"{topic}:{partition}"
                merged[key] = max(merged.get(key, 0), nxt)
            new_marks = self.marks if marks is None else dict(marks)
            self._commit(lengths, merged, new_marks)
        except BaseException:
            self._roll_back(lines)
            raise
        self.lengths, self.offsets, self.marks = lengths, merged, new_marks

    def _roll_back(self, touched: Mapping[str, Sequence[bytes]]) -> None:
        for rel in touched:
            path = self.root / rel
            try:
                with open(path, "r+b") as f:
                    f.truncate(self.lengths[rel])
            except OSError as exc:  # the batch's own error is raised; open() cuts the file at the next start
                log.error("archive: could not cut %s back to %d bytes: %s", path, self.lengths[rel], exc)

    def _commit(self, lengths: Mapping[str, int], offsets: Mapping[str, int], marks: Mapping[str, Any]) -> None:
        tmp = self.root / (COMMIT_FILE + ".tmp")
        with open(tmp, "wb") as f:
            doc = {"lengths": lengths, "offsets": offsets, "marks": marks}
            f.write(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / COMMIT_FILE)
        _fsync_dir(self.root)
