"""H0STCNT0 records to ``RawTick`` values (dicts shaped like ``schemas/RawTick.avsc``). Pure and hot.

A record keeps every field exactly as KIS sent it (``fields``) and adds typed core fields. The event time
is the trade's business date and ``HHMMSS`` in Asia/Seoul (UTC+9, no daylight saving since 1988).
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any

from app.kis.protocol import (
    FIELD_INDEX,
    H0STCNT0_WIDTH,
    TR_TRADE,
    DataFrame,
    FrameError,
    classify,
    decrypt_payload,
    split_records,
)

RawTick = dict[str, Any]

KST_OFFSET_S = 9 * 3600
_SIDES = {"1": "buy", "5": "sell", "3": "pre_open"}

_I = FIELD_INDEX
I_SYMBOL, I_TIME, I_PRICE, I_SIGN, I_RATE = (
    _I["MKSC_SHRN_ISCD"],
    _I["STCK_CNTG_HOUR"],
    _I["STCK_PRPR"],
    _I["PRDY_VRSS_SIGN"],
    _I["PRDY_CTRT"],
)
I_ASK, I_BID, I_VOL, I_ACML = _I["ASKP1"], _I["BIDP1"], _I["CNTG_VOL"], _I["ACML_VOL"]
I_SIDE, I_DATE = _I["CCLD_DVSN"], _I["BSOP_DATE"]


@lru_cache(maxsize=64)
def _midnight_kst_epoch_s(business_date: str) -> int:
    """Seconds since the Unix epoch of 00:00 KST on ``YYYYMMDD`` (cached: one date per session)."""
    if len(business_date) != 8 or not business_date.isdigit():
        raise FrameError("bad_date", f"BSOP_DATE {business_date!r} is not YYYYMMDD")
    try:
        day = dt.date(int(business_date[:4]), int(business_date[4:6]), int(business_date[6:]))
    except ValueError:
        raise FrameError("bad_date", f"BSOP_DATE {business_date!r} is not a calendar date") from None
    return (day - dt.date(1970, 1, 1)).days * 86400 - KST_OFFSET_S


def event_time_us(business_date: str, hhmmss: str) -> int:
    """UTC microseconds of a KST business date and ``HHMMSS`` trade time."""
    if len(hhmmss) != 6 or not hhmmss.isdigit():
        raise FrameError("bad_time", f"STCK_CNTG_HOUR {hhmmss!r} is not HHMMSS")
    h, m, s = int(hhmmss[:2]), int(hhmmss[2:4]), int(hhmmss[4:])
    if h > 23 or m > 59 or s > 59:
        raise FrameError("bad_time", f"STCK_CNTG_HOUR {hhmmss!r} is not a time of day")
    return (_midnight_kst_epoch_s(business_date) + h * 3600 + m * 60 + s) * 1_000_000


def _int(fields: list[str], i: int) -> int:
    try:
        return int(fields[i])
    except ValueError:
        raise FrameError("bad_number", f"field {_name(i)} is {fields[i][:30]!r}, expected an integer") from None


def _float(fields: list[str], i: int) -> float:
    text = fields[i]
    try:
        value = float(text)
    except ValueError:
        raise FrameError("bad_number", f"field {_name(i)} is {text[:30]!r}, expected a decimal") from None
    if value != value or value in (float("inf"), float("-inf")):  # NaN/inf parse as floats but are not prices
        raise FrameError("bad_number", f"field {_name(i)} is {text[:30]!r}, expected a finite decimal")
    return value


def _name(i: int) -> str:
    from app.kis.protocol import H0STCNT0_FIELDS

    return f"{H0STCNT0_FIELDS[i]} (#{i})" if i < len(H0STCNT0_FIELDS) else f"#{i}"


def record_to_tick(
    fields: list[str],
    *,
    tr_id: str,
    received_at_us: int,
    app_key_id: str,
    session_id: str,
    frame_seq: int,
    record_index: int,
    record_count: int,
) -> RawTick:
    symbol = fields[I_SYMBOL]
    if not symbol or not symbol.isalnum() or not symbol.isascii() or len(symbol) > 9:
        raise FrameError("bad_symbol", f"MKSC_SHRN_ISCD {symbol[:20]!r} is not a KRX short code")
    business_date = fields[I_DATE]
    trade_time = fields[I_TIME]
    return {
        "tr_id": tr_id,
        "symbol": symbol,
        "business_date": business_date,
        "trade_time": trade_time,
        "event_time_us": event_time_us(business_date, trade_time),
        "price": _int(fields, I_PRICE),
        "trade_volume": _int(fields, I_VOL),
        "cumulative_volume": _int(fields, I_ACML),
        "change_sign": fields[I_SIGN],
        "change_rate": _float(fields, I_RATE),
        "best_ask": _int(fields, I_ASK),
        "best_bid": _int(fields, I_BID),
        "side": _SIDES.get(fields[I_SIDE], "unknown"),
        "received_at_us": received_at_us,
        "app_key_id": app_key_id,
        "session_id": session_id,
        "frame_seq": frame_seq,
        "record_index": record_index,
        "record_count": record_count,
        "fields": fields,
    }


# Hot-path caches. A session sees one business date and at most ~23,400 distinct trade seconds a day;
# symbols number in the thousands. Both are cleared when they outgrow these bounds.
_EVENT_US: dict[str, int] = {}
_VALID_SYMBOLS: set[str] = set()
_CACHE_BOUND = 200_000
_INF = float("inf")


def _check_symbol(symbol: str) -> None:
    if not symbol or not symbol.isalnum() or not symbol.isascii() or len(symbol) > 9:
        raise FrameError("bad_symbol", f"MKSC_SHRN_ISCD {symbol[:20]!r} is not a KRX short code")
    if len(_VALID_SYMBOLS) >= _CACHE_BOUND:
        _VALID_SYMBOLS.clear()
    _VALID_SYMBOLS.add(symbol)


def _event_time_cached(business_date: str, hhmmss: str) -> int:
    value = event_time_us(business_date, hhmmss)
    if len(_EVENT_US) >= _CACHE_BOUND:
        _EVENT_US.clear()
    _EVENT_US[business_date + hhmmss] = value
    return value


def frame_to_ticks(
    frame: DataFrame,
    *,
    received_at_us: int,
    app_key_id: str,
    session_id: str,
    frame_seq: int,
    cipher: tuple[str, str] | None = None,
) -> list[RawTick]:
    """All trade records of one data frame, or FrameError for the whole frame (it goes to the DLQ whole).

    ``cipher`` is the (key, iv) from the SUBSCRIBE SUCCESS reply of the frame's TR, needed if encrypted.
    This is the hot path: conversions run inline in one ``try``; on any failure the record is re-checked
    field by field by :func:`record_to_tick`, so the error names the exact field.
    """
    tr_id = frame.tr_id
    if tr_id != TR_TRADE:
        raise FrameError("unknown_tr_id", f"data frame for tr_id {tr_id!r}, only {TR_TRADE} is handled")
    if frame.encrypted:
        if cipher is None:
            raise FrameError("no_cipher", f"encrypted {tr_id} frame but no key/iv from its subscribe reply")
        frame = DataFrame(False, tr_id, frame.n_records, decrypt_payload(frame.payload, *cipher))
    count = frame.n_records
    fields = frame.payload.split("^")
    total = len(fields)
    if total % count or total // count < H0STCNT0_WIDTH:
        split_records(frame)  # raises the precise error
    width = total // count
    records = [fields] if count == 1 else [fields[i : i + width] for i in range(0, total, width)]
    ticks: list[RawTick] = []
    append = ticks.append
    for index, f in enumerate(records):
        try:
            symbol = f[I_SYMBOL]
            if symbol not in _VALID_SYMBOLS:
                _check_symbol(symbol)
            business_date = f[I_DATE]
            trade_time = f[I_TIME]
            event_us = _EVENT_US.get(business_date + trade_time)
            if event_us is None:
                event_us = _event_time_cached(business_date, trade_time)
            rate = float(f[I_RATE])
            if rate - rate != 0.0:  # NaN or infinity: parses as a float, is not a rate
                raise ValueError(rate)
            append(
                {
                    "tr_id": tr_id,
                    "symbol": symbol,
                    "business_date": business_date,
                    "trade_time": trade_time,
                    "event_time_us": event_us,
                    "price": int(f[I_PRICE]),
                    "trade_volume": int(f[I_VOL]),
                    "cumulative_volume": int(f[I_ACML]),
                    "change_sign": f[I_SIGN],
                    "change_rate": rate,
                    "best_ask": int(f[I_ASK]),
                    "best_bid": int(f[I_BID]),
                    "side": _SIDES.get(f[I_SIDE], "unknown"),
                    "received_at_us": received_at_us,
                    "app_key_id": app_key_id,
                    "session_id": session_id,
                    "frame_seq": frame_seq,
                    "record_index": index,
                    "record_count": count,
                    "fields": f,
                }
            )
        except ValueError:
            # The precise checker raises the FrameError naming the field.
            record_to_tick(
                f,
                tr_id=tr_id,
                received_at_us=received_at_us,
                app_key_id=app_key_id,
                session_id=session_id,
                frame_seq=frame_seq,
                record_index=index,
                record_count=count,
            )
            raise FrameError("bad_number", f"record {index} has a value that is not a number") from None
    return ticks


def parse_trade_message(
    message: str, *, received_at_us: int = 0, app_key_id: str = "", session_id: str = "", frame_seq: int = 0
) -> list[RawTick]:
    """Convenience for tools and tests: a data-frame message straight to ticks."""
    msg = classify(message)
    if not isinstance(msg, DataFrame):
        raise FrameError("not_a_data_frame", f"message is a {type(msg).__name__}, not a data frame")
    return frame_to_ticks(
        msg, received_at_us=received_at_us, app_key_id=app_key_id, session_id=session_id, frame_seq=frame_seq
    )
