"""The slot policy: exact scenarios and properties over random candidate streams (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.slots.policy import ASSIGN, RELEASE, Candidate, Decision, Overflow, SlotBook, SlotPolicy, apply_all

S = 1_000_000  # one second in microseconds


def surge(symbol: str, priority: float, at_s: float) -> Candidate:
    return Candidate(symbol, priority, "surge", int(at_s * S), 10_000, 1_000.0, 10.0)


def test_bootstrap_fills_slots_once_and_session_close_releases_them() -> None:
    book = SlotBook(SlotPolicy(capacity=41))
    out = book.open_session(0)
    assert [(d.symbol, d.action, d.slot_id) for d in out if isinstance(d, Decision)] == [
        (s, ASSIGN, i) for i, s in enumerate(SlotPolicy().bootstrap)
    ]
    assert book.open_session(5 * S) == [], "already holding: nothing to decide"
    closed = book.close_session(100 * S)
    assert {d.action for d in closed if isinstance(d, Decision)} == {RELEASE} and book.held() == 0


def test_a_stronger_candidate_replaces_the_weakest_holder_only_after_the_dwell() -> None:
    book = SlotBook(SlotPolicy(capacity=2, bootstrap=()))
    apply_all(book, [surge("A", 0.6, 0), surge("B", 0.7, 1)])
    early = book.offer(surge("C", 0.9, 60), 60 * S)
    assert len(early) == 1 and isinstance(early[0], Overflow)
    assert early[0].reason == "weaker_holders_within_min_dwell"
    late = book.offer(surge("C", 0.9, 130), 130 * S)
    release, assign = late
    assert isinstance(release, Decision) and release.action == RELEASE and release.symbol == "A"
    assert isinstance(assign, Decision) and assign.action == ASSIGN and assign.symbol == "C"
    assert assign.replaced_symbol == "A" and assign.slot_id == release.slot_id == 0


def test_a_weaker_candidate_overflows_with_the_reason() -> None:
    book = SlotBook(SlotPolicy(capacity=1, bootstrap=()))
    book.offer(surge("A", 0.9, 0), 0)
    (out,) = book.offer(surge("B", 0.5, 500), 500 * S)
    assert isinstance(out, Overflow) and out.reason == "all_slots_occupied" and out.symbol == "B"


def test_priority_decays_so_a_faded_surge_loses_its_slot() -> None:
    policy = SlotPolicy(capacity=1, bootstrap=(), half_life_us=600 * S)
    book = SlotBook(policy)
    book.offer(surge("A", 0.8, 0), 0)
    (out,) = book.offer(surge("B", 0.5, 300), 300 * S)  # A decayed to 0.8 * 2^-0.5 = 0.566 > 0.5
    assert isinstance(out, Overflow)
    _, assign = book.offer(surge("B", 0.5, 601), 601 * S)  # A has decayed to 0.8 * 2^-1.0017 = 0.3995
    assert isinstance(assign, Decision) and assign.symbol == "B" and assign.replaced_symbol == "A"


def test_a_new_surge_of_a_holder_refreshes_its_priority() -> None:
    book = SlotBook(SlotPolicy(capacity=1, bootstrap=(), half_life_us=600 * S))
    book.offer(surge("A", 0.8, 0), 0)
    assert book.offer(surge("A", 0.8, 590), 590 * S) == []
    (out,) = book.offer(surge("B", 0.5, 600), 600 * S)
    assert isinstance(out, Overflow), "A was refreshed at 590 s and still outranks B"


def test_a_refusal_frees_the_slot_and_is_reported() -> None:
    book = SlotBook(SlotPolicy(capacity=2, bootstrap=()))
    book.offer(surge("A", 0.6, 0), 0)
    release, overflow = book.refused("main", "A", "max_subscribe_over", "OPSP0008", 2 * S)
    assert isinstance(release, Decision) and release.action == RELEASE and book.held() == 0
    assert isinstance(overflow, Overflow) and overflow.reason == "refused_by_kis:OPSP0008"
    assert book.refused("main", "A", "max_subscribe_over", "OPSP0008", 3 * S) == []


def test_pools_of_several_app_keys_fill_in_order() -> None:
    book = SlotBook(SlotPolicy(app_key_ids=("k1", "k2"), capacity=1, bootstrap=()))
    out = apply_all(book, [surge("A", 0.6, 0), surge("B", 0.6, 1), surge("C", 0.6, 2)])
    assert [(o.app_key_id, o.symbol) for o in out if isinstance(o, Decision)] == [("k1", "A"), ("k2", "B")]
    assert isinstance(out[-1], Overflow)


def test_bad_policy_values_are_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        SlotPolicy(capacity=0)
    with pytest.raises(ValueError, match="distinct"):
        SlotPolicy(app_key_ids=("a", "a"))


symbols = st.sampled_from([f"{i:06d}" for i in range(30)])
candidates = st.lists(
    st.tuples(symbols, st.floats(0.0, 0.99, allow_nan=False), st.integers(0, 60)), min_size=1, max_size=150
)


@settings(max_examples=300, deadline=None)
@given(candidates, st.integers(1, 6), st.integers(1, 2))
def test_properties_over_random_candidate_streams(
    stream: list[tuple[str, float, int]], capacity: int, n_keys: int
) -> None:
    policy = SlotPolicy(app_key_ids=tuple(f"k{i}" for i in range(n_keys)), capacity=capacity, bootstrap=())
    book = SlotBook(policy)
    twin = SlotBook(policy)
    now = 0
    assigned_at: dict[str, int] = {}
    for symbol, priority, gap_s in stream:
        now += gap_s * S
        cand = Candidate(symbol, priority, "surge", now)
        before = {
            h.symbol: book.effective_priority(h, now)
            for pool in book.slots.values()
            for h in pool
            if h is not None and now - h.since_us >= policy.min_dwell_us
        }
        out = book.offer(cand, now)
        assert out == twin.offer(cand, now), "deterministic: the same input gives the same decisions"
        held = [h for pool in book.slots.values() for h in pool if h is not None]
        assert len(held) <= capacity * n_keys, "pool capacity never exceeded"
        assert len({h.symbol for h in held}) == len(held), "a symbol holds one slot at most"
        for o in out:
            if isinstance(o, Decision) and o.action == RELEASE:
                assert now - assigned_at[o.symbol] >= policy.min_dwell_us, "no eviction before the minimum dwell"
            if isinstance(o, Decision) and o.action == ASSIGN:
                assigned_at[o.symbol] = now
            if isinstance(o, Overflow):
                weaker = [s for s, p in before.items() if p < priority]
                assert not weaker, f"{symbol} at {priority} overflowed while {weaker} were evictable and weaker"
