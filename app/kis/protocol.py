"""The KIS real-time WebSocket protocol as pure functions over strings: no I/O, no clocks, no state.

Every message the server sends is one of three things:

- a JSON control reply to a subscribe/unsubscribe request (``{"header": ..., "body": {"rt_cd", "msg_cd",
  "msg1", "output": {"iv", "key"}}}``), keyed on ``msg_cd`` (never on the ``msg1`` wording);
- a PINGPONG keep-alive (``{"header": {"tr_id": "PINGPONG", "datetime": ...}}``) the client must echo;
- a data frame ``flag|tr_id|count|payload`` whose payload holds ``count`` records of W fields each, all
  ``^``-separated with no record separator, so W = fields / count.

Anything else raises :class:`FrameError` with a short machine ``reason`` (a metric label and the dead
letter's reason) and a human ``detail``. The renderers at the bottom produce the exact server messages;
the simulator speaks through them and the tests round-trip through both directions.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import orjson

TR_TRADE = "H0STCNT0"
PINGPONG = "PINGPONG"

# H0STCNT0 record layout, documented order (46 fields). KIS may append fields; they are kept, never cut.
H0STCNT0_FIELDS: tuple[str, ...] = (
    "MKSC_SHRN_ISCD",
    "STCK_CNTG_HOUR",
    "STCK_PRPR",
    "PRDY_VRSS_SIGN",
    "PRDY_VRSS",
    "PRDY_CTRT",
    "WGHN_AVRG_STCK_PRC",
    "STCK_OPRC",
    "STCK_HGPR",
    "STCK_LWPR",
    "ASKP1",
    "BIDP1",
    "CNTG_VOL",
    "ACML_VOL",
    "ACML_TR_PBMN",
    "SELN_CNTG_CSNU",
    "SHNU_CNTG_CSNU",
    "NTBY_CNTG_CSNU",
    "CTTR",
    "SELN_CNTG_SMTN",
    "SHNU_CNTG_SMTN",
    "CCLD_DVSN",
    "SHNU_RATE",
    "PRDY_VOL_VRSS_ACML_VOL_RATE",
    "OPRC_HOUR",
    "OPRC_VRSS_PRPR_SIGN",
    "OPRC_VRSS_PRPR",
    "HGPR_HOUR",
    "HGPR_VRSS_PRPR_SIGN",
    "HGPR_VRSS_PRPR",
    "LWPR_HOUR",
    "LWPR_VRSS_PRPR_SIGN",
    "LWPR_VRSS_PRPR",
    "BSOP_DATE",
    "NEW_MKOP_CLS_CODE",
    "TRHT_YN",
    "ASKP_RSQN1",
    "BIDP_RSQN1",
    "TOTAL_ASKP_RSQN",
    "TOTAL_BIDP_RSQN",
    "VOL_TNRT",
    "PRDY_SMNS_HOUR_ACML_VOL",
    "PRDY_SMNS_HOUR_ACML_VOL_RATE",
    "HOUR_CLS_CODE",
    "MRKT_TRTM_CLS_CODE",
    "VI_STND_PRC",
)
H0STCNT0_WIDTH = len(H0STCNT0_FIELDS)
FIELD_INDEX: dict[str, int] = {name: i for i, name in enumerate(H0STCNT0_FIELDS)}

# Data frames of these TRs are accepted; anything else is an unknown TR (dead-lettered, not guessed at).
KNOWN_DATA_TRS: dict[str, int] = {TR_TRADE: H0STCNT0_WIDTH}

MAX_RECORDS_PER_FRAME = 999  # the count field is three digits


class FrameError(Exception):
    """A message that cannot be understood. ``reason`` is a short code, ``detail`` says what was wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Outcome(StrEnum):
    """What a control reply means for the subscription it answers (the slot manager acts on this)."""

    SUCCESS = "success"
    ALREADY_SUBSCRIBED = "already_subscribed"
    UNSUBSCRIBED = "unsubscribed"
    NOT_FOUND = "not_found"
    MAX_SUBSCRIBE_OVER = "max_subscribe_over"
    INVALID_APPROVAL = "invalid_approval"
    APPKEY_IN_USE = "appkey_in_use"
    ERROR = "error"


