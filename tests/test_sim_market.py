"""The simulator's fake KRX market: universe, determinism, record identities, schedule, surges, REST views."""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.kis.protocol import FIELD_INDEX, H0STCNT0_WIDTH
from app.kis.ticks import record_to_tick
from app.sim.market import (
    BOOTSTRAP_CODES,
    KST,
    Market,
    RatePeriod,
    SurgeSpec,
    Trade,
    _idx_of,
    _price_of,
    tick_size,
)

DAY = dt.date(2025, 3, 14)
F = FIELD_INDEX


def us(h: int, m: int = 0, s: int = 0, day: dt.date = DAY) -> int:
    """UTC microseconds of a KST wall time on ``day``."""
    return (int(dt.datetime(day.year, day.month, day.day, h, m, tzinfo=KST).timestamp()) + s) * 1_000_000


def kst_seconds(t: Trade) -> int:
    local = dt.datetime.fromtimestamp(t.event_time_us / 1e6, KST)
    return local.hour * 3600 + local.minute * 60 + local.second


def run(market: Market, start: int | None, until: int) -> list[Trade]:
    if start is not None:
        market.start_at(start)
    return market.advance_to(until)


def opening_market() -> Market:
    """The market most tests look at (fewer trades than the default, for speed)."""
    return Market(7, DAY, n_symbols=200, rate_scale=0.5)


@lru_cache(maxsize=1)
def opening_trades() -> tuple[Trade, ...]:
    """09:00:00-09:02:00 of ``opening_market`` in one call (cached: several tests read it)."""
    return tuple(opening_market().advance_to(us(9, 2)))


@lru_cache(maxsize=1)
def market_at_0902() -> Market:
    """``opening_market`` advanced to 09:02 (only read by the tests that share it)."""
    market = opening_market()
    market.advance_to(us(9, 2))
    return market


# ------------------------------------------------------------------------------------------ ticks


@pytest.mark.parametrize(
    ("price", "tick"),
    [
        (1, 1),
        (1_999, 1),
        (2_000, 5),
        (4_995, 5),
        (5_000, 10),
        (19_990, 10),
        (20_000, 50),
        (49_950, 50),
        (50_000, 100),
        (199_900, 100),
        (200_000, 500),
        (499_500, 500),
        (500_000, 1_000),
        (2_000_000, 1_000),
    ],
)
def test_tick_size_table(price: int, tick: int) -> None:
    assert tick_size(price) == tick


@given(st.integers(min_value=1, max_value=3_000_000))
def test_ladder_floors_to_a_valid_tick(price: int) -> None:
    idx = _idx_of(np.array([price], dtype=np.int64))
    on_tick = int(_price_of(idx)[0])
    nxt = int(_price_of(idx + 1)[0])
    assert on_tick <= price < nxt
    assert on_tick % tick_size(on_tick) == 0
    assert nxt - on_tick == tick_size(on_tick)


# ------------------------------------------------------------------------------------------ universe

CODE_RE = re.compile(r"^[0-9A-HJ-NP-TV-Z]{6}$")  # no I, O, U


@pytest.mark.parametrize("n", [6, 2000, 5000])
def test_codes_valid_unique_and_include_bootstrap(n: int) -> None:
    market = Market(3, DAY, n_symbols=n)
    codes = [s.code for s in market.symbols]
    assert len(codes) == n == len(set(codes)) == len(market.by_code)
    assert codes == sorted(codes)
    assert set(BOOTSTRAP_CODES) <= set(codes)
    for code in codes:
        assert CODE_RE.match(code), code
        if code not in BOOTSTRAP_CODES:
            assert code[1] in "01234", code
    if n >= 2000:
        assert sum(c.isdigit() for c in codes) > 0.85 * n  # mostly digits, some reform letters
        assert any(not c.isdigit() for c in codes)


