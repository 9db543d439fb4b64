"""Avro single-object encoding of the project's records, with fastavro on the hot path.

Every Kafka value is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's
Parsing Canonical Form + the Avro binary datum (Avro specification, "Single-object encoding"). A reader finds
the writer schema by that fingerprint among ``schemas/*.avsc`` (the current versions) and
``schemas/history/*.avsc`` (every older version still readable) and resolves it to the *current* schema of the
same record, so old records come out with the defaults of fields added since.

Timestamps (``logicalType: timestamp-micros``) travel as plain ``int`` microseconds since the epoch (UTC) in
both directions; the logical type only documents them (it is not part of the fingerprint either).

Encoding is strict: a value must carry exactly the schema's fields (a missing field with a default takes the
default), and every top-level field must have the schema's type. fastavro alone would silently truncate a
float into a ``long``, write an out-of-range ``int`` or split a string given for an array into characters.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from io import BytesIO
from pathlib import Path
from typing import Any, Final

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as _schema_fingerprint
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import ValidationError as _FastavroValidationError
from fastavro.validation import validate as _fastavro_validate

from app.config import PROJECT_ROOT

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
]

MARKER: Final = b"\xc3\x01"
FINGERPRINT_SIZE: Final = 8
HEADER_SIZE: Final = len(MARKER) + FINGERPRINT_SIZE
DEFAULT_SCHEMA_DIR: Final = PROJECT_ROOT / "schemas"
HISTORY_DIR_NAME: Final = "history"

_INT_MIN: Final = -(2**31)
_INT_MAX: Final = 2**31 - 1
_MAX_DETAIL: Final = 300
# Attributes that only annotate a schema; removed from the compiled copies fastavro works with (the fingerprint
# is always taken from the schema exactly as written). Without "logicalType", timestamps stay ints.
_ANNOTATIONS: Final = frozenset({"doc", "logicalType", "aliases", "order"})


class CodecError(Exception):
    """Base of every error raised by the record codec."""


class SchemaLoadError(CodecError):
    """A schema file is unreadable, invalid, misnamed, or an old version the current one cannot read."""


class UnknownSchemaError(CodecError):
    """``encode`` or ``fingerprint`` was asked for a record name that has no schema."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        super().__init__(f"no schema named {name!r}; known: {', '.join(known)}")
        self.name = name


class UnknownFingerprintError(CodecError):
    """The header names a writer schema that is in neither ``schemas/`` nor ``schemas/history/``."""

    def __init__(self, fingerprint: bytes) -> None:
        super().__init__(
            f"unknown writer schema fingerprint {fingerprint.hex()} (CRC-64-AVRO, little-endian); "
            "is the schema (or its old version under schemas/history/) missing?"
        )
        self.fingerprint = fingerprint


class NotSingleObjectError(CodecError):
    """The bytes do not start with the Avro single-object marker ``C3 01`` plus an 8-byte fingerprint."""


class CorruptRecordError(CodecError):
    """The header is valid but the datum after it does not decode exactly (bad bytes, truncated, or trailing)."""

    def __init__(self, message: str, record: str) -> None:
        super().__init__(message)
        self.record = record


class RecordValidationError(CodecError):
    """A value given to ``encode`` does not match the record's schema."""

    def __init__(self, message: str, record: str, field: str | None = None) -> None:
        super().__init__(message)
        self.record = record
        self.field = field


def _short(text: object) -> str:
    shown = repr(text)
    return shown if len(shown) <= _MAX_DETAIL else shown[: _MAX_DETAIL - 3] + "..."


def _strip_annotations(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_annotations(v) for k, v in schema.items() if k not in _ANNOTATIONS}
    if isinstance(schema, list):
        return [_strip_annotations(v) for v in schema]
    return schema


def _compute_fingerprint(schema: dict[str, Any]) -> bytes:
    canonical = to_parsing_canonical_form(copy.deepcopy(schema))
    return bytes.fromhex(_schema_fingerprint(canonical, "CRC-64-AVRO"))


def _primitive(field_type: Any) -> str | None:
    """The primitive or container kind of a non-union field type, else None."""
    if isinstance(field_type, str):
        return field_type
    if isinstance(field_type, dict):
        kind = field_type.get("type")
        if isinstance(kind, str):
            return kind
    return None


# A check takes the value's __getitem__ and the field names it covers; it returns True when all are fine.
_Check = Callable[[Callable[[str], Any], tuple[str, ...]], bool]


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, float) or _is_integer(value)