# REST paths and TR ids of the KIS endpoints the client calls and the simulator serves.
PATH_APPROVAL = "/oauth2/Approval"
PATH_TOKEN = "/oauth2/tokenP"
PATH_REVOKE = "/oauth2/revokeP"
PATH_INQUIRE_PRICE = "/uapi/domestic-stock/v1/quotations/inquire-price"
PATH_VOLUME_RANK = "/uapi/domestic-stock/v1/quotations/volume-rank"
PATH_MULTI_PRICE = "/uapi/domestic-stock/v1/quotations/intstock-multprice"
TR_INQUIRE_PRICE = "FHKST01010100"
TR_VOLUME_RANK = "FHPST01710000"
TR_MULTI_PRICE = "FHKST11300006"
MULTI_PRICE_MAX_SYMBOLS = 30  # 관심종목(멀티종목) 시세조회 takes FID_..._1 to FID_..._30


# msg_cd -> outcome. Key on msg_cd: msg1 wording differs between KIS's own lists and live captures.
_OUTCOME_BY_MSG_CD: dict[str, Outcome] = {
    "OPSP0000": Outcome.SUCCESS,
    "OPSP0001": Outcome.UNSUBSCRIBED,
    "OPSP0002": Outcome.ALREADY_SUBSCRIBED,
    "OPSP0003": Outcome.NOT_FOUND,
    "OPSP0008": Outcome.MAX_SUBSCRIBE_OVER,
    "OPSP0011": Outcome.INVALID_APPROVAL,
    "OPSP8996": Outcome.APPKEY_IN_USE,
}

# The exact replies a KIS server gives, for the renderers (rt_cd, msg1).
CONTROL_MESSAGES: dict[str, tuple[str, str]] = {
    "OPSP0000": ("0", "SUBSCRIBE SUCCESS"),
    "OPSP0001": ("0", "UNSUBSCRIBE SUCCESS"),
    "OPSP0002": ("1", "ALREADY IN SUBSCRIBE"),
    "OPSP0003": ("1", "UNSUBSCRIBE ERROR(not found!)"),
    "OPSP0007": ("1", "SUBSCRIBE INTERNAL ERROR"),
    "OPSP0008": ("1", "MAX SUBSCRIBE OVER"),
    "OPSP0011": ("1", "invalid approval : NOT FOUND"),
    "OPSP8991": ("1", "SUBSCRIBE ERROR : invalid tr_id"),
    "OPSP8992": ("1", "SUBSCRIBE ERROR : invalid tr_key"),
    "OPSP8996": ("9", "ALREADY IN USE appkey"),
    "OPSP8997": ("1", "JSON PARSING ERROR : invalid tr_type"),
    "OPSP8998": ("1", "JSON PARSING ERROR : invalid custtype"),
    "OPSP9991": ("1", "JSON PARSING ERROR : input not found"),
    "OPSP9992": ("1", "JSON PARSING ERROR : body not found"),
    "OPSP9997": ("1", "JSON PARSING ERROR : custtype not found"),
    "OPSP9998": ("1", "JSON PARSING ERROR : header not found"),
    "OPSP9999": ("1", "JSON PARSING ERROR : invalid json format"),
}


@dataclass(frozen=True, slots=True)
class ControlReply:
    tr_id: str
    tr_key: str
    encrypt: str
    rt_cd: str
    msg_cd: str
    msg1: str
    iv: str | None
    key: str | None

    @property
    def outcome(self) -> Outcome:
        return _OUTCOME_BY_MSG_CD.get(self.msg_cd, Outcome.ERROR if self.rt_cd != "0" else Outcome.SUCCESS)

    @property
    def is_unsubscribe(self) -> bool:
        return self.msg_cd in ("OPSP0001", "OPSP0003") or self.msg1.upper().startswith("UNSUB")


