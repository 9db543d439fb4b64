"""Reading archived JSONL lines back into records (``observer republish``): pure, no services.

A republished record must render the very line it came from, so the sink writes a republished day's
archive byte for byte as it was; a line that cannot be read back is an error naming the field."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.kis.ticks import record_to_tick
from app.krx import KST
from app.records import default_codec
from app.republish import ArchiveLineError, snapshot_of_line, tick_of_line
from app.sim.market import Market
from app.sink.lines import scalp_line, swing_line

DAY = dt.date(2026, 11, 20)


def market_ticks(n: int) -> list[dict]:
    market = Market(seed=3, business_date=DAY)
    t = int(dt.datetime.combine(DAY, dt.time(9, 0), KST).timestamp()) * 1_000_000
    market.start_at(t)
    out: list[dict] = []
    while len(out) < n:
        t += 60_000_000
        for i, trade in enumerate(market.advance_to(t)):
            out.append(
                record_to_tick(
                    trade.record,
                    tr_id="H0STCNT0",
                    received_at_us=trade.event_time_us + 123_456 + i,
                    app_key_id="main",
                    session_id="s1",
                    frame_seq=len(out),
                    record_index=0,
                    record_count=1,
                )
            )
    return out[:n]


def test_every_trade_of_a_simulated_morning_republishes_to_its_own_scalp_line() -> None:
    codec = default_codec()
    for n, tick in enumerate(market_ticks(3000), start=1):
        for slot_id, trigger in ((None, None), (7, "surge")):
            line = scalp_line(tick, slot_id, trigger)
            back = tick_of_line(line.rstrip(b"\n"), DAY, "observer/scalp/x.jsonl", n)
            assert scalp_line(back, slot_id, trigger) == line
            codec.encode("RawTick", back)  # a valid record
            assert back["business_date"] == tick["business_date"] and back["trade_time"] == tick["trade_time"]
            assert back["session_id"] == "republish:observer/scalp/x.jsonl" and back["fields"] == []


@settings(max_examples=200, deadline=None)
@given(
    seconds=st.integers(0, 6 * 3600),
    micros=st.integers(0, 999_999),
    price=st.integers(1, 10**7),
    cumulative=st.integers(0, 10**12),
    rate=st.floats(-30, 30, allow_nan=False),
    rank=st.one_of(st.none(), st.integers(1, 30)),
)
def test_snapshot_lines_round_trip(
    seconds: int, micros: int, price: int, cumulative: int, rate: float, rank: int | None
) -> None:
    t = int(dt.datetime.combine(DAY, dt.time(9, 0), KST).timestamp()) * 1_000_000 + seconds * 1_000_000 + micros
    snapshot = {
        "symbol": "005930",
        "business_date": "20261120",
        "snapshot_time_us": t,
        "source": "volume_rank" if rank else "inquire_price",
        "price": price,
        "cumulative_volume": cumulative,
        "change_rate": rate,
        "rank": rank,
        "raw": {},
    }
    line = swing_line(snapshot)
    back = snapshot_of_line(line, DAY)
    assert back == snapshot and swing_line(back) == line
    default_codec().encode("Snapshot", back)


GOOD = scalp_line(market_ticks(1)[0], None, None).rstrip(b"\n")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (GOOD.replace(b'"symbol":', b'"sym":'), "symbol is missing"),
        (GOOD.replace(b'"price":', b'"price":"x","p":'), "price is missing or not a int"),
        (GOOD.replace(b"+09:00", b"", 1), "has no UTC offset"),
        (GOOD.replace(b"2026-11-20T", b"2026-11-21T", 1), "is not on 2026-11-20"),
        (GOOD.replace(b'"side":"', b'"side":"x', 1), "is not buy, sell or unknown"),
    ],
)
def test_a_bad_scalp_line_names_what_is_wrong(line: bytes, message: str) -> None:
    with pytest.raises(ArchiveLineError, match=message):
        tick_of_line(line, DAY, "f", 1)
