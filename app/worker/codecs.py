"""Avro single-object encoding as Faust codecs: ``avro-<Record>`` for every schema in ``schemas/``.

Faust then writes topic values and table changelogs in the same format as everything else in the
system (no JSON or pickle on the wire). Decoding accepts any known writer schema of the record.
"""

from __future__ import annotations

from typing import Any

from faust.serializers import codecs

from app.records import RecordCodec, default_codec


class AvroRecordCodec(codecs.Codec):
    def __init__(self, record: str, codec: RecordCodec) -> None:
        super().__init__(record=record)
        self.record = record
        self.codec = codec

    def _dumps(self, obj: Any) -> bytes:
        return self.codec.encode(self.record, obj)

    def _loads(self, s: bytes) -> Any:
        name, value = self.codec.decode(s)
        if name != self.record:
            raise ValueError(f"expected a {self.record} record, got a {name}")
        return value


def codec_name(record: str) -> str:
    return f"avro-{record}"


def register_avro_codecs() -> None:
    """Register one codec per record (idempotent)."""
    codec = default_codec()
    for record in codec.names():
        codecs.register(codec_name(record), AvroRecordCodec(record, codec))