@dataclass(frozen=True, slots=True)
class PingPong:
    """A keep-alive; ``text`` is the exact message, to be sent back unchanged as a text frame."""

    text: str
    datetime: str


class DataFrame(NamedTuple):
    # A NamedTuple, not a dataclass: one is built per frame on the hot path and this is the cheapest.
    encrypted: bool
    tr_id: str
    n_records: int
    payload: str


Message = ControlReply | PingPong | DataFrame


# ------------------------------------------------------------------------------------------ classify


def classify(message: str | bytes) -> Message:
    """Tell a control reply, a PINGPONG and a data frame apart; raise FrameError for anything else."""
    if isinstance(message, bytes):
        try:
            message = message.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FrameError("not_utf8", f"message is not UTF-8 text: {exc}") from None
    # Fast path for the common case, a well-formed data frame; anything unusual takes the checked path.
    parts = message.split("|", 3)
    if len(parts) == 4:
        flag, tr_id, count_text, payload = parts
        if (
            (flag == "0" or flag == "1")
            and tr_id
            and len(count_text) == 3
            and count_text.isdigit()
            and count_text != "000"
            and count_text.isascii()
        ):
            return DataFrame(flag == "1", tr_id, int(count_text), payload)
    if not message:
        raise FrameError("empty_message", "empty message")
    first = message[0]
    if first == "{":
        return _classify_json(message)
    if first in "01":
        return _parse_data_header(message)
    raise FrameError("unknown_message", f"starts with {first!r}, expected '{{', '0' or '1'")


