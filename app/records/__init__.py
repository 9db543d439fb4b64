"""The project's Avro records: schemas in ``schemas/``, single-object encoding via :class:`RecordCodec`."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from app.records.codec import (
    DEFAULT_SCHEMA_DIR,
    HEADER_SIZE,
    MARKER,
    CodecError,
    CorruptRecordError,
    NotSingleObjectError,
    RecordCodec,
    RecordValidationError,
    SchemaLoadError,
    UnknownFingerprintError,
    UnknownSchemaError,
)

__all__ = [
    "DEFAULT_SCHEMA_DIR",
    "HEADER_SIZE",
    "MARKER",
    "CodecError",
    "CorruptRecordError",
    "NotSingleObjectError",
    "RecordCodec",
    "RecordValidationError",
    "SchemaLoadError",
    "UnknownFingerprintError",
    "UnknownSchemaError",
    "dead_letter_record",
    "default_codec",
]


@lru_cache(maxsize=1)
def default_codec() -> RecordCodec:
    """The codec for the project's own ``schemas/`` directory, loaded once per process."""
    return RecordCodec()


def dead_letter_record(
    stage: str,
    reason: str,
    detail: str,
    payload: bytes,
    received_at_us: int,
    *,
    source: tuple[str, int, int] | None = None,
    session_id: str | None = None,
    frame_seq: int | None = None,
) -> dict[str, Any]:
    """A ``DeadLetter`` value; ``source`` is the (topic, partition, offset) the payload was read from."""
    topic, partition, offset = source if source is not None else (None, None, None)
    return {
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "payload": payload,
        "received_at_us": received_at_us,
        "source_topic": topic,
        "source_partition": partition,
        "source_offset": offset,
        "session_id": session_id,
        "frame_seq": frame_seq,
    }
