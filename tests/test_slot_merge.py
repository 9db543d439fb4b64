"""The event-time merge: every interleaving of the same per-source streams releases the same sequence."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.slots.merge import EventTimeMerger

END = 10**15


def run(streams: dict[str, list[tuple[str, int, str]]], seed: int) -> list[tuple[int, str, str]]:
    """Feed the streams interleaved at random (each in its own order), releasing as we go."""
    merger = EventTimeMerger(frozenset(streams))
    cursors = {s: 0 for s in streams}
    rng = random.Random(seed)
    out = []
    while any(cursors[s] < len(streams[s]) for s in streams):
        source = rng.choice([s for s in streams if cursors[s] < len(streams[s])])
        kind, t, label = streams[source][cursors[source]]
        cursors[source] += 1
        if kind == "item":
            merger.add(source, t, label)
        else:
            merger.advance(source, t)
        out.extend((p.time_us, p.source, p.item) for p in merger.release())
    for s in streams:
        merger.advance(s, END)
    out.extend((p.time_us, p.source, p.item) for p in merger.release())
    return out


stream = st.lists(
    st.tuples(st.sampled_from(["item", "item", "progress"]), st.integers(0, 1_000), st.text("abc", max_size=2)),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["p0", "p1", "p2", "p3"]), stream, min_size=1), st.integers(0, 2**32))
def test_any_interleaving_releases_the_same_sequence(streams: dict, seed: int) -> None:
    first = run(streams, seed)
    second = run(streams, seed + 1)
    assert first == second
    items = sum(1 for s in streams.values() for kind, _, _ in s if kind == "item")
    assert len(first) == items, "every item released exactly once"
    assert [t for t, _, _ in first] == sorted(t for t, _, _ in first), "in time order"


def test_nothing_is_released_until_every_source_has_spoken() -> None:
    merger = EventTimeMerger(frozenset({"a", "b"}))
    merger.add("a", 10, "x")
    assert merger.release() == []
    merger.advance("b", 10)
    assert merger.release() == [], "strictly below the watermark: b may still send something at 10"
    merger.advance("b", 11)
    assert merger.release() == []  # a is only at 10
    merger.advance("a", 11)
    assert [p.item for p in merger.release()] == ["x"]


def test_an_idle_source_does_not_hold_the_others_back_and_its_late_items_keep_order() -> None:
    merger = EventTimeMerger(frozenset({"a", "b"}))
    merger.add("a", 10, "x")
    merger.advance("a", 20)
    assert [p.item for p in merger.release(idle={"b"})] == ["x"]
    late = merger.add("b", 5, "y")
    assert late.time_us == 20, "an item after its source was passed over is placed after what was released"


def test_with_every_source_idle_everything_up_to_the_latest_time_goes() -> None:
    merger = EventTimeMerger(frozenset({"a", "b"}))
    merger.advance("b", 10)
    merger.add("a", 12, "x")
    assert [p.item for p in merger.release(idle={"b"})] == [], "a is not idle and only at 12"
    assert [p.item for p in merger.release(idle={"a", "b"})] == ["x"], "nothing else is coming"
    assert merger.add("b", 12, "y").time_us == 13, "placed after what was released"


def test_an_out_of_order_item_keeps_its_place_in_its_source() -> None:
    merger = EventTimeMerger(frozenset({"a"}))
    merger.add("a", 10, "x")
    assert merger.add("a", 7, "y").time_us == 10


def test_unknown_sources_are_an_error() -> None:
    with pytest.raises(KeyError, match="unknown source 'z'"):
        EventTimeMerger(frozenset({"a"})).add("z", 1, "x")