def test_universe_is_realistic() -> None:
    market = Market(1, DAY)
    expected = {
        "005930": 70_000,
        "000660": 180_000,
        "373220": 400_000,
        "051910": 350_000,
        "068270": 180_000,
        "035720": 45_000,
    }
    for code, price in expected.items():
        spec = market.by_code[code]
        assert spec.prev_close == price and spec.market == "KOSPI" and spec.listed_shares > 10_000_000
    rates = np.array([s.base_rate_per_min for s in market.symbols])
    assert 1.0 <= float(np.median(rates)) <= 6.0  # median a few trades per minute
    assert (rates >= 100).sum() >= 3  # a few hundreds-per-minute names (more at the open)
    boot_rates = [market.by_code[c].base_rate_per_min for c in BOOTSTRAP_CODES]
    assert min(boot_rates) > float(np.quantile(rates, 0.95))  # the bootstrap names are highly liquid
    for s in market.symbols:
        assert s.prev_close % tick_size(s.prev_close) == 0
        assert s.market in ("KOSPI", "KOSDAQ") and s.name and s.mean_lot >= 1 and s.listed_shares > 0
    assert {s.market for s in market.symbols} == {"KOSPI", "KOSDAQ"}
    assert Market(1, DAY).symbols == market.symbols
    assert Market(2, DAY).symbols != market.symbols


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="n_symbols"):
        Market(1, DAY, n_symbols=5)
    with pytest.raises(ValueError, match="not in the universe"):
        Market(1, DAY, n_symbols=50, surges=[SurgeSpec("999999", dt.time(10), 1, 5)])
    with pytest.raises(ValueError, match="rate_scale"):
        Market(1, DAY, rate_scale=0)


# ------------------------------------------------------------------------------------------ records


def check_record(market: Market, trade: Trade) -> None:
    """Every documented identity of one rendered record, against the symbol's spec and limits."""
    r = trade.record
    assert len(r) == H0STCNT0_WIDTH
    assert all(isinstance(f, str) for f in r)
    spec = market.by_code[trade.symbol]
    quote = market.inquire_price(trade.symbol)
    upper, lower = int(quote["stck_mxpr"]), int(quote["stck_llam"])
    price = int(r[F["STCK_PRPR"]])
    open_, high, low = int(r[F["STCK_OPRC"]]), int(r[F["STCK_HGPR"]]), int(r[F["STCK_LWPR"]])
    ask, bid = int(r[F["ASKP1"]]), int(r[F["BIDP1"]])
    for p in (price, open_, high, low, ask, bid):
        assert p % tick_size(p) == 0, (p, r)
    assert lower <= bid < ask <= upper
    assert ask == bid + tick_size(bid)
    assert lower <= low <= min(price, open_) and max(price, open_) <= high <= upper
    side = r[F["CCLD_DVSN"]]
    assert side in ("1", "5")
    assert price == (ask if side == "1" else bid)
    vrss = price - spec.prev_close
    assert int(r[F["PRDY_VRSS"]]) == vrss
    want_sign = "1" if price == upper else "4" if price == lower else "2" if vrss > 0 else "5" if vrss < 0 else "3"
    assert r[F["PRDY_VRSS_SIGN"]] == want_sign
    assert re.fullmatch(r"-?\d+\.\d\d", r[F["PRDY_CTRT"]]) and r[F["PRDY_CTRT"]] != "-0.00"
    assert abs(float(r[F["PRDY_CTRT"]]) - vrss * 100 / spec.prev_close) <= 0.0051
    vol, acml, value = int(r[F["CNTG_VOL"]]), int(r[F["ACML_VOL"]]), int(r[F["ACML_TR_PBMN"]])
    assert 1 <= vol <= acml
    assert abs(float(r[F["WGHN_AVRG_STCK_PRC"]]) - value / acml) <= 0.0051
    assert low <= value / acml <= high
    seln, shnu = int(r[F["SELN_CNTG_CSNU"]]), int(r[F["SHNU_CNTG_CSNU"]])
    assert int(r[F["NTBY_CNTG_CSNU"]]) == shnu - seln
    seln_v, shnu_v = int(r[F["SELN_CNTG_SMTN"]]), int(r[F["SHNU_CNTG_SMTN"]])
    assert seln_v + shnu_v == acml
    if seln_v:
        assert abs(float(r[F["CTTR"]]) - shnu_v * 100 / seln_v) <= 0.0051
    for hour, sign, diff, ref in (
        ("OPRC_HOUR", "OPRC_VRSS_PRPR_SIGN", "OPRC_VRSS_PRPR", open_),
        ("HGPR_HOUR", "HGPR_VRSS_PRPR_SIGN", "HGPR_VRSS_PRPR", high),
        ("LWPR_HOUR", "LWPR_VRSS_PRPR_SIGN", "LWPR_VRSS_PRPR", low),
    ):
        d = price - ref
        assert int(r[F[diff]]) == d
        assert r[F[sign]] == ("2" if d > 0 else "5" if d < 0 else "3")
        assert "090000" <= r[F[hour]] <= r[F["STCK_CNTG_HOUR"]]
    assert r[F["BSOP_DATE"]] == DAY.strftime("%Y%m%d")
    assert (r[F["NEW_MKOP_CLS_CODE"]], r[F["TRHT_YN"]], r[F["HOUR_CLS_CODE"]], r[F["MRKT_TRTM_CLS_CODE"]]) == (
        "20",
        "N",
        "0",
        "",
    )
    assert r[F["VI_STND_PRC"]] == r[F["STCK_OPRC"]]
    assert abs(float(r[F["VOL_TNRT"]]) - acml * 100 / spec.listed_shares) <= 0.0051
    smns = int(r[F["PRDY_SMNS_HOUR_ACML_VOL"]])
    assert smns >= 1 and abs(float(r[F["PRDY_SMNS_HOUR_ACML_VOL_RATE"]]) - acml * 100 / smns) <= 0.0051
    for name in ("ASKP_RSQN1", "BIDP_RSQN1"):
        assert int(r[F[name]]) >= 1
    assert int(r[F["TOTAL_ASKP_RSQN"]]) >= int(r[F["ASKP_RSQN1"]])
    assert int(r[F["TOTAL_BIDP_RSQN"]]) >= int(r[F["BIDP_RSQN1"]])

    tick = record_to_tick(
        r,
        tr_id="H0STCNT0",
        received_at_us=0,
        app_key_id="k",
        session_id="s",
        frame_seq=0,
        record_index=0,
        record_count=1,
    )
    assert tick["symbol"] == trade.symbol == r[0]
    assert tick["event_time_us"] == trade.event_time_us
    assert tick["price"] == price and tick["cumulative_volume"] == acml and tick["trade_volume"] == vol
    assert tick["side"] == ("buy" if side == "1" else "sell")


