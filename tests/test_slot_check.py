"""The audit's replay of a day's slot decisions against the slot policy (``app.slots.check``): decisions
the real policy makes never violate it, and each kind of violation is caught."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.slots.check import check_decisions
from app.slots.policy import Candidate, Decision, SlotBook, SlotPolicy

S = 1_000_000


def decision(
    action: str, slot: int, symbol: str, at_s: float, trigger: str = "surge", key: str = "main"
) -> dict[str, Any]:
    return {
        "decision_id": f"{key}-{slot}-{action}-{symbol}-{at_s}",
        "app_key_id": key,
        "slot_id": slot,
        "symbol": symbol,
        "action": action,
        "trigger_type": trigger,
        "decided_at_us": int(at_s * S),
    }


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([f"{i:06d}" for i in range(12)]), st.floats(0.1, 1.0), st.integers(1, 90)),
        max_size=120,
    ),
    st.integers(1, 5),
    st.lists(st.integers(0, 119), max_size=4),
)
def test_the_policys_own_decisions_keep_the_policy(
    stream: list[tuple[str, float, int]], capacity: int, refusals: list[int]
) -> None:
    book = SlotBook(SlotPolicy(capacity=capacity, bootstrap=()))
    now = 0
    out: list[dict[str, Any]] = []
    for i, (symbol, priority, gap_s) in enumerate(stream):
        now += gap_s * S
        outcomes = book.offer(Candidate(symbol, priority, "surge", now), now)
        if i in refusals:  # KIS refusing a subscription frees the slot at once, within the dwell
            outcomes += book.refused("main", symbol, "refused", "OPSP0008", now)
        out += [o.to_record() for o in outcomes if isinstance(o, Decision)]
    out += [o.to_record() for o in book.close_session(now + S) if isinstance(o, Decision)]
    check = check_decisions(out + out[: len(out) // 2], capacity)  # records seen twice count once
    assert check.violations == []
    assert check.decisions == len(out)
    assert check.max_held.get("main", 0) <= capacity


def test_each_kind_of_violation_is_caught() -> None:
    ok = [decision("assign", 0, "A", 0), decision("assign", 1, "B", 10), decision("release", 0, "A", 130)]
    assert check_decisions(ok, capacity=2).violations == []
    cases = {
        "outside the pool": [decision("assign", 2, "C", 0)],
        "while A holds it": [decision("assign", 0, "A", 0), decision("assign", 0, "B", 1)],
        "a second slot": [decision("assign", 0, "A", 0), decision("assign", 1, "A", 1)],
        "the slot holds None": [decision("release", 1, "A", 0)],
        "under the 120 s dwell": [decision("assign", 0, "A", 0), decision("release", 0, "A", 119)],
        "unknown action": [decision("swap", 0, "A", 0)],
    }
    for expected, decisions in cases.items():
        violations = check_decisions(decisions, capacity=2).violations
        assert len(violations) == 1 and expected in violations[0], (expected, violations)
    early = [decision("assign", 0, "A", 0), decision("release", 0, "A", 5, trigger="refusal")]
    assert check_decisions(early, capacity=2).violations == []
    check = check_decisions(ok, capacity=2)
    assert check.shortest_dwell_us == 130 * S and check.max_held == {"main": 2}
