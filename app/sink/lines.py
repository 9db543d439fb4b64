"""JSONL lines in the formats users of the seed system know, and the file each one belongs to. Pure.

- ``observer/scalp/YYYYMMDD_HH.jsonl``: one line per trade, by the trade's KST hour;
- ``observer/slots/YYYYMMDD.jsonl``: one line per slot assignment (the seed's fields: timestamp, symbol,
  slot_id, trigger_type, priority_score, detected_at, details), by the decision's KST day;
- ``system/overflow_YYYYMMDD.jsonl``: one line per overflow record, in the seed's fields plus the volume
  figures;
- ``observer/swing/YYYYMMDD.jsonl``: one line per scanner snapshot;
- ``observer/surges/YYYYMMDD.jsonl``: one line per volume surge (not in the seed; its slot lines carried them).

Times are KST ISO 8601 with microseconds. Every value comes from the record itself (never the sink's
clock), so a redelivered or replayed record renders the same bytes.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import orjson

from app.krx import KST

US = 1_000_000


def kst_iso(time_us: int) -> str:
    """``2026-01-26T15:00:38.053915+09:00``: the seed's timestamp form."""
    return dt.datetime.fromtimestamp(time_us / US, KST).isoformat(timespec="microseconds")


def _kst(time_us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(time_us // US, KST)


def dumps(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc) + b"\n"


def scalp_path(tick: dict[str, Any]) -> str:
    return _scalp_path_of_hour(tick["event_time_us"] // 3_600_000_000)


@functools.lru_cache(maxsize=256)
def _scalp_path_of_hour(hour: int) -> str:  # one strftime per hour instead of one per trade
    return f"observer/scalp/{_kst(hour * 3_600_000_000):%Y%m%d_%H}.jsonl"


def scalp_line(tick: dict[str, Any], slot_id: int | None, trigger_type: str | None) -> bytes:
    """One trade. ``slot_id``/``trigger_type``: the slot the symbol held when the trade was made, if known."""
    return dumps(
        {
            "timestamp": kst_iso(tick["event_time_us"]),
            "symbol": tick["symbol"],
            "slot_id": slot_id,
            "price": tick["price"],
            "volume": tick["trade_volume"],
            "accumulated_volume": tick["cumulative_volume"],
            "change_rate": tick["change_rate"],
            "best_bid": tick["best_bid"],
            "best_ask": tick["best_ask"],
            "side": tick["side"],
            "received_at": kst_iso(tick["received_at_us"]),
            "trigger_type": trigger_type,
        }
    )


def _surge_details(record: dict[str, Any]) -> dict[str, Any]:
    """The seed's ``details`` object: the surge behind a slot decision or an overflow record."""
    return {k: record[k] for k in ("current_volume", "avg_volume_10m", "surge_ratio")}


def slot_path(decision: dict[str, Any]) -> str:
    return f"observer/slots/{_kst(decision['decided_at_us']):%Y%m%d}.jsonl"


def slot_line(decision: dict[str, Any]) -> bytes:
    """An assignment in the seed's format (a release has no line of its own there; it is in Postgres)."""
    return dumps(
        {
            "timestamp": kst_iso(decision["decided_at_us"]),
            "symbol": decision["symbol"],
            "slot_id": decision["slot_id"],
            "trigger_type": decision["trigger_type"],
            "priority_score": decision["priority_score"],
            "detected_at": kst_iso(decision["detected_at_us"]),
            "details": _surge_details(decision),
            "app_key_id": decision["app_key_id"],
            "decision_id": decision["decision_id"],
        }
    )


def overflow_path(overflow: dict[str, Any]) -> str:
    return f"system/overflow_{_kst(overflow['decided_at_us']):%Y%m%d}.jsonl"


def overflow_line(overflow: dict[str, Any]) -> bytes:
    return dumps(
        {
            "timestamp": kst_iso(overflow["decided_at_us"]),
            "symbol": overflow["symbol"],
            "trigger_type": overflow["trigger_type"],
            "priority_score": overflow["priority_score"],
            "detected_at": kst_iso(overflow["detected_at_us"]),
            "reason": overflow["reason"],
            "details": _surge_details(overflow),
        }
    )


def swing_path(snapshot: dict[str, Any]) -> str:
    return f"observer/swing/{snapshot['business_date']}.jsonl"


def swing_line(snapshot: dict[str, Any]) -> bytes:
    return dumps(
        {
            "timestamp": kst_iso(snapshot["snapshot_time_us"]),
            "symbol": snapshot["symbol"],
            "source": snapshot["source"],
            "rank": snapshot["rank"],
            "price": snapshot["price"],
            "accumulated_volume": snapshot["cumulative_volume"],
            "change_rate": snapshot["change_rate"],
        }
    )


def surge_path(surge: dict[str, Any]) -> str:
    return f"observer/surges/{surge['business_date']}.jsonl"


def surge_line(surge: dict[str, Any]) -> bytes:
    return dumps(
        {
            "timestamp": kst_iso(surge["event_time_us"]),
            "symbol": surge["symbol"],
            "source": surge["source"],
            "window_start": kst_iso(surge["window_start_us"]),
            "priority_score": surge["priority_score"],
            "details": _surge_details(surge),
        }
    )