def test_every_record_parses_and_keeps_the_identities() -> None:
    trades = opening_trades()
    assert len(trades) > 1000
    market = opening_market()  # the same universe and limits
    for t in trades:
        check_record(market, t)


def test_records_after_start_at_and_through_the_close() -> None:
    market = Market(11, DAY, n_symbols=100, surges=[SurgeSpec("005930", dt.time(15, 19), 5, 20.0)], rate_scale=0.3)
    trades = run(market, us(15, 18, 30), us(15, 31))
    assert trades
    for t in trades:
        check_record(market, t)


def test_core_fields_match_the_market_state_second_by_second() -> None:
    market = Market(5, DAY, n_symbols=150)
    market.start_at(us(10, 30))
    before = {s.code: market.cumulative_volume(s.code) for s in market.symbols}
    seen: set[str] = set()
    for s in range(30):
        trades = market.advance_to(us(10, 30, s + 1))
        assert all(t.event_time_us == us(10, 30, s) for t in trades)
        last: dict[str, Trade] = {}
        for t in trades:
            last[t.symbol] = t
        for code, t in last.items():
            quote = market.inquire_price(code)
            assert t.record[F["ACML_VOL"]] == quote["acml_vol"] == str(market.cumulative_volume(code))
            assert t.record[F["STCK_PRPR"]] == quote["stck_prpr"]
            assert t.record[F["ACML_TR_PBMN"]] == quote["acml_tr_pbmn"]
            for rec_field, out_field in (
                ("STCK_OPRC", "stck_oprc"),
                ("STCK_HGPR", "stck_hgpr"),
                ("STCK_LWPR", "stck_lwpr"),
                ("PRDY_VRSS", "prdy_vrss"),
                ("PRDY_VRSS_SIGN", "prdy_vrss_sign"),
                ("PRDY_CTRT", "prdy_ctrt"),
                ("WGHN_AVRG_STCK_PRC", "wghn_avrg_stck_prc"),
            ):
                assert t.record[F[rec_field]] == quote[out_field], rec_field
        seen |= set(last)
    assert len(seen) > 20
    assert market.position_us() == us(10, 30, 30)
    assert all(market.cumulative_volume(c) >= v for c, v in before.items())


