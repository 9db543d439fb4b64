"""A deterministic, seeded fake KRX market for the KIS simulator. Pure computation: no I/O, no wall clock.

The market is a universe of symbols (``SymbolSpec``) whose trades are generated one whole second at a time.
The trades of a second depend only on the seed, the business date, that second and the state at its start:
a per-second numpy ``Generator`` seeded with ``(seed, date, second)`` draws Poisson trade counts for every
symbol at once, then sides, lots and quote moves for the trades drawn. So advancing in any chunking, or in two
instances with the same seed, yields identical trades.

Model (per symbol):

- trade rate = ``base_rate_per_min`` x an intraday U-shape (high at 09:00 and before 15:20, low at lunch,
  normalised to mean 1 over the continuous session) x ``rate_scale`` x the factor of any active surge;
- lots are lognormal around ``mean_lot`` (x sqrt(factor) during a surge), mostly small, with rare blocks;
- the quote is bid/ask one tick apart on the KRX tick ladder, kept within the ±30 % daily limits; a
  buyer-initiated trade prints at the ask, a seller-initiated one at the bid, and moves the quote one tick in
  its direction with a per-symbol probability (set so the day's volatility is realistic);
- continuous trading 09:00:00-15:19:59 KST, nothing 15:20:00-15:29:59, one closing-auction print per traded
  symbol at 15:30:00, nothing outside.

Each trade is rendered as the 46 H0STCNT0 fields (``app.kis.protocol.H0STCNT0_FIELDS``) with the documented
identities (signed deltas, VWAP, NTBY, CTTR, *_VRSS_PRPR, PRDY_SMNS_HOUR rate, VI_STND_PRC = open).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

KST: dt.tzinfo = ZoneInfo("Asia/Seoul")

BOOTSTRAP_CODES = ("005930", "000660", "373220", "051910", "068270", "035720")

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

OPEN_S = 9 * 3600  # 09:00:00, first second of continuous trading
CONT_END_S = 15 * 3600 + 20 * 60  # 15:20:00, first second without continuous trading
CLOSE_S = 15 * 3600 + 30 * 60  # 15:30:00, the closing-auction print
CONT_SECONDS = CONT_END_S - OPEN_S  # 22,800
SESSION_MINUTES = CONT_SECONDS / 60.0

_US = 1_000_000
_MASK64 = (1 << 64) - 1
_TAG_UNIVERSE = 0x554E4956  # stream tags keep the seeded streams apart
_TAG_SURGES = 0x53555247
_TAG_START = 0x53544152
_BIG = 10**8  # larger than any price: offsets for segmented running max/min

# KRX tick table since 2023-01-25 (KOSPI and KOSDAQ alike): band start price and tick size.
_BAND_PRICE: I64 = np.array([0, 2_000, 5_000, 20_000, 50_000, 200_000, 500_000], dtype=np.int64)
_BAND_TICK: I64 = np.array([1, 5, 10, 50, 100, 500, 1_000], dtype=np.int64)
# Ladder index of each band's first price: prices map 1:1 onto consecutive integers.
_BAND_IDX: I64 = np.concatenate(([0], np.cumsum(np.diff(_BAND_PRICE) // _BAND_TICK[:-1]))).astype(np.int64)

_SIGNS = ("0", "1", "2", "3", "4", "5")  # PRDY_VRSS_SIGN by code
_DIFF_SIGNS = ("3", "2", "5")  # *_VRSS_PRPR_SIGN by np.sign(diff): 0 flat, 1 up, -1 down
_SIDES = ("5", "1")  # CCLD_DVSN by buyer-initiated 0/1
_HHMMSS: list[str] = [f"{s // 3600:02d}{s // 60 % 60:02d}{s % 60:02d}" for s in range(CLOSE_S + 1)]  # by KST second
_F2 = "%.2f".__mod__

_LOT_SIGMA = 1.0
_BLOCK_P = 0.002  # probability that a trade is a block
_BLOCK_MULT = 30.0
_SURGE_BUY_P = 0.62  # buyers dominate a surge, so its price drifts up


def tick_size(price: int) -> int:
    """The KRX tick for a price (table since 2023-01-25, same for KOSPI and KOSDAQ)."""
    if price < 2_000:
        return 1
    if price < 5_000:
        return 5
    if price < 20_000:
        return 10
    if price < 50_000:
        return 50
    if price < 200_000:
        return 100
    if price < 500_000:
        return 500
    return 1_000


def _idx_of(price: I64) -> I64:
    """Ladder index of the highest valid price <= price."""
    band = np.searchsorted(_BAND_PRICE, price, side="right") - 1
    return (_BAND_IDX[band] + (price - _BAND_PRICE[band]) // _BAND_TICK[band]).astype(np.int64)


def _price_of(idx: I64) -> I64:
    band = np.searchsorted(_BAND_IDX, idx, side="right") - 1
    return (_BAND_PRICE[band] + (idx - _BAND_IDX[band]) * _BAND_TICK[band]).astype(np.int64)


# every ladder price (up to the highest upper limit) as a string, shared by all records
_PRICE_STRS: list[str] = [str(p) for p in _price_of(np.arange(int(_idx_of(np.array([2_000_000]))[0]) + 2)).tolist()]


def _u64(seed: int) -> int:
    return seed & _MASK64


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    code: str
    name: str
    market: str  # "KOSPI" | "KOSDAQ"
    prev_close: int
    base_rate_per_min: float  # mean trades per minute over the continuous session (before rate_scale)
    mean_lot: float  # mean shares per trade
    listed_shares: int


@dataclass(frozen=True, slots=True)
class SurgeSpec:
    """Trade rate x factor and lots x sqrt(factor) for ``symbol`` during [start, start + minutes) KST."""

    symbol: str
    start: dt.time
    minutes: float
    factor: float


@dataclass(frozen=True, slots=True)
class RatePeriod:
    """Every symbol's trade rate x ``factor`` during [start, start + minutes) KST: a busy afternoon, say.
    Lots and the quote model stay as they are, so the day's volume grows with the number of trades."""

    start: dt.time
    minutes: float
    factor: float