_INT_TYPES: Final = frozenset({int})
_NUMBER_TYPES: Final = frozenset({float, int})


def _all_int(get: Callable[[str], Any], names: tuple[str, ...]) -> bool:
    values = list(map(get, names))
    return set(map(type, values)) <= _INT_TYPES or all(map(_is_integer, values))


def _all_int32(get: Callable[[str], Any], names: tuple[str, ...]) -> bool:
    values = list(map(get, names))
    if not (set(map(type, values)) <= _INT_TYPES or all(map(_is_integer, values))):
        return False
    return bool(min(values) >= _INT_MIN and max(values) <= _INT_MAX)


def _all_number(get: Callable[[str], Any], names: tuple[str, ...]) -> bool:
    values = list(map(get, names))
    return set(map(type, values)) <= _NUMBER_TYPES or all(map(_is_number, values))


def _all_bool(get: Callable[[str], Any], names: tuple[str, ...]) -> bool:
    return {bool} == set(map(type, map(get, names)))


def _all_sequence(get: Callable[[str], Any], names: tuple[str, ...]) -> bool:
    values = list(map(get, names))
    return set(map(type, values)) <= {list, tuple} or all(isinstance(v, list | tuple) for v in values)


def _all_mapping(get: Callable[[str], Any], names: tuple[str, ...]) -> bool:
    values = list(map(get, names))
    return {dict} == set(map(type, values)) or all(isinstance(v, Mapping) for v in values)


_CHECKS: Final[dict[str, tuple[_Check, str]]] = {
    "long": (_all_int, "an int (64-bit)"),
    "int": (_all_int32, "an int in the 32-bit range"),
    "double": (_all_number, "a float"),
    "float": (_all_number, "a float"),
    "boolean": (_all_bool, "a bool"),
    "array": (_all_sequence, "a list or tuple"),
    "map": (_all_mapping, "a mapping"),
}