def test_cumulative_volume_accumulates_trade_volumes() -> None:
    market = Market(9, DAY, n_symbols=200)
    market.start_at(us(11, 0))
    start = {s.code: market.cumulative_volume(s.code) for s in market.symbols}
    start_val = {s.code: int(market.inquire_price(s.code)["acml_tr_pbmn"]) for s in market.symbols}
    trades = market.advance_to(us(11, 2))
    acml, value = dict(start), dict(start_val)
    for t in trades:
        vol, price = int(t.record[F["CNTG_VOL"]]), int(t.record[F["STCK_PRPR"]])
        acml[t.symbol] += vol
        value[t.symbol] += vol * price
        assert int(t.record[F["ACML_VOL"]]) == acml[t.symbol]
        assert int(t.record[F["ACML_TR_PBMN"]]) == value[t.symbol]
    assert {c: market.cumulative_volume(c) for c in acml} == acml
    assert sum(acml.values()) > sum(start.values())


def test_trades_are_ordered_by_time_symbol_sequence() -> None:
    trades = opening_trades()
    keys = [(t.event_time_us, t.symbol, int(t.record[F["ACML_VOL"]])) for t in trades]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    per_second_symbol: dict[tuple[int, str], int] = defaultdict(int)
    for t in trades:
        per_second_symbol[(t.event_time_us, t.symbol)] += 1
    assert max(per_second_symbol.values()) > 1  # several trades of one symbol in one second happen


# ------------------------------------------------------------------------------------------ determinism


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(min_value=-5_000_000, max_value=44_999_999), min_size=1, max_size=12))
def test_chunking_does_not_change_the_trades(cuts_us: list[int]) -> None:
    market = Market(7, DAY, n_symbols=100, rate_scale=0.3)
    base = us(9)
    trades: list[Trade] = []
    for cut in cuts_us:  # unsorted: going back is a no-op
        trades += market.advance_to(base + cut)
    trades += market.advance_to(us(9, 0, 45))
    assert tuple(trades) == first_45s()


@lru_cache(maxsize=1)
def first_45s() -> tuple[Trade, ...]:
    return tuple(Market(7, DAY, n_symbols=100, rate_scale=0.3).advance_to(us(9, 0, 45)))


def test_one_second_steps_equal_one_call() -> None:
    market = opening_market()
    steps: list[Trade] = []
    for s in range(120):
        steps += market.advance_to(us(9, 0, s) + 999_999)  # within second s: generates up to s - 1
    steps += market.advance_to(us(9, 2))
    assert tuple(steps) == opening_trades()
    assert market.advance_to(us(9, 1)) == []  # the past is not generated again


def test_same_seed_same_market_different_seed_or_day_differs() -> None:
    a, b = opening_market(), opening_market()
    assert a.advance_to(us(9, 1)) == b.advance_to(us(9, 1))
    assert a.advance_to(us(9, 2)) == b.advance_to(us(9, 2))
    assert [a.inquire_price(s.code) for s in a.symbols] == [b.inquire_price(s.code) for s in b.symbols]
    c = Market(8, DAY, n_symbols=200, rate_scale=0.5).advance_to(us(9, 1))
    other_day = DAY + dt.timedelta(days=3)
    d = Market(7, other_day, n_symbols=200, rate_scale=0.5).advance_to(us(9, 1, day=other_day))
    first = opening_trades()[:200]
    assert [t.record for t in c[:200]] != [t.record for t in first]
    assert [t.record[:33] for t in d[:200]] != [t.record[:33] for t in first]


