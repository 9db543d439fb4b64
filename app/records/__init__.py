"""The project's Avro records: schemas in ``schemas/``, single-object encoding via :class:`RecordCodec`."""

from __future__ import annotations

from functools import lru_cache

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
    "default_codec",
]


@lru_cache(maxsize=1)
def default_codec() -> RecordCodec:
    """The codec for the project's own ``schemas/`` directory, loaded once per process."""
    return RecordCodec()
