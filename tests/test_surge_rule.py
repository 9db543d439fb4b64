"""The surge rule: exact windows from cumulative volume, and properties over random tick streams."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.surge.rule import MINUTE_US, Observation, SurgeRule, SymbolWindows, observe, priority_score

DAY = "20261120"
T0 = 29_000_000 * MINUTE_US  # an arbitrary minute boundary


def tick(minute: float, cumulative: int, volume: int, symbol: str = "005930") -> Observation:
    return Observation(symbol, DAY, T0 + int(minute * MINUTE_US), cumulative, volume, "ticks")


def run(observations: list[Observation], rule: SurgeRule) -> tuple[SymbolWindows | None, list]:
    state = None
    surges = []
    for obs in observations:
        state, surge, _late = observe(state, obs, rule)
        if surge is not None:
            surges.append(surge)
    return state, surges


def test_a_surge_fires_once_at_the_crossing_with_the_exact_average() -> None:
    rule = SurgeRule(min_volume=1_000)
    cum = 0
    obs = []
    for minute in range(10):  # 500 shares a minute for ten minutes, two trades each
        for half in (0.2, 0.7):
            cum += 250
            obs.append(tick(minute + half, cum, 250))
    for k in range(8):  # minute 10: 8 trades of 250; the 6th brings it to 1,500 = 3 x 500
        cum += 250
        obs.append(tick(10 + 0.1 * k, cum, 250))
    _state, surges = run(obs, rule)
    assert len(surges) == 1
    s = surges[0]
    assert (s.current_volume, s.avg_volume_10m, s.surge_ratio) == (1_500, 500.0, 3.0)
    assert s.window_start_us == T0 + 10 * MINUTE_US and s.event_time_us == T0 + int(10.5 * MINUTE_US)
    assert s.priority_score == pytest.approx(0.5)


def test_silent_minutes_count_as_zero_and_no_surge_before_a_full_lookback() -> None:
    rule = SurgeRule(min_volume=100)
    obs = [tick(0, 1_000, 1_000)]  # first sight: counts its own trade only
    obs += [tick(5, 1_100, 100)]  # only 5 minutes of history: must not fire
    obs += [tick(10, 1_400, 300)]  # minute 10: avg over 0..9 = (1000 + 100) / 10 = 110; 300 < 330
    obs += [tick(10.5, 1_500, 100)]  # 400 >= 330 -> fires
    _state, surges = run(obs, rule)
    assert [(s.current_volume, s.avg_volume_10m) for s in surges] == [(400, 110.0)]


def test_duplicates_and_reordering_do_not_inflate_volume() -> None:
    rule = SurgeRule(min_volume=1)
    base = [tick(m, 100 * (m + 1), 100) for m in range(12)]
    noisy = list(base)
    noisy.insert(5, base[4])  # a duplicate
    noisy.insert(9, base[3])  # an old tick arriving late
    s1, _ = run(base, rule)
    s2, _ = run(noisy, rule)
    assert s1 is not None and s2 is not None
    assert s1.minutes == s2.minutes and s1.cumulative == s2.cumulative == 1_200


def test_a_snapshot_sets_a_baseline_without_inventing_volume() -> None:
    rule = SurgeRule(min_volume=1)
    snap = Observation("000660", DAY, T0, 5_000_000, None, "snapshots")
    state, surge, _ = observe(None, snap, rule)
    assert surge is None and state.minutes == {} and state.cumulative == 5_000_000
    state, _, _ = observe(state, Observation("000660", DAY, T0 + MINUTE_US, 5_000_700, None, "snapshots"), rule)
    assert state.minutes == {T0 // MINUTE_US + 1: 700}


def test_a_new_business_day_starts_fresh_and_state_round_trips() -> None:
    rule = SurgeRule()
    state, _ = run([tick(m, 1_000 * (m + 1), 1_000) for m in range(15)], rule)
    assert state is not None
    again = SymbolWindows.from_record(state.to_record())
    assert again == state
    assert len(state.minutes) <= rule.retain_minutes
    nxt, _, _ = observe(state, Observation("005930", "20261123", T0 + 10_000 * MINUTE_US, 10, 10, "ticks"), rule)
    assert nxt.business_date == "20261123" and nxt.cumulative == 10 and sum(nxt.minutes.values()) == 10


def test_late_ticks_beyond_the_retained_minutes_are_flagged() -> None:
    rule = SurgeRule()
    state, _ = run([tick(m, 10 * (m + 1), 10) for m in range(20)], rule)
    state, surge, late = observe(state, tick(2, 5, 5), rule)
    assert late and surge is None and state.cumulative == 200


def test_priority_score_is_monotone_below_one() -> None:
    ratios = [0, 0.5, 1, 3, 6, 12, 57, 1e6]
    scores = [priority_score(r) for r in ratios]
    assert scores == sorted(scores) and scores[0] == 0 and all(s < 1 for s in scores)
    assert priority_score(57) == pytest.approx(0.95)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5_000)), min_size=1, max_size=200), st.integers(0, 10**6))
def test_windows_hold_exactly_the_growth_of_cumulative_volume(trades: list[tuple[int, int]], seed: int) -> None:
    """Over any stream (in minute order, then shuffled a little and duplicated), the retained minutes
    sum to the cumulative growth inside them, and a surge only fires when the rule holds."""
    rule = SurgeRule(min_volume=100, retain_minutes=50)
    trades.sort()
    cum = 0
    obs = []
    for minute, volume in trades:
        cum += volume
        obs.append(tick(minute, cum, volume))
    rng = random.Random(seed)
    noisy = list(obs)
    for _ in range(len(obs) // 10):
        noisy.insert(rng.randrange(len(noisy) + 1), rng.choice(obs))
    state, surges = run(noisy, rule)
    assert state is not None
    assert state.cumulative == cum
    first = noisy[0]  # the first sight counts its own trade; later growth lands in the minutes
    assert sum(state.minutes.values()) == cum - first.cumulative_volume + (first.trade_volume or 0)
    for s in surges:
        assert s.current_volume >= rule.min_volume
        assert s.current_volume >= rule.multiplier * s.avg_volume_10m
    assert len({s.window_start_us for s in surges}) == len(surges), "one event per minute at most"