def test_start_at_is_deterministic_and_synthesises_the_morning() -> None:
    a = Market(4, DAY, n_symbols=200)
    b = Market(4, DAY, n_symbols=200)
    a.start_at(us(10, 30, 0) + 123)
    b.advance_to(us(9, 0, 20))  # whatever happened before, start_at re-synthesises the same state
    b.start_at(us(10, 30, 0) + 456_789)
    assert a.position_us() == b.position_us() == us(10, 30)
    assert [a.inquire_price(s.code) for s in a.symbols] == [b.inquire_price(s.code) for s in b.symbols]
    assert a.advance_to(us(10, 31)) == b.advance_to(us(10, 31))
    sam = a.inquire_price("005930")
    # about 90 minutes of a 240 trades/min, 60-share symbol, front-loaded by the open: millions of shares
    assert 500_000 < int(sam["acml_vol"]) < 5_000_000
    assert int(sam["stck_lwpr"]) <= int(sam["stck_prpr"]) <= int(sam["stck_hgpr"])
    assert int(sam["stck_lwpr"]) <= float(sam["wghn_avrg_stck_prc"]) <= int(sam["stck_hgpr"])
    after_close = Market(4, DAY, n_symbols=200)
    after_close.start_at(us(16))
    assert after_close.advance_to(us(18)) == []
    day_vs_prev = {
        s.code: float(after_close.inquire_price(s.code)["prdy_vrss_vol_rate"]) / 100 for s in after_close.symbols
    }
    assert 0.6 < float(np.median(list(day_vs_prev.values()))) < 1.6  # a normal day trades about yesterday's volume
    for code in BOOTSTRAP_CODES:
        assert 0.3 < day_vs_prev[code] < 3.0, code
    fresh = Market(4, DAY, n_symbols=200)
    fresh.start_at(us(8, 30))
    assert all(fresh.cumulative_volume(s.code) == 0 for s in fresh.symbols)
    assert fresh.inquire_price("005930")["stck_prpr"] == "70000"


# ------------------------------------------------------------------------------------------ schedule


def test_no_trades_outside_hours_and_one_closing_print_per_symbol() -> None:
    market = Market(2, DAY, n_symbols=200)
    market.start_at(us(7, 0))
    assert market.advance_to(us(9)) == []
    assert market.position_us() == us(9)
    first = market.advance_to(us(9, 0, 1))
    assert first and {t.record[F["STCK_CNTG_HOUR"]] for t in first} == {"090000"}

    market.start_at(us(15, 19))
    trades = market.advance_to(us(15, 40))
    times = [kst_seconds(t) for t in trades]
    cont_end, close = 15 * 3600 + 20 * 60, 15 * 3600 + 30 * 60
    assert all(s < cont_end or s == close for s in times)
    assert any(s < cont_end for s in times)
    closing = [t for t, s in zip(trades, times, strict=True) if s == close]
    traded = [s.code for s in market.symbols if market.cumulative_volume(s.code) > 0]
    assert sorted(t.symbol for t in closing) == sorted(traded)  # exactly one per traded symbol
    assert market.advance_to(us(23, 59)) == []
    assert market.advance_to(us(9, 30, day=DAY + dt.timedelta(days=1))) == []


def test_u_shape_open_busier_than_lunch() -> None:
    market = Market(1, DAY, n_symbols=100, rate_scale=0.25)
    open_trades = len(market.advance_to(us(9, 10)))
    market.start_at(us(12))
    lunch_trades = len(market.advance_to(us(12, 10)))
    assert open_trades > 3 * lunch_trades > 0


# ------------------------------------------------------------------------------------------ surges


def minute_volume(trades: list[Trade], code: str, lo: int, hi: int) -> int:
    return sum(int(t.record[F["CNTG_VOL"]]) for t in trades if t.symbol == code and lo <= t.event_time_us < hi)


def pick_mid_symbol(market: Market, rate: float = 10.0) -> str:
    """A non-bootstrap symbol with about ``rate`` trades a minute."""
    return min(
        (s for s in market.symbols if s.code not in BOOTSTRAP_CODES), key=lambda s: abs(s.base_rate_per_min - rate)
    ).code


@pytest.mark.parametrize("seed", [1, 2])
def test_scheduled_surge_multiplies_volume(seed: int) -> None:
    plain = Market(seed, DAY, n_symbols=100, rate_scale=0.3)  # fewer trades for speed: ~10/min on the symbol
    code = pick_mid_symbol(plain, rate=30.0)
    surged = Market(seed, DAY, n_symbols=100, surges=[SurgeSpec(code, dt.time(11, 0), 3.0, 10.0)], rate_scale=0.3)
    assert surged.surges == [SurgeSpec(code, dt.time(11, 0), 3.0, 10.0)]
    ratios = []
    for market in (plain, surged):
        trades = run(market, us(10, 50), us(11, 1))
        before = minute_volume(trades, code, us(10, 50), us(11)) / 10
        during = minute_volume(trades, code, us(11), us(11, 1))
        ratios.append(during / max(before, 1))
    assert ratios[1] > 5.0  # 10x the trades with sqrt(10)x lots: well over 3x
    assert ratios[0] < 3.0  # and nothing like it without the surge


