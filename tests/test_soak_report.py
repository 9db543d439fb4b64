"""The soak's measurements as pure functions: histogram percentiles, the busiest hour, sim-to-wall times."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest

from app.sim.ledger import Ledger
from app.soak import Fault, SoakHooks, SoakOptions, histogram, in_flight_at_cuts, peak_periods, quantiles

MIN = 60_000_000


def test_quantiles_interpolate_within_buckets_like_prometheus() -> None:
    # 100 observations: 50 under 0.1 s, 40 in (0.1, 0.5], 10 in (0.5, 1]
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, float("inf"): 100.0}
    q = quantiles(buckets)
    assert q["count"] == 100
    assert q["p50"] == pytest.approx(0.1)
    assert q["p90"] == pytest.approx(0.5)
    assert q["p99"] == pytest.approx(0.95)
    assert quantiles({0.1: 0.0, float("inf"): 4.0})["p50"] == 0.1  # in +Inf: the largest finite bound
    assert quantiles({})["p50"] is None


def test_histogram_reads_one_series_of_a_scrape() -> None:
    scraped = {
        "x_seconds_bucket{le=0.1,store=jsonl}": 3.0,
        "x_seconds_bucket{le=+Inf,store=jsonl}": 5.0,
        "x_seconds_bucket{le=0.1,store=postgres}": 1.0,
        "x_seconds_count{store=jsonl}": 5.0,
    }
    assert histogram(scraped, "x_seconds", store="jsonl") == {0.1: 3.0, float("inf"): 5.0}
    assert histogram(scraped, "x_seconds") == {0.1: 4.0, float("inf"): 5.0}


def test_the_busiest_hour_is_the_best_60_consecutive_minutes() -> None:
    ledger = Ledger()
    t0 = 1_000 * MIN
    for minute in range(180):
        ledger.records_by_minute[t0 + minute * MIN] = 100 if 50 <= minute < 110 else 10
    assert ledger.busiest_hour() == (t0 + 50 * MIN, 6000)


def test_wall_of_is_when_deliveries_first_passed_a_simulated_instant() -> None:
    ledger = Ledger()
    for i, until in enumerate((1_000_000, 1_500_000, 2_200_000, 3_100_000)):
        ledger.delivered(until, 100.0 + i)
    assert [u for u, _ in ledger.delivered_at] == [1_000_000, 2_200_000, 3_100_000]  # one entry per new second
    assert ledger.wall_of(2_000_000) == 102.0
    assert ledger.wall_of(1_000_000) == 100.0
    assert ledger.wall_of(9_000_000) is None
    assert ledger.delivered_until_us == 3_100_000


def test_the_fault_schedule_is_checked_and_the_burst_outnumbers_the_pool() -> None:
    day = dt.date(2026, 12, 4)
    with pytest.raises(ValueError, match="unknown fault"):
        SoakHooks(SoakOptions(faults=(Fault(dt.time(10), "unplug_the_server"),)), day)
    for options in (SoakOptions(), SoakOptions.short()):
        hooks = SoakHooks(options, day)
        assert len({s.symbol for s in hooks.burst}) == options.burst_symbols > 41
        assert {f.kind for f in options.faults} >= {
            "ws_drop",
            "kill_worker",
            "kill_sink",
            "restart_kafka",
            "restart_postgres",
            "leak_registration",
            "surge_burst",
        }
        assert options.min_peak_hour >= 3 * 50_287


def test_the_peak_ramps_up_in_steps_under_the_surge_multiplier_then_holds() -> None:
    day = dt.date(2026, 12, 4)
    options = SoakOptions(peak_from=dt.time(13, 30), peak_until=dt.time(15, 20), peak_factor=3.5)
    periods = peak_periods(options, day)
    factors = [p.factor for p in periods]
    assert factors == sorted(factors) and factors[-1] == 3.5
    steps = [b / a for a, b in zip([1.0, *factors], factors, strict=False)]
    assert max(steps) < 1.5  # far from the 3x a surge needs
    assert periods[0].start == dt.time(13, 30)
    assert sum(p.minutes for p in periods) == pytest.approx(110)
    for a, b in itertools.pairwise(periods):  # back to back, no overlap (overlapping factors would multiply)
        end = dt.datetime.combine(day, a.start) + dt.timedelta(minutes=a.minutes)
        assert end.time() == b.start


def test_bad_soak_options_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="speed"):
        SoakOptions(speed=0)
    with pytest.raises(ValueError, match="peak_from"):
        SoakOptions(peak_from=dt.time(16, 0))
    with pytest.raises(ValueError, match="outside"):
        SoakOptions(faults=(Fault(dt.time(16, 0), "ws_drop"),))


def _session(port: int, sent: int, reason: str) -> dict:
    return {"client_port": port, "records_sent": sent, "close_reason": reason}


def _bridge_line(port: int, records: int) -> str:
    return (
        f"2026-12-07 12:51:26,619 INFO app.bridge.service: KIS session 68e32eef603e closed: 9 frames, "
        f"{records} trade records received on local port {port}\n"
    )


def test_records_in_flight_at_a_cut_are_counted_per_connection_and_nowhere_else() -> None:
    sessions = [_session(50001, 1_000, "fault_drop"), _session(50002, 2_000, "client_closed")]
    log = "noise\n" + _bridge_line(50001, 940) + _bridge_line(50002, 2_000)
    assert in_flight_at_cuts(sessions, log) == {"lost_at_cuts": 60, "sessions_cut": 1, "sessions": 2, "problems": []}


def test_a_gap_on_a_connection_that_was_not_cut_or_a_missing_count_is_a_problem() -> None:
    sessions = [_session(50001, 1_000, "client_closed"), _session(50002, 5, "fault_drop"), _session(50003, 7, "x")]
    log = _bridge_line(50001, 999) + _bridge_line(50002, 6)
    got = in_flight_at_cuts(sessions, log)
    assert got["lost_at_cuts"] == 0
    assert got["problems"] == [
        "port 50001: KIS sent 1,000 trade records, the bridge received 999",
        "port 50002: KIS sent 5 trade records, the bridge received 6",
        "the bridge logged no count for its session on port 50003 (7 records sent)",
    ]
