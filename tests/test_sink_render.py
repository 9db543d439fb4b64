"""The sink's pure parts: rendering, natural-key dedupe, and which slot a trade's symbol held."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_codec import EXAMPLES

from app.sink.render import KINDS, Dedupe, InvalidRecord, render
from app.sink.slot_history import SlotHistory

NO_SLOT = lambda *_: (None, None)  # noqa: E731


def decision(symbol: str, action: str, at: int, slot_id: int = 1, decision_id: str | None = None) -> dict[str, Any]:
    return dict(EXAMPLES["SlotDecision"]) | {
        "app_key_id": "main",
        "symbol": symbol,
        "action": action,
        "decided_at_us": at,
        "slot_id": slot_id,
        "trigger_type": "surge",
        "decision_id": decision_id or f"{symbol}-{action}-{at}",
    }


def test_every_topic_has_a_kind_and_every_example_renders_the_same_twice() -> None:
    examples = {"ticks": "RawTick", "snapshots": "Snapshot", "surges": "SurgeEvent", "overflow": "OverflowEvent"}
    assert set(KINDS) == {"kis.ticks.raw", "kis.snapshots", "observer.surges", "slot.decisions", "slot.overflow"}
    for kind in KINDS.values():
        record = (
            decision("005930", "assign", EXAMPLES["RawTick"]["event_time_us"])
            if kind.name == "decisions"
            else (dict(EXAMPLES[examples[kind.name]]))
        )
        first, again = render(kind, record, NO_SLOT), render(kind, record, NO_SLOT)
        assert (first.key, first.file, repr(first.row)) == (again.key, again.file, repr(again.row))  # Jsonb has no ==
        assert first.file is not None
        path, line = first.file
        assert not path.startswith("/") and ".." not in path and line.endswith(b"\n")
        assert orjson.loads(line)["symbol"] == record["symbol"]
        assert first.key[0][:8].isdigit()


def test_a_release_has_a_row_but_no_slot_line() -> None:
    rendered = render(KINDS["slot.decisions"], decision("005930", "release", 1_700_000_000_000_000), NO_SLOT)
    assert rendered.file is None and rendered.row[5] == "release"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"business_date": "2026"}, "business_date='2026' is not YYYYMMDD"),
        ({"business_date": "20261399"}, "ValueError"),
        ({"event_time_us": 0}, "event_time_us=0 is outside"),
        ({"symbol": ""}, "symbol=''"),
        ({"symbol": "../etc"}, "symbol='../etc'"),
    ],
)
def test_a_record_no_line_or_row_can_hold_is_invalid_with_the_reason(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRecord, match=message.replace("(", r"\(").replace(".", r"\.")):
        render(KINDS["kis.ticks.raw"], dict(EXAMPLES["RawTick"]) | change, NO_SLOT)


def test_dedupe_admits_each_key_once_and_idents_at_the_same_order() -> None:
    d = Dedupe({})
    assert d.admit(("20260126|t|A", 10, ""))
    assert not d.admit(("20260126|t|A", 10, "")), "the same trade again"
    assert not d.admit(("20260126|t|A", 5, "")), "below the highest written"
    assert d.admit(("20260126|t|A", 11, "")) and d.admit(("20260126|t|B", 1, ""))
    assert d.admit(("20260126|d|main", 7, "x")) and d.admit(("20260126|d|main", 7, "y")), "two decisions, one time"
    assert not d.admit(("20260126|d|main", 7, "x"))
    again = Dedupe(orjson.loads(orjson.dumps(d.marks())))  # through the commit record
    assert not again.admit(("20260126|t|A", 11, "")) and not again.admit(("20260126|d|main", 7, "y"))


def test_dedupe_keeps_the_marks_of_the_last_days_only() -> None:
    d = Dedupe({}, keep_days=3)
    for day in ("20260120", "20260123", "20260126"):
        d.admit((f"{day}|t|A", 1, ""))
    assert sorted(m[:8] for m in d.marks()) == ["20260123", "20260126"]


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=200))
def test_dedupe_admits_exactly_the_first_sighting_of_each_volume_in_a_growing_stream(volumes: list[int]) -> None:
    """A symbol's trades come in growing cumulative volume; a duplicate repeats one already seen. Lines
    admitted == distinct volumes, in order."""
    stream = sorted(volumes)
    d = Dedupe({})
    admitted = [v for v in stream if d.admit(("20260126|t|A", v, ""))]
    assert admitted == sorted(set(stream))


def test_the_slot_of_a_trade_is_the_last_decision_at_or_before_it() -> None:
    h = SlotHistory()
    h.add(decision("005930", "assign", 100, slot_id=3))
    h.add(decision("005930", "release", 200, slot_id=3))
    h.add(decision("005930", "assign", 300, slot_id=9))
    h.add(decision("005930", "assign", 100, slot_id=3))  # the worker repeated it after a crash: same id
    assert len(h) == 3
    assert [h.slot_at("main", "005930", t) for t in (99, 100, 150, 200, 299, 300, 10**9)] == [
        (None, None),
        (3, "surge"),
        (3, "surge"),
        (None, None),
        (None, None),
        (9, "surge"),
        (9, "surge"),
    ]
    assert h.slot_at("other-key", "005930", 150) == (None, None)
    assert h.slot_at("main", "000660", 150) == (None, None)


def test_decisions_read_out_of_order_give_the_same_answers() -> None:
    ordered, shuffled = SlotHistory(), SlotHistory()
    items = [decision("005930", "assign", 100), decision("005930", "release", 200), decision("005930", "assign", 300)]
    for d in items:
        ordered.add(d)
    for d in reversed(items):
        shuffled.add(d)
    assert all(ordered.slot_at("main", "005930", t) == shuffled.slot_at("main", "005930", t) for t in range(0, 400, 7))