class _Version:
    """One schema version: its fingerprint, its compiled (annotation-free) fastavro schema, its fields."""

    __slots__ = (
        "checks",
        "defaults",
        "field_names",
        "field_order",
        "fingerprint",
        "fullname",
        "header",
        "name",
        "original",
        "parsed",
        "path",
    )

    def __init__(self, original: dict[str, Any], path: Path) -> None:
        self.path = path
        self.original = original
        name = original.get("name")
        if original.get("type") != "record" or not isinstance(name, str) or "." in name:
            raise SchemaLoadError(f"{path}: must be one Avro record with a short 'name' (and a 'namespace')")
        self.name: str = name
        namespace = original.get("namespace")
        self.fullname = f"{namespace}.{name}" if namespace else name
        try:
            self.fingerprint = _compute_fingerprint(original)
            self.parsed: Any = parse_schema(_strip_annotations(original))
        except Exception as exc:
            raise SchemaLoadError(f"{path}: invalid Avro schema: {exc}") from exc
        self.header = MARKER + self.fingerprint
        fields: list[dict[str, Any]] = original["fields"]
        self.field_order = tuple(str(f["name"]) for f in fields)
        self.field_names = frozenset(self.field_order)
        self.defaults = {str(f["name"]): f["default"] for f in fields if "default" in f}
        grouped: dict[str, list[str]] = {}
        for f in fields:
            kind = _primitive(f["type"])
            if kind in _CHECKS:
                grouped.setdefault(kind, []).append(str(f["name"]))
        self.checks = tuple((_CHECKS[kind][0], tuple(names), kind) for kind, names in grouped.items())

    # -- encoding -------------------------------------------------------------------------------------------

    def encode(self, value: Mapping[str, Any]) -> bytes:
        if type(value) is not dict or value.keys() != self.field_names:
            value = self._complete(value)
        get = value.__getitem__
        for check, names, kind in self.checks:
            if not check(get, names):
                self._raise_type_error(value, names, kind)
        out = BytesIO()
        out.write(self.header)
        try:
            schemaless_writer(out, self.parsed, value)
        except (TypeError, ValueError, OverflowError, AttributeError, KeyError, IndexError) as exc:
            raise self._explain(value, exc) from exc
        return out.getvalue()

    def _complete(self, value: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise RecordValidationError(
                f"{self.name}: expected a mapping of field names to values, got {type(value).__name__}",
                self.name,
            )
        extra = [k for k in value if k not in self.field_names]
        if extra:
            shown = ", ".join(sorted(repr(k) for k in extra))
            raise RecordValidationError(
                f"{self.name}: unknown field(s) {shown}; the schema has {', '.join(self.field_order)}",
                self.name,
                str(extra[0]),
            )
        completed = dict(value)
        for name in self.field_order:
            if name not in completed:
                if name not in self.defaults:
                    raise RecordValidationError(
                        f"{self.name}.{name}: required field is missing (it has no default)", self.name, name
                    )
                completed[name] = copy.deepcopy(self.defaults[name])
        return completed

    def _raise_type_error(self, value: Mapping[str, Any], names: tuple[str, ...], kind: str) -> None:
        check, wanted = _CHECKS[kind]
        for name in names:
            if not check(value.__getitem__, (name,)):
                got = value[name]
                raise RecordValidationError(
                    f"{self.name}.{name}: expected {wanted} (Avro {kind}), got {type(got).__name__} {_short(got)}",
                    self.name,
                    name,
                )
        raise AssertionError("a failed type check names no field")  # pragma: no cover

    def _explain(self, value: Mapping[str, Any], exc: Exception) -> RecordValidationError:
        try:
            _fastavro_validate(value, self.parsed, raise_errors=True)
        except _FastavroValidationError as err:
            problems = [str(e) for e in err.errors] or [str(err)]
            field: str | None = None
            if err.errors:
                path = str(getattr(err.errors[0], "field", "") or "")
                prefix = self.fullname + "."
                field = path[len(prefix) :].split(".")[0] if path.startswith(prefix) else None
            detail = "; ".join(p if len(p) <= _MAX_DETAIL else p[: _MAX_DETAIL - 3] + "..." for p in problems[:3])
            return RecordValidationError(f"{self.name}: {detail}", self.name, field)
        field = _find_unencodable(value)
        where = f"{self.name}.{field}" if field else self.name
        return RecordValidationError(f"{where}: value cannot be encoded: {exc}", self.name, field)


def _find_unencodable(value: Mapping[str, Any]) -> str | None:
    """The first top-level field holding a string that is not valid Unicode (e.g. a lone surrogate)."""

    def bad(item: Any) -> bool:
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
            return False
        if isinstance(item, Mapping):
            return any(bad(k) or bad(v) for k, v in item.items())
        if isinstance(item, list | tuple):
            return any(bad(v) for v in item)
        return False

    for name, item in value.items():
        if bad(item):
            return str(name)
    return None


class _Decoder:
    __slots__ = ("name", "order", "reader", "writer")

    def __init__(self, name: str, writer: Any, reader: _Version | None) -> None:
        self.name = name
        self.writer = writer
        # Both None when the writer is the current schema (no resolution needed).
        self.reader = reader.parsed if reader is not None else None
        self.order = reader.field_order if reader is not None else None


class RecordCodec:
    """Encodes and decodes the records of ``schemas/`` in Avro single-object encoding.

    Loads ``<schema_dir>/*.avsc`` (current versions, one record per file, file stem = record name) and
    ``<schema_dir>/history/<Name>.<anything>.avsc`` (old versions, decode only). Immutable after construction
    and safe to share between threads and coroutines.
    """

    def __init__(self, schema_dir: Path | str | None = None) -> None:
        self.schema_dir = Path(schema_dir) if schema_dir is not None else DEFAULT_SCHEMA_DIR
        if not self.schema_dir.is_dir():
            raise SchemaLoadError(f"schema directory {self.schema_dir} does not exist")
        current: dict[str, _Version] = {}
        for path in sorted(self.schema_dir.glob("*.avsc")):
            version = _Version(_load_json(path), path)
            if version.name != path.stem:
                raise SchemaLoadError(f"{path}: file must be named after its record ({version.name}.avsc)")
            current[version.name] = version
        if not current:
            raise SchemaLoadError(f"no *.avsc schema in {self.schema_dir}")

        self._current = current
        self._names = tuple(sorted(current))
        self._by_name: dict[str, _Version] = {}
        for version in current.values():
            self._by_name[version.name] = version
            self._by_name[version.fullname] = version

        decoders: dict[bytes, _Decoder] = {}
        for version in current.values():
            other = decoders.get(version.fingerprint)
            if other is not None:
                raise SchemaLoadError(f"{version.path}: same fingerprint as schema {other.name}")
            decoders[version.fingerprint] = _Decoder(version.name, version.parsed, None)
        history_dir = self.schema_dir / HISTORY_DIR_NAME
        for path in sorted(history_dir.glob("*.avsc")) if history_dir.is_dir() else ():
            old = _Version(_load_json(path), path)
            if path.name.split(".", 1)[0] != old.name:
                raise SchemaLoadError(f"{path}: file must be named <record>.<version>.avsc ({old.name}.v1.avsc)")
            now = current.get(old.name)
            if now is None or now.fullname != old.fullname:
                raise SchemaLoadError(f"{path}: old version of {old.fullname}, which has no current schema")
            if old.fingerprint in decoders:
                continue  # an exact copy of a version already known (e.g. the current one)
            missing = [n for n in now.field_order if n not in old.field_names and n not in now.defaults]
            if missing:
                raise SchemaLoadError(
                    f"{now.path}: field(s) {', '.join(missing)} are not in the old version {path.name} and have "
                    "no default, so records written with it could not be read; give every added field a default"
                )
            decoders[old.fingerprint] = _Decoder(old.name, old.parsed, now)
        self._decoders = decoders

    # -- public API -----------------------------------------------------------------------------------------

    def names(self) -> tuple[str, ...]:
        """The short names of the current records, sorted (e.g. ``"RawTick"``)."""
        return self._names

    def fingerprint(self, name: str) -> bytes:
        """The 8-byte CRC-64-AVRO fingerprint (little-endian) of the current schema of ``name``."""
        return self._version(name).fingerprint

    def schema(self, name: str) -> dict[str, Any]:
        """A copy of the current schema of ``name`` exactly as written in its ``.avsc`` file."""
        return copy.deepcopy(self._version(name).original)

    def known_fingerprints(self) -> dict[bytes, str]:
        """Every readable writer fingerprint (current and historical) and the record name it decodes to."""
        return {fp: dec.name for fp, dec in self._decoders.items()}

    def encode(self, name: str, value: Mapping[str, Any]) -> bytes:
        """Header + Avro binary datum of ``value`` written with the current schema of ``name``.

        ``name`` is the short (``RawTick``) or full (``kr.observer.RawTick``) record name. Raises
        :class:`UnknownSchemaError` or :class:`RecordValidationError`.
        """
        try:
            version = self._by_name[name]
        except KeyError:
            raise UnknownSchemaError(name, self._names) from None
        return version.encode(value)

    def decode(self, data: bytes | bytearray | memoryview) -> tuple[str, dict[str, Any]]:
        """The record's short name and its value in the current schema of that record.

        Raises :class:`NotSingleObjectError`, :class:`UnknownFingerprintError` or :class:`CorruptRecordError`.
        """
        size = len(data)
        if size < HEADER_SIZE or data[:2] != MARKER:
            head = bytes(data[:HEADER_SIZE]).hex()
            raise NotSingleObjectError(
                f"not an Avro single-object record ({size} bytes, starting {head or 'with nothing'}); "
                f"expected marker c301 and an 8-byte fingerprint"
            )
        fingerprint = bytes(data[2:HEADER_SIZE])
        decoder = self._decoders.get(fingerprint)
        if decoder is None:
            raise UnknownFingerprintError(fingerprint)
        stream = BytesIO(data)
        stream.seek(HEADER_SIZE)
        try:
            record = schemaless_reader(stream, decoder.writer, decoder.reader)
        except Exception as exc:
            raise CorruptRecordError(
                f"{decoder.name} (fingerprint {fingerprint.hex()}): datum does not decode: {type(exc).__name__}: {exc}",
                decoder.name,
            ) from exc
        end = stream.tell()
        if end != size:
            raise CorruptRecordError(
                f"{decoder.name} (fingerprint {fingerprint.hex()}): {size - end} trailing byte(s) after the datum",
                decoder.name,
            )
        if not isinstance(record, dict):  # pragma: no cover - every schema is a record
            raise CorruptRecordError(f"{decoder.name}: decoded to {type(record).__name__}", decoder.name)
        if decoder.order is not None:  # an old version: fields in the current schema's order
            record = {name: record[name] for name in decoder.order}
        return decoder.name, record

    def _version(self, name: str) -> _Version:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownSchemaError(name, self._names) from None


def _load_json(path: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaLoadError(f"{path}: cannot read schema: {exc}") from exc
    if not isinstance(loaded, dict):
        raise SchemaLoadError(f"{path}: must hold one JSON object (one Avro record)")
    return loaded