def _classify_json(text: str) -> ControlReply | PingPong:
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise FrameError("bad_json", f"control message is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("header"), dict):
        raise FrameError("bad_control", "control message has no header object")
    header: dict[str, Any] = doc["header"]
    body = doc.get("body")
    if header.get("tr_id") == PINGPONG and body is None:
        return PingPong(text=text, datetime=str(header.get("datetime", "")))
    if not isinstance(body, dict):
        raise FrameError("bad_control", f"control message for tr_id {header.get('tr_id')!r} has no body object")
    for required in ("rt_cd", "msg_cd"):
        if not isinstance(body.get(required), str):
            raise FrameError("bad_control", f"control reply body lacks string {required!r}")
    output = body.get("output")
    iv = key = None
    if isinstance(output, dict):
        iv = output.get("iv") if isinstance(output.get("iv"), str) else None
        key = output.get("key") if isinstance(output.get("key"), str) else None
    return ControlReply(
        tr_id=str(header.get("tr_id", "")),
        tr_key=str(header.get("tr_key", "")),
        encrypt=str(header.get("encrypt", "N")),
        rt_cd=body["rt_cd"],
        msg_cd=body["msg_cd"],
        msg1=str(body.get("msg1", "")),
        iv=iv,
        key=key,
    )


def _parse_data_header(text: str) -> DataFrame:
    parts = text.split("|", 3)
    if len(parts) != 4:
        raise FrameError("bad_header", f"data frame has {len(parts) - 1} '|' separators, expected 3")
    flag, tr_id, count_text, payload = parts
    if flag not in ("0", "1"):
        raise FrameError("bad_header", f"encryption flag {flag!r} is neither '0' nor '1'")
    if not tr_id:
        raise FrameError("bad_header", "empty tr_id")
    if not (count_text.isascii() and count_text.isdigit()):
        raise FrameError("bad_count", f"record count {count_text[:20]!r} is not a number")
    count = int(count_text)
    if count < 1:
        raise FrameError("bad_count", "record count is 0")
    return DataFrame(encrypted=flag == "1", tr_id=tr_id, n_records=count, payload=payload)


# ------------------------------------------------------------------------------------------ records


def split_records(frame: DataFrame, min_width: int | None = None) -> list[list[str]]:
    """Split a (decrypted) payload into ``count`` records of W = fields / count fields each.

    Empty fields are kept (``^^`` is a real empty field). Extra fields beyond the documented width are kept
    with the record; fewer than ``min_width`` (the documented width of the TR) is an error.
    """
    if frame.encrypted:
        raise FrameError("encrypted_payload", "decrypt the payload before splitting it")
    if min_width is None:
        if frame.tr_id not in KNOWN_DATA_TRS:
            raise FrameError("unknown_tr_id", f"no record layout for tr_id {frame.tr_id!r}")
        min_width = KNOWN_DATA_TRS[frame.tr_id]
    fields = frame.payload.split("^")
    total = len(fields)
    if total % frame.n_records:
        raise FrameError("non_divisible", f"{total} fields do not split into {frame.n_records} records")
    width = total // frame.n_records
    if width < min_width:
        raise FrameError(
            "wrong_field_count", f"{frame.tr_id} records have {width} fields, expected at least {min_width}"
        )
    if frame.n_records == 1:
        return [fields]
    return [fields[i : i + width] for i in range(0, total, width)]


def decrypt_payload(payload: str, key: str, iv: str) -> str:
    """AES-256-CBC, Base64, PKCS#7: the payload of flag-1 frames, with the subscription's key and iv."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FrameError("decrypt_failed", f"payload is not Base64: {exc}") from None
    key_bytes, iv_bytes = key.encode(), iv.encode()
    if len(key_bytes) != 32 or len(iv_bytes) != 16:
        raise FrameError("decrypt_failed", f"key/iv must be 32/16 bytes, got {len(key_bytes)}/{len(iv_bytes)}")
    if not raw or len(raw) % 16:
        raise FrameError("decrypt_failed", f"ciphertext length {len(raw)} is not a positive multiple of 16")
    decryptor = Cipher(algorithms.AES(key_bytes), modes.CBC(iv_bytes)).decryptor()
    padded = decryptor.update(raw) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
        return plain.decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError("decrypt_failed", f"bad padding or text after decryption (wrong key?): {exc}") from None


def encrypt_payload(plaintext: str, key: str, iv: str) -> str:
    """The inverse of :func:`decrypt_payload` (used by the simulator for notice TRs)."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext.encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key.encode()), modes.CBC(iv.encode())).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


# ------------------------------------------------------------------------------------------ renderers


def render_data_frame(tr_id: str, records: list[list[str]], encrypted_payload: str | None = None) -> str:
    """``0|tr_id|NNN|f^f^...`` with all records' fields concatenated by ``^``."""
    if not 1 <= len(records) <= MAX_RECORDS_PER_FRAME:
        raise ValueError(f"a frame holds 1..{MAX_RECORDS_PER_FRAME} records, got {len(records)}")
    if encrypted_payload is not None:
        return f"1|{tr_id}|{len(records):03d}|{encrypted_payload}"
    return f"0|{tr_id}|{len(records):03d}|" + "^".join("^".join(r) for r in records)


def render_control_reply(
    tr_id: str, tr_key: str, msg_cd: str, *, encrypt: str = "N", iv: str | None = None, key: str | None = None
) -> str:
    rt_cd, msg1 = CONTROL_MESSAGES[msg_cd]
    body: dict[str, Any] = {"rt_cd": rt_cd, "msg_cd": msg_cd, "msg1": msg1}
    if iv is not None and key is not None:
        body["output"] = {"iv": iv, "key": key}
    return orjson.dumps({"header": {"tr_id": tr_id, "tr_key": tr_key, "encrypt": encrypt}, "body": body}).decode()


def render_pingpong(datetime_kst: str) -> str:
    return orjson.dumps({"header": {"tr_id": PINGPONG, "datetime": datetime_kst}}).decode()


def render_subscribe_request(approval_key: str, tr_id: str, tr_key: str, subscribe: bool, custtype: str = "P") -> str:
    """The client's register (tr_type "1") or release (tr_type "2") request."""
    return orjson.dumps(
        {
            "header": {
                "approval_key": approval_key,
                "custtype": custtype,
                "tr_type": "1" if subscribe else "2",
                "content-type": "utf-8",
            },
            "body": {"input": {"tr_id": tr_id, "tr_key": tr_key}},
        }
    ).decode()