def test_random_surges_are_deterministic_and_valid() -> None:
    a = Market(6, DAY, n_symbols=100, random_surges=5, rate_scale=0.3)
    b = Market(6, DAY, n_symbols=100, random_surges=5, rate_scale=0.3)
    given_surge = SurgeSpec("005930", dt.time(10), 1, 2)
    c = Market(7, DAY, n_symbols=100, surges=[given_surge], random_surges=5)
    assert a.surges == b.surges and len(a.surges) == 5
    assert c.surges[0] == given_surge and len(c.surges) == 6 and c.surges[1:] != a.surges
    for s in a.surges:
        assert s.symbol in a.by_code and s.symbol not in BOOTSTRAP_CODES
        assert dt.time(9) <= s.start and (s.start.hour * 60 + s.start.minute + s.minutes) <= 15 * 60 + 20
        assert s.factor > 1 and s.minutes > 0
    s = a.surges[0]
    start = us(s.start.hour, s.start.minute, s.start.second)
    a.start_at(start - 600_000_000)
    trades = a.advance_to(start + 60_000_000)
    before = minute_volume(trades, s.symbol, start - 600_000_000, start) / 10
    assert minute_volume(trades, s.symbol, start, start + 60_000_000) > 3 * max(before, 1)


def test_rate_scale_multiplies_trades() -> None:
    base = len(Market(3, DAY, n_symbols=100).advance_to(us(9, 0, 30)))
    scaled = len(Market(3, DAY, n_symbols=100, rate_scale=3.0).advance_to(us(9, 0, 30)))
    assert 2.5 * base < scaled < 3.5 * base


# ------------------------------------------------------------------------------------------ REST views

INQUIRE_FIELDS = (
    "stck_prpr",
    "prdy_vrss",
    "prdy_vrss_sign",
    "prdy_ctrt",
    "acml_vol",
    "acml_tr_pbmn",
    "stck_oprc",
    "stck_hgpr",
    "stck_lwpr",
    "stck_mxpr",
    "stck_llam",
    "stck_sdpr",
    "wghn_avrg_stck_prc",
    "vol_tnrt",
    "lstn_stcn",
    "stck_shrn_iscd",
    "iscd_stat_cls_code",
    "temp_stop_yn",
    "prdy_vrss_vol_rate",
    "rprs_mrkt_kor_name",
    "bstp_kor_isnm",
)
RANK_FIELDS = (
    "hts_kor_isnm",
    "mksc_shrn_iscd",
    "data_rank",
    "stck_prpr",
    "prdy_vrss_sign",
    "prdy_vrss",
    "prdy_ctrt",
    "acml_vol",
    "prdy_vol",
    "lstn_stcn",
    "avrg_vol",
    "n_befr_clpr_vrss_prpr_rate",
    "vol_inrt",
    "vol_tnrt",
    "nday_vol_tnrt",
    "avrg_tr_pbmn",
    "tr_pbmn_tnrt",
    "nday_tr_pbmn_tnrt",
    "acml_tr_pbmn",
)


def test_inquire_price_matches_state() -> None:
    market = market_at_0902()
    for spec in market.symbols:
        out = market.inquire_price(spec.code)
        assert set(INQUIRE_FIELDS) <= set(out) and all(isinstance(v, str) for v in out.values())
        assert out["acml_vol"] == str(market.cumulative_volume(spec.code))
        assert out["stck_shrn_iscd"] == spec.code and out["stck_sdpr"] == str(spec.prev_close)
        assert int(out["stck_prpr"]) - int(out["prdy_vrss"]) == spec.prev_close
        assert (out["iscd_stat_cls_code"], out["temp_stop_yn"]) == ("55", "N")
        assert out["rprs_mrkt_kor_name"] == spec.market and out["lstn_stcn"] == str(spec.listed_shares)
        assert int(out["stck_llam"]) < spec.prev_close < int(out["stck_mxpr"])
        assert int(out["stck_mxpr"]) <= spec.prev_close * 1.3 and int(out["stck_llam"]) >= spec.prev_close * 0.7
    last = {t.symbol: t for t in opening_trades()}
    for code, t in last.items():
        assert market.inquire_price(code)["stck_prpr"] == t.record[F["STCK_PRPR"]]
    with pytest.raises(KeyError):
        market.inquire_price("999999")
    with pytest.raises(KeyError):
        market.cumulative_volume("999999")