@dataclass(frozen=True, slots=True)
class Trade:
    symbol: str
    event_time_us: int  # UTC microseconds of the trade's second
    record: list[str]  # the 46 H0STCNT0 fields as KIS sends them


# ------------------------------------------------------------------------------------------ universe

_BOOTSTRAP: dict[str, tuple[str, str, int, float, float, int, float, str]] = {
    # code: (name, market, prev_close, trades/min, mean lot, listed shares, daily volatility, sector)
    "005930": ("삼성전자", "KOSPI", 70_000, 240.0, 60.0, 5_969_782_550, 0.016, "전기·전자"),
    "000660": ("SK하이닉스", "KOSPI", 180_000, 180.0, 15.0, 728_002_365, 0.022, "전기·전자"),
    "373220": ("LG에너지솔루션", "KOSPI", 400_000, 60.0, 5.0, 234_000_000, 0.022, "전기·전자"),
    "051910": ("LG화학", "KOSPI", 350_000, 45.0, 6.0, 70_592_343, 0.024, "화학"),
    "068270": ("셀트리온", "KOSPI", 180_000, 70.0, 12.0, 216_900_000, 0.02, "제약"),
    "035720": ("카카오", "KOSPI", 45_000, 90.0, 40.0, 442_000_000, 0.022, "IT 서비스"),
}

_NAME_HEADS = (
    "한국",
    "대한",
    "삼화",
    "동양",
    "서울",
    "신한",
    "현대",
    "대성",
    "한일",
    "우리",
    "태양",
    "미래",
    "세진",
    "동화",
    "성원",
    "광명",
    "한빛",
    "극동",
    "대림",
    "금호",
    "유니",
    "코리아",
    "에이스",
    "그린",
    "제일",
    "동부",
    "한솔",
    "새한",
    "국제",
    "신성",
    "아진",
    "대원",
    "화신",
    "경동",
    "삼진",
    "영진",
    "동성",
    "일진",
    "한라",
    "청호",
)
_NAME_TAILS = (
    "전자",
    "바이오",
    "화학",
    "제약",
    "건설",
    "정밀",
    "산업",
    "테크",
    "소재",
    "에너지",
    "반도체",
    "시스템",
    "홀딩스",
    "물산",
    "식품",
    "중공업",
    "통신",
    "게임즈",
    "엔터",
    "디스플레이",
    "로보틱스",
    "머티리얼즈",
    "솔루션",
    "메디칼",
    "철강",
    "해운",
    "증권",
    "생명과학",
    "인터내셔널",
    "모빌리티",
)
_SECTORS = (
    "전기·전자",
    "화학",
    "제약",
    "의료정밀",
    "기계",
    "운수장비",
    "유통업",
    "건설업",
    "서비스업",
    "IT 서비스",
    "음식료품",
    "철강금속",
    "금융업",
    "섬유의복",
    "통신업",
    "오락·문화",
    "반도체",
    "소프트웨어",
)
_CODE_LETTERS = "ABCDEFGHJKLMNPQRSTVWXYZ"  # the code reform's letters: A-Z without I, O, U
_MAX_SYMBOLS = 20_000