@pytest.mark.parametrize(
    ("blng", "key"),
    [("0", "acml_vol"), ("1", "vol_inrt"), ("2", "vol_tnrt"), ("3", "acml_tr_pbmn"), ("4", "tr_pbmn_tnrt")],
)
def test_volume_rank_sorted_and_consistent(blng: str, key: str) -> None:
    market = market_at_0902()
    rows = market.volume_rank(limit=50, blng_cls_code=blng)
    assert len(rows) == 30
    values = [float(r[key]) for r in rows]
    assert values == sorted(values, reverse=True)
    assert [r["data_rank"] for r in rows] == [str(i) for i in range(1, 31)]
    for r in rows:
        assert set(RANK_FIELDS) <= set(r) and all(isinstance(v, str) for v in r.values())
        code = r["mksc_shrn_iscd"]
        assert r["acml_vol"] == str(market.cumulative_volume(code))
        assert r["stck_prpr"] == market.inquire_price(code)["stck_prpr"]
        assert r["hts_kor_isnm"] == market.by_code[code].name
    if blng == "0":
        top = max(market.symbols, key=lambda s: market.cumulative_volume(s.code))
        assert rows[0]["mksc_shrn_iscd"] == top.code
        assert [r["mksc_shrn_iscd"] for r in market.volume_rank(5)] == [r["mksc_shrn_iscd"] for r in rows[:5]]
    assert market.volume_rank(limit=0, blng_cls_code=blng) == []


def test_volume_rank_increase_rate_finds_a_surge() -> None:
    market = Market(1, DAY, n_symbols=100)
    code = pick_mid_symbol(market)
    market = Market(1, DAY, n_symbols=100, surges=[SurgeSpec(code, dt.time(10, 0), 10.0, 30.0)])
    market.start_at(us(10))
    market.advance_to(us(10, 10))
    assert code in [r["mksc_shrn_iscd"] for r in market.volume_rank(5, "1")]
    with pytest.raises(ValueError, match="FID_BLNG_CLS_CODE"):
        market.volume_rank(5, "9")


def test_a_paused_clock_holds_and_resumes_without_a_jump() -> None:
    import datetime as dt

    from app.sim.clock import KST, SimClock

    now = [100.0]
    clock = SimClock(dt.datetime(2026, 1, 5, 9, 0, tzinfo=KST), speed=10, monotonic=lambda: now[0])
    now[0] += 1
    clock.pause()
    held = clock.now_us()
    now[0] += 50
    assert clock.now_us() == held, "paused: simulated time stands still"
    clock.resume()
    now[0] += 2
    assert clock.now_us() == held + 20_000_000, "resumed from where it stopped, at the same speed"


def test_a_rate_period_multiplies_every_symbols_trades_there_and_only_there() -> None:
    plain = Market(3, DAY, n_symbols=200, rate_scale=0.3)
    busy = Market(3, DAY, n_symbols=200, rate_scale=0.3, rate_periods=[RatePeriod(dt.time(11, 0), 10.0, 3.0)])
    counts = []
    for market in (plain, busy):
        trades = run(market, us(10, 50), us(11, 10))
        counts.append((sum(t.event_time_us < us(11) for t in trades), sum(t.event_time_us >= us(11) for t in trades)))
    (plain_before, plain_during), (busy_before, busy_during) = counts
    assert busy_before == plain_before  # the same seconds, the same draws, before the period
    assert 2.6 < busy_during / plain_during < 3.4  # Poisson counts over thousands of trades
    with pytest.raises(ValueError, match="rate period"):
        Market(3, DAY, n_symbols=200, rate_periods=[RatePeriod(dt.time(11, 0), 10.0, 0.0)])