def _make_codes(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` unique codes including the bootstrap ones: [0-3][0-4]dd[d|letter][0|5], mostly 0xxxx0."""
    seen = set(BOOTSTRAP_CODES)
    codes = list(BOOTSTRAP_CODES)
    first_pool = "0000000123"
    while len(codes) < n:
        m = 2 * (n - len(codes)) + 16
        c0 = rng.integers(0, len(first_pool), m)
        c1 = rng.integers(0, 5, m)
        c23 = rng.integers(0, 100, m)
        letter = rng.random(m) < 0.06
        c4d = rng.integers(0, 10, m)
        c4l = rng.integers(0, len(_CODE_LETTERS), m)
        pref = rng.random(m) < 0.04
        for i in range(m):
            c4 = _CODE_LETTERS[c4l[i]] if letter[i] else str(c4d[i])
            code = f"{first_pool[c0[i]]}{c1[i]}{c23[i]:02d}{c4}{'5' if pref[i] else '0'}"
            if code not in seen and code != "000000":
                seen.add(code)
                codes.append(code)
                if len(codes) == n:
                    break
    return sorted(codes)


def _make_names(rng: np.random.Generator, n: int) -> list[str]:
    combos = [h + t for h in _NAME_HEADS for t in _NAME_TAILS]
    order = rng.permutation(len(combos))
    return [combos[order[i % len(combos)]] + ("" if i < len(combos) else str(i // len(combos) + 1)) for i in range(n)]


def _rate_factors(periods: Sequence[RatePeriod]) -> F64:
    """The market-wide rate factor of every continuous second (1 outside the periods; overlaps multiply)."""
    factor = np.ones(CONT_SECONDS, np.float64)
    for p in periods:
        if not p.factor > 0 or not p.minutes > 0:
            raise ValueError(f"rate period factor and minutes must be positive: {p}")
        a = p.start.hour * 3600 + p.start.minute * 60 + p.start.second - OPEN_S
        factor[max(0, a) : max(0, a + round(p.minutes * 60))] *= p.factor
    return factor


def _u_shape(n_seconds: int = CONT_SECONDS) -> F64:
    """Intraday trade-rate multiplier per continuous-session second, mean 1."""
    t = np.arange(n_seconds, dtype=np.float64) / 60.0  # minutes since 09:00
    end = n_seconds / 60.0
    raw = 0.42 + 2.0 * np.exp(-t / 10.0) + 1.1 * np.exp(-(end - t) / 20.0) - 0.12 * np.exp(-(((t - 200.0) / 45.0) ** 2))
    return np.asarray(raw / raw.mean(), dtype=np.float64)


# ------------------------------------------------------------------------------------------ market


class Market:
    """A seeded KRX trading day: ``advance_to`` generates trades, the REST views read the state."""

    def __init__(
        self,
        seed: int,
        business_date: dt.date,
        n_symbols: int = 2000,
        surges: Sequence[SurgeSpec] = (),
        random_surges: int = 0,
        rate_scale: float = 1.0,
        rate_periods: Sequence[RatePeriod] = (),
    ) -> None:
        if not len(BOOTSTRAP_CODES) <= n_symbols <= _MAX_SYMBOLS:
            raise ValueError(f"n_symbols must be in {len(BOOTSTRAP_CODES)}..{_MAX_SYMBOLS}, got {n_symbols}")
        if not rate_scale > 0:
            raise ValueError(f"rate_scale must be positive, got {rate_scale}")
        if random_surges < 0:
            raise ValueError(f"random_surges must be >= 0, got {random_surges}")
        self.seed = seed
        self.business_date = business_date
        self.rate_scale = float(rate_scale)
        self._seed64 = _u64(seed)
        self._date_ord = business_date.toordinal()
        self._bsop = business_date.strftime("%Y%m%d")
        self._midnight_s = (business_date - dt.date(1970, 1, 1)).days * 86_400 - 9 * 3600
        self._build_universe(n_symbols)
        self._profile = _u_shape()
        self._prof_cum: F64 = np.concatenate(([0.0], np.cumsum(self._profile)))
        # fraction of a normal day's volume traded up to and including each continuous second
        self._day_frac: F64 = self._prof_cum[1:] / self._prof_cum[-1]
        self._lam: F64 = self._rate_min / 60.0 * self.rate_scale  # trades per second at profile 1
        self.surges: list[SurgeSpec] = list(surges) + self._random_surges(random_surges)
        self._build_surges()
        self._rate_factor = _rate_factors(rate_periods)
        self._reset_state()
        self._pos = OPEN_S

    # -------------------------------------------------------------- construction

    def _build_universe(self, n: int) -> None:
        rng = np.random.default_rng([self._seed64, _TAG_UNIVERSE])
        codes = _make_codes(rng, n)
        names = _make_names(rng, n)
        z = rng.standard_normal((9, n))
        u = rng.random((2, n))
        price = np.clip(np.exp(np.log(8_000.0) + 1.1 * z[0]), 1_000, 1_500_000).astype(np.int64)
        prev_close = _price_of(_idx_of(price))
        rate = np.clip(2.0 * np.exp(1.3 * z[1]), 0.05, 400.0)
        trade_value = 1_500_000.0 * np.exp(0.6 * z[2])
        mean_lot = np.maximum(1.0, trade_value / prev_close)
        vol_d = np.clip(0.03 * np.exp(0.4 * z[3]), 0.01, 0.12)
        turnover = np.clip(0.007 * np.exp(0.8 * z[4]), 0.002, 0.2)
        listed = np.clip(rate * SESSION_MINUTES * mean_lot / turnover, 1_000_000, 3_000_000_000).astype(np.int64)
        kospi = u[0] < 0.4
        sector = (u[1] * len(_SECTORS)).astype(np.int64)
        name_list: list[str] = []
        market_list: list[str] = []
        sector_list: list[str] = []
        for i, code in enumerate(codes):
            boot = _BOOTSTRAP.get(code)
            if boot is not None:
                nm, mk, pc, rt, lot, ls, vd, sec = boot
                name_list.append(nm)
                market_list.append(mk)
                sector_list.append(sec)
                prev_close[i], rate[i], mean_lot[i], listed[i], vol_d[i] = pc, rt, lot, ls, vd
            else:
                name_list.append(names[i] + ("우" if code[5] == "5" else ""))
                market_list.append("KOSPI" if kospi[i] else "KOSDAQ")
                sector_list.append(_SECTORS[sector[i]])
        daily_shares = rate * SESSION_MINUTES * mean_lot  # a normal day's expected volume
        self.symbols: list[SymbolSpec] = [
            SymbolSpec(
                code=c,
                name=name_list[i],
                market=market_list[i],
                prev_close=int(prev_close[i]),
                base_rate_per_min=float(rate[i]),
                mean_lot=float(mean_lot[i]),
                listed_shares=int(listed[i]),
            )
            for i, c in enumerate(codes)
        ]
        self.by_code: dict[str, SymbolSpec] = {s.code: s for s in self.symbols}
        self._index: dict[str, int] = {c: i for i, c in enumerate(codes)}
        self._codes = codes
        self._sector = sector_list
        self._n = n
        self._prev: I64 = prev_close
        self._prev_idx: I64 = _idx_of(prev_close)
        self._hi_idx: I64 = _idx_of(prev_close * 13 // 10)  # upper limit: +30 % floored to a tick
        lo_idx = _idx_of(-(-prev_close * 7 // 10))
        self._lo_idx: I64 = lo_idx + (_price_of(lo_idx) < -(-prev_close * 7 // 10))  # lower limit: ceiled
        self._upper: I64 = _price_of(self._hi_idx)
        self._lower: I64 = _price_of(self._lo_idx)
        self._rate_min: F64 = rate
        self._mean_lot: F64 = mean_lot
        self._listed: I64 = listed
        # one quote move per trade with probability p: sqrt(p * trades/day) ticks of daily volatility
        ticks_day = vol_d * prev_close / _BAND_TICK[np.searchsorted(_BAND_PRICE, prev_close, side="right") - 1]
        scale = self.rate_scale
        self._p_move: F64 = np.clip(ticks_day**2 / (rate * scale * SESSION_MINUTES), 0.005, 0.9)
        self._prdy_vol: I64 = np.maximum(1, np.rint(daily_shares * scale * np.exp(0.35 * z[5] - 0.06))).astype(np.int64)
        self._avrg_vol: I64 = np.maximum(1, np.rint(daily_shares * scale * np.exp(0.25 * z[6] - 0.03))).astype(np.int64)
        self._nday_close: I64 = _price_of(_idx_of(np.rint(prev_close * np.exp(0.08 * z[7])).astype(np.int64)))
        # the opening quote: the previous close plus a small gap of whole ticks
        gap = np.rint(1.5 * z[8]).astype(np.int64)
        self._bid_init: I64 = np.clip(self._prev_idx + gap, self._lo_idx, self._hi_idx - 1)

    def _random_surges(self, k: int) -> list[SurgeSpec]:
        if k == 0:
            return []
        rng = np.random.default_rng([self._seed64, _TAG_SURGES])
        candidates = [c for c in self._codes if c not in BOOTSTRAP_CODES]
        picks = rng.integers(0, len(candidates), k)
        starts = rng.integers(OPEN_S + 5 * 60, CONT_END_S - 20 * 60, k)
        minutes = rng.uniform(2.0, 10.0, k)
        factors = np.clip(np.exp(rng.normal(math.log(8.0), 0.4, k)), 4.0, 25.0)
        out = []
        for i in range(k):
            s = int(starts[i])
            out.append(
                SurgeSpec(
                    symbol=candidates[picks[i]],
                    start=dt.time(s // 3600, s // 60 % 60, s % 60),
                    minutes=round(float(minutes[i]), 2),
                    factor=round(float(factors[i]), 2),
                )
            )
        return out

    def _build_surges(self) -> None:
        sym, start, end, factor = [], [], [], []
        for s in self.surges:
            if s.symbol not in self._index:
                raise ValueError(f"surge symbol {s.symbol!r} is not in the universe")
            if not s.factor > 0 or not s.minutes > 0:
                raise ValueError(f"surge factor and minutes must be positive: {s}")
            a = s.start.hour * 3600 + s.start.minute * 60 + s.start.second
            sym.append(self._index[s.symbol])
            start.append(a)
            end.append(a + round(s.minutes * 60))
            factor.append(s.factor)
        self._s_sym = np.array(sym, dtype=np.int64)
        self._s_start = np.array(start, dtype=np.int64)
        self._s_end = np.array(end, dtype=np.int64)
        self._s_factor = np.array(factor, dtype=np.float64)

    def _reset_state(self) -> None:
        n = self._n
        self._bid: I64 = self._bid_init.copy()
        self._last: I64 = self._prev.copy()
        self._open: I64 = np.zeros(n, np.int64)
        self._open_t: I64 = np.zeros(n, np.int64)
        self._high: I64 = np.zeros(n, np.int64)
        self._high_t: I64 = np.zeros(n, np.int64)
        self._low: I64 = np.zeros(n, np.int64)
        self._low_t: I64 = np.zeros(n, np.int64)
        self._cum_vol: I64 = np.zeros(n, np.int64)
        self._cum_val: I64 = np.zeros(n, np.int64)
        self._sell_cnt: I64 = np.zeros(n, np.int64)
        self._buy_cnt: I64 = np.zeros(n, np.int64)
        self._sell_vol: I64 = np.zeros(n, np.int64)
        self._buy_vol: I64 = np.zeros(n, np.int64)

    # -------------------------------------------------------------- time

    def _sec_of(self, until_us: int) -> int:
        """KST second of day (may be < 0 or >= 86,400) containing the UTC microsecond ``until_us``."""
        return until_us // _US - self._midnight_s

    def position_us(self) -> int:
        """UTC microseconds of the first second not generated yet."""
        return (self._midnight_s + self._pos) * _US

    def _surge_mult(self, sec: int) -> F64 | None:
        if not len(self._s_sym):
            return None
        active = np.flatnonzero((self._s_start <= sec) & (sec < self._s_end))
        if not len(active):
            return None
        mult = np.ones(self._n, np.float64)
        for j in active.tolist():
            mult[self._s_sym[j]] *= self._s_factor[j]
        return mult

    # -------------------------------------------------------------- generation

    def advance_to(self, until_us: int) -> list[Trade]:
        """Every trade from the position up to, not including, the second containing ``until_us``."""
        target = self._sec_of(until_us)
        if target <= self._pos:
            return []
        trades: list[Trade] = []
        for sec in range(max(self._pos, OPEN_S), min(target, CONT_END_S)):
            self._second(sec, trades)
        if self._pos <= CLOSE_S < target:
            self._second(CLOSE_S, trades)
        self._pos = target
        return trades

    def _second(self, sec: int, out: list[Trade]) -> None:
        rng = np.random.default_rng([self._seed64, self._date_ord, sec])
        closing = sec == CLOSE_S
        mult: F64 | None = None
        if closing:
            idx = np.flatnonzero(self._cum_vol > 0)
            n = np.ones(len(idx), np.int64)
        else:
            lam = self._lam * (self._profile[sec - OPEN_S] * self._rate_factor[sec - OPEN_S])
            mult = self._surge_mult(sec)
            if mult is not None:
                lam = lam * mult
            counts = rng.poisson(lam)
            idx = np.flatnonzero(counts)
            n = counts[idx]
        if not len(idx):
            return
        total = int(n.sum())
        sym = np.repeat(idx, n)
        gid = np.repeat(np.arange(len(idx), dtype=np.int64), n)
        starts = np.cumsum(n) - n
        ends = starts + n - 1
        u = rng.random((4, total))
        z = rng.standard_normal((3, total))

        def seg_cumsum(x: I64) -> I64:
            cs: I64 = np.cumsum(x)
            before: I64 = cs[starts] - x[starts]
            return cs - np.repeat(before, n)

        # side and lot
        lot_mean = self._mean_lot[sym]
        if mult is not None:
            m = mult[sym]
            buy = u[0] < np.where(m > 1.0, _SURGE_BUY_P, 0.5)
            lot_mean = lot_mean * np.sqrt(m)
        else:
            buy = u[0] < 0.5
        if closing:
            lot_mean = lot_mean * np.maximum(1.0, self._rate_min[sym] * self.rate_scale) * 1.5
            lots = lot_mean * np.exp(0.5 * z[0] - 0.125)
            move = np.zeros(total, dtype=bool)
        else:
            lots = lot_mean * np.exp(_LOT_SIGMA * z[0] - _LOT_SIGMA**2 / 2)
            lots = np.where(u[2] < _BLOCK_P, lots * _BLOCK_MULT, lots)
            move = u[1] < self._p_move[sym]
        vol = np.maximum(1, np.rint(lots)).astype(np.int64)
        buy_i = buy.astype(np.int64)

        # quote walk: the record shows the quote the trade hit; the quote then moves one tick its way
        step = np.where(move, 2 * buy_i - 1, 0).astype(np.int64)
        incl = seg_cumsum(step)
        lo = self._lo_idx[sym]
        hi_bid = self._hi_idx[sym] - 1
        bid0 = self._bid[sym]
        bid_idx = np.clip(bid0 + incl - step, lo, hi_bid)
        bid_px = _price_of(bid_idx)
        ask_px = _price_of(bid_idx + 1)
        price = np.where(buy, ask_px, bid_px)

        # cumulative state
        cum_vol = seg_cumsum(vol) + self._cum_vol[sym]
        cum_val = seg_cumsum(price * vol) + self._cum_val[sym]
        buy_cnt = seg_cumsum(buy_i) + self._buy_cnt[sym]
        sell_cnt = seg_cumsum(1 - buy_i) + self._sell_cnt[sym]
        buy_vol = seg_cumsum(vol * buy_i) + self._buy_vol[sym]
        sell_vol = seg_cumsum(vol * (1 - buy_i)) + self._sell_vol[sym]

        open0 = self._open[sym]
        opened = open0 > 0
        open_px = np.where(opened, open0, np.repeat(price[starts], n))
        open_t = np.where(opened, self._open_t[sym], sec)
        off = gid * _BIG
        run_hi = np.maximum.accumulate(price + off) - off
        high0 = self._high[sym]
        high = np.maximum(run_hi, high0)
        high_t = np.where(run_hi > high0, sec, self._high_t[sym])
        run_lo = off - np.maximum.accumulate(off - price)
        low0 = np.where(opened, self._low[sym], _BIG)
        low = np.minimum(run_lo, low0)
        low_t = np.where(run_lo < low0, sec, self._low_t[sym])

        # write back the state after each symbol's last trade of the second
        last = ends
        self._bid[idx] = np.clip(bid0[last] + incl[last], lo[last], hi_bid[last])
        self._last[idx] = price[last]
        self._open[idx] = open_px[last]
        self._open_t[idx] = open_t[last]
        self._high[idx] = high[last]
        self._high_t[idx] = high_t[last]
        self._low[idx] = low[last]
        self._low_t[idx] = low_t[last]
        self._cum_vol[idx] = cum_vol[last]
        self._cum_val[idx] = cum_val[last]
        self._buy_cnt[idx] = buy_cnt[last]
        self._sell_cnt[idx] = sell_cnt[last]
        self._buy_vol[idx] = buy_vol[last]
        self._sell_vol[idx] = sell_vol[last]

        # derived fields
        prev = self._prev[sym]
        vrss = price - prev
        sign = np.where(vrss > 0, 2, np.where(vrss < 0, 5, 3))
        sign = np.where(price == self._upper[sym], 1, np.where(price == self._lower[sym], 4, sign))
        ctrt = vrss * 100.0 / prev
        vwap = cum_val / cum_vol
        cttr = np.where(sell_vol > 0, buy_vol * 100.0 / np.maximum(sell_vol, 1), 0.0)
        shnu_rate = buy_vol / cum_vol
        prdy_vol = self._prdy_vol[sym]
        prdy_rate = cum_vol * 100.0 / prdy_vol
        tnrt = cum_vol * 100.0 / self._listed[sym]
        frac = 1.0 if closing else float(self._day_frac[sec - OPEN_S])
        smns = np.maximum(1, np.rint(prdy_vol * frac)).astype(np.int64)
        smns_rate = cum_vol * 100.0 / smns
        d_open, d_high, d_low = price - open_px, price - high, price - low
        depth = lot_mean * 3.0
        ask_rsqn = np.maximum(1, np.rint(depth * np.exp(z[1]))).astype(np.int64)
        bid_rsqn = np.maximum(1, np.rint(depth * np.exp(z[2]))).astype(np.int64)
        ask_total = ask_rsqn * (6 + np.rint(20 * u[3])).astype(np.int64)
        bid_total = bid_rsqn * (6 + np.rint(20 * (1 - u[3]))).astype(np.int64)

        # render column by column (C-level map/zip; prices and times are cached strings), then row by row
        prices = _PRICE_STRS.__getitem__
        times = _HHMMSS.__getitem__
        d_signs = _DIFF_SIGNS.__getitem__
        open_s = list(map(prices, _idx_of(open_px).tolist()))
        columns: list[Iterable[str]] = [
            map(self._codes.__getitem__, sym.tolist()),
            repeat(_HHMMSS[sec]),
            map(prices, (bid_idx + buy_i).tolist()),
            map(_SIGNS.__getitem__, sign.tolist()),
            map(str, vrss.tolist()),
            map(_F2, ctrt.tolist()),
            map(_F2, vwap.tolist()),
            open_s,
            map(prices, _idx_of(high).tolist()),
            map(prices, _idx_of(low).tolist()),
            map(prices, (bid_idx + 1).tolist()),
            map(prices, bid_idx.tolist()),
            map(str, vol.tolist()),
            map(str, cum_vol.tolist()),
            map(str, cum_val.tolist()),
            map(str, sell_cnt.tolist()),
            map(str, buy_cnt.tolist()),
            map(str, (buy_cnt - sell_cnt).tolist()),
            map(_F2, cttr.tolist()),
            map(str, sell_vol.tolist()),
            map(str, buy_vol.tolist()),
            map(_SIDES.__getitem__, buy_i.tolist()),
            map(_F2, shnu_rate.tolist()),
            map(_F2, prdy_rate.tolist()),
            map(times, open_t.tolist()),
            map(d_signs, np.sign(d_open).tolist()),
            map(str, d_open.tolist()),
            map(times, high_t.tolist()),
            map(d_signs, np.sign(d_high).tolist()),
            map(str, d_high.tolist()),
            map(times, low_t.tolist()),
            map(d_signs, np.sign(d_low).tolist()),
            map(str, d_low.tolist()),
            repeat(self._bsop),
            repeat("20"),
            repeat("N"),
            map(str, ask_rsqn.tolist()),
            map(str, bid_rsqn.tolist()),
            map(str, ask_total.tolist()),
            map(str, bid_total.tolist()),
            map(_F2, tnrt.tolist()),
            map(str, smns.tolist()),
            map(_F2, smns_rate.tolist()),
            repeat("0"),
            repeat(""),
            open_s,
        ]
        records = list(map(list, zip(*columns, strict=False)))  # the repeat() columns are endless
        out.extend(
            map(Trade, map(self._codes.__getitem__, sym.tolist()), repeat((self._midnight_s + sec) * _US), records)
        )

    # -------------------------------------------------------------- start_at

    def start_at(self, until_us: int) -> None:
        """Jump to the second containing ``until_us`` without generating trades.

        Everything before it counts as traded: the state is synthesised from the expected trading up to
        that second (trade counts drawn around their expectation, price displaced by the matching random
        walk), deterministically from (seed, date, second). Calling it again re-synthesises from scratch.
        """
        pos = self._sec_of(until_us)
        self._reset_state()
        self._pos = pos
        cont_end = min(max(pos, OPEN_S), CONT_END_S)
        if cont_end <= OPEN_S:
            return
        k = cont_end - OPEN_S
        base = self._prof_cum[k]
        trades_exp = base * np.ones(self._n)
        vol_exp = base * np.ones(self._n)
        for j in range(len(self._s_sym)):
            a = min(max(int(self._s_start[j]), OPEN_S), cont_end) - OPEN_S
            b = min(max(int(self._s_end[j]), OPEN_S), cont_end) - OPEN_S
            if b > a:
                f = float(self._s_factor[j])
                w = self._prof_cum[b] - self._prof_cum[a]
                trades_exp[self._s_sym[j]] += (f - 1.0) * w
                vol_exp[self._s_sym[j]] += (f * math.sqrt(f) - 1.0) * w
        trades_exp *= self._lam
        vol_exp *= self._lam * self._mean_lot
        rng = np.random.default_rng([self._seed64, self._date_ord, _TAG_START, pos & _MASK64])
        z = rng.standard_normal((5, self._n))
        u = rng.random((4, self._n))
        count = rng.poisson(trades_exp).astype(np.int64)
        ratio = np.divide(count, trades_exp, out=np.zeros(self._n), where=trades_exp > 0)
        vol = np.where(count > 0, np.maximum(count, np.rint(vol_exp * ratio)), 0).astype(np.int64)
        if pos > CLOSE_S:  # the closing auction is in the past too
            close_vol = self._mean_lot * np.maximum(1.0, self._rate_min * self.rate_scale) * 1.5
            vol = vol + np.where(count > 0, np.maximum(1, np.rint(close_vol)), 0).astype(np.int64)
            count = count + (count > 0)
        traded = count > 0
        lo, hi_bid = self._lo_idx, self._hi_idx - 1
        spread = np.sqrt(self._p_move * count)
        open_idx = np.clip(self._bid_init + np.rint(0.5 * z[0]).astype(np.int64), lo, hi_bid)
        bid_idx = np.clip(open_idx + np.rint(spread * z[1]).astype(np.int64), lo, hi_bid)
        buy_last = u[0] < 0.5
        last = _price_of(bid_idx + buy_last)
        open_px = _price_of(open_idx)
        top = np.maximum(open_idx, bid_idx + buy_last)
        bottom = np.minimum(open_idx, bid_idx)
        high = _price_of(np.minimum(top + np.rint(np.abs(z[2]) * spread / 2).astype(np.int64), self._hi_idx))
        low = _price_of(np.maximum(bottom - np.rint(np.abs(z[3]) * spread / 2).astype(np.int64), lo))
        span = max(1, cont_end - OPEN_S)
        high_t = np.where(high == open_px, OPEN_S, OPEN_S + (u[1] * span).astype(np.int64))
        low_t = np.where(low == open_px, OPEN_S, OPEN_S + (u[2] * span).astype(np.int64))
        vwap = np.clip((open_px + high + low + last) / 4.0, low, high)
        buy_cnt = rng.binomial(count, 0.5).astype(np.int64)
        buy_share = np.divide(buy_cnt, count, out=np.zeros(self._n), where=traded)
        buy_vol = np.rint(vol * np.clip(buy_share + 0.05 * z[4], 0.0, 1.0)).astype(np.int64)

        self._bid = np.where(traded, bid_idx, self._bid)
        self._last = np.where(traded, last, self._prev)
        self._open = np.where(traded, open_px, 0)
        self._open_t = np.where(traded, OPEN_S, 0)
        self._high = np.where(traded, high, 0)
        self._high_t = np.where(traded, high_t, 0)
        self._low = np.where(traded, low, 0)
        self._low_t = np.where(traded, low_t, 0)
        self._cum_vol = vol
        self._cum_val = np.rint(vol * vwap).astype(np.int64)
        self._buy_cnt = buy_cnt
        self._sell_cnt = count - buy_cnt
        self._buy_vol = buy_vol
        self._sell_vol = vol - buy_vol

    # -------------------------------------------------------------- REST views

    def cumulative_volume(self, code: str) -> int:
        return int(self._cum_vol[self._index[code]])

    def inquire_price(self, code: str) -> dict[str, str]:
        """The ``output`` object of inquire-price (FHKST01010100) for ``code``; KeyError if unknown."""
        i = self._index[code]
        spec = self.symbols[i]
        prev = spec.prev_close
        price = int(self._last[i])
        vrss = price - prev
        acml_vol = int(self._cum_vol[i])
        acml_val = int(self._cum_val[i])
        return {
            "iscd_stat_cls_code": "55",
            "rprs_mrkt_kor_name": spec.market,
            "bstp_kor_isnm": self._sector[i],
            "temp_stop_yn": "N",
            "stck_prpr": str(price),
            "prdy_vrss": str(vrss),
            "prdy_vrss_sign": self._sign(i, price),
            "prdy_ctrt": f"{vrss * 100.0 / prev:.2f}",
            "acml_tr_pbmn": str(acml_val),
            "acml_vol": str(acml_vol),
            "prdy_vrss_vol_rate": f"{acml_vol * 100.0 / int(self._prdy_vol[i]):.2f}",
            "stck_oprc": str(int(self._open[i])),
            "stck_hgpr": str(int(self._high[i])),
            "stck_lwpr": str(int(self._low[i])),
            "stck_mxpr": str(int(self._upper[i])),
            "stck_llam": str(int(self._lower[i])),
            "stck_sdpr": str(prev),
            "wghn_avrg_stck_prc": f"{acml_val / acml_vol:.2f}" if acml_vol else "0.00",
            "vol_tnrt": f"{acml_vol * 100.0 / spec.listed_shares:.2f}",
            "lstn_stcn": str(spec.listed_shares),
            "hts_avls": str(price * spec.listed_shares // 100_000_000),
            "stck_shrn_iscd": code,
            "vi_cls_code": "N",
            "mrkt_warn_cls_code": "00",
            "short_over_yn": "N",
        }

    def multi_price(self, code: str) -> dict[str, str]:
        """One ``output`` row of 관심종목(멀티종목) 시세조회 (FHKST11300006) for ``code``; KeyError if unknown."""
        i = self._index[code]
        spec = self.symbols[i]
        price = int(self._last[i])
        bid = int(_price_of(np.asarray([self._bid[i]]))[0])
        ask = int(_price_of(np.asarray([self._bid[i] + 1]))[0])
        return {
            "inter_shrn_iscd": code,
            "inter_kor_isnm": spec.name,
            "inter2_prpr": str(price),
            "inter2_prdy_vrss": str(price - spec.prev_close),
            "prdy_vrss_sign": self._sign(i, price),
            "prdy_ctrt": f"{(price - spec.prev_close) * 100.0 / spec.prev_close:.2f}",
            "acml_vol": str(int(self._cum_vol[i])),
            "acml_tr_pbmn": str(int(self._cum_val[i])),
            "inter2_prdy_clpr": str(spec.prev_close),
            "inter2_askp": str(ask),
            "inter2_bidp": str(bid),
            "hour_cls_code": "0",
        }

    def _sign(self, i: int, price: int) -> str:
        if price == self._upper[i]:
            return "1"
        if price == self._lower[i]:
            return "4"
        prev = int(self._prev[i])
        return "2" if price > prev else "5" if price < prev else "3"

    def volume_rank(self, limit: int = 30, blng_cls_code: str = "0") -> list[dict[str, str]]:
        """Rows of volume-rank (FHPST01710000), at most 30.

        ``blng_cls_code``: "0" by acml_vol, "1" by vol_inrt (acml_vol / prdy_vol x 100), "2" by vol_tnrt,
        "3" by acml_tr_pbmn, "4" by tr_pbmn_tnrt; all descending, ties by code.
        """
        vol = self._cum_vol
        mcap = self._prev * self._listed
        vol_inrt = vol * 100.0 / self._prdy_vol
        vol_tnrt = vol * 100.0 / self._listed
        tr_pbmn_tnrt = self._cum_val * 100.0 / mcap
        keys: dict[str, npt.NDArray[Any]] = {
            "0": vol,
            "1": vol_inrt,
            "2": vol_tnrt,
            "3": self._cum_val,
            "4": tr_pbmn_tnrt,
        }
        if blng_cls_code not in keys:
            raise ValueError(f"FID_BLNG_CLS_CODE {blng_cls_code!r} is not one of 0-4")
        key = keys[blng_cls_code]
        order = np.lexsort((np.arange(self._n), -key))[: max(0, min(limit, 30))]
        rows = []
        for rank, i in enumerate(order.tolist(), start=1):
            spec = self.symbols[i]
            price = int(self._last[i])
            prev = spec.prev_close
            avrg_vol = int(self._avrg_vol[i])
            avrg_pbmn = avrg_vol * prev
            nday = int(self._nday_close[i])
            rows.append(
                {
                    "hts_kor_isnm": spec.name,
                    "mksc_shrn_iscd": spec.code,
                    "data_rank": str(rank),
                    "stck_prpr": str(price),
                    "prdy_vrss_sign": self._sign(i, price),
                    "prdy_vrss": str(price - prev),
                    "prdy_ctrt": f"{(price - prev) * 100.0 / prev:.2f}",
                    "acml_vol": str(int(vol[i])),
                    "prdy_vol": str(int(self._prdy_vol[i])),
                    "lstn_stcn": str(spec.listed_shares),
                    "avrg_vol": str(avrg_vol),
                    "n_befr_clpr_vrss_prpr_rate": f"{(price - nday) * 100.0 / nday:.2f}",
                    "vol_inrt": f"{vol_inrt[i]:.2f}",
                    "vol_tnrt": f"{vol_tnrt[i]:.2f}",
                    "nday_vol_tnrt": f"{avrg_vol * 100.0 / spec.listed_shares:.2f}",
                    "avrg_tr_pbmn": str(avrg_pbmn),
                    "tr_pbmn_tnrt": f"{tr_pbmn_tnrt[i]:.2f}",
                    "nday_tr_pbmn_tnrt": f"{avrg_pbmn * 100.0 / int(mcap[i]):.2f}",
                    "acml_tr_pbmn": str(int(self._cum_val[i])),
                }
            )
        return rows
