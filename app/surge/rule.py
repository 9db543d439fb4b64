"""The volume-surge rule over one-minute event-time windows, as pure functions on a small per-symbol state.

Volume per minute comes from KIS's *cumulative* volume (field ``ACML_VOL``, also in REST snapshots), not
from summing trade sizes: minute volume = the growth of the cumulative volume observed in that minute.
That makes the windows immune to a duplicated or re-ordered tick (it does not grow the maximum), and lets
ticks and scanner snapshots give the same measure. The worker keeps a symbol's tick windows and snapshot
windows apart, each fed by one input partition in its order, so a replay finds the same surges as live.

A symbol's first observation of a business day only sets its baseline (a snapshot) or counts its own
trade (a tick): volume traded before we saw the symbol is not attributed to that minute. The rule fires
only once a full lookback of observed minutes lies behind the current one, so a symbol first seen at
10:30 cannot "surge" on the volume of its whole morning.

Surge (defaults from the design): ``current >= 3 * avg_10m`` and ``current >= min_volume``, where avg_10m
is the mean of the ten minutes before the current one, a minute without trades counting as zero.
``surge_ratio = current / avg_10m`` (``current / 1`` when the average is zero: a first trade after ten
silent minutes). At most one event per symbol and minute, the observation that first crosses, and none
for a minute older than one that already fired.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MINUTE_US = 60_000_000


@dataclass(frozen=True)
class SurgeRule:
    multiplier: float = 3.0
    min_volume: int = 10_000
    lookback_minutes: int = 10
    retain_minutes: int = 12  # buckets kept per symbol: the lookback, the current minute, one for late ticks

    def __post_init__(self) -> None:
        if self.multiplier <= 1:
            raise ValueError(f"surge multiplier must be above 1, not {self.multiplier}")
        if self.min_volume < 0 or self.lookback_minutes < 1:
            raise ValueError("min_volume must be >= 0 and lookback_minutes >= 1")
        if self.retain_minutes < self.lookback_minutes + 1:
            raise ValueError("retain_minutes must cover the lookback and the current minute")


def priority_score(surge_ratio: float, multiplier: float = 3.0) -> float:
    """``ratio / (ratio + multiplier)``: monotone, 0 at 0, 0.5 at the surge threshold, below 1 forever.

    Ratios 3, 6, 12, 30, 57 give 0.50, 0.67, 0.80, 0.91, 0.95 (the bootstrap symbols' default).
    """
    if surge_ratio <= 0:
        return 0.0
    return surge_ratio / (surge_ratio + multiplier)


@dataclass
class SymbolWindows:
    """One symbol's state for one business day: this is the value of the surge table, keyed by symbol."""

    business_date: str
    first_minute: int  # the first minute (event_time_us // MINUTE_US) we observed the symbol in
    cumulative: int  # the highest cumulative volume seen
    minutes: dict[int, int] = field(default_factory=dict)  # minute -> volume, the last ``retain_minutes``
    fired_minute: int = -1  # the minute of the last surge event

    def to_record(self) -> dict[str, object]:
        return {
            "business_date": self.business_date,
            "first_minute": self.first_minute,
            "cumulative": self.cumulative,
            "minutes": [{"minute": m, "volume": v} for m, v in sorted(self.minutes.items())],
            "fired_minute": self.fired_minute,
        }

    @classmethod
    def from_record(cls, record: dict[str, object]) -> SymbolWindows:
        minutes = record["minutes"]
        assert isinstance(minutes, list)
        return cls(
            business_date=str(record["business_date"]),
            first_minute=int(record["first_minute"]),  # type: ignore[call-overload]
            cumulative=int(record["cumulative"]),  # type: ignore[call-overload]
            minutes={int(item["minute"]): int(item["volume"]) for item in minutes},
            fired_minute=int(record["fired_minute"]),  # type: ignore[call-overload]
        )


@dataclass(frozen=True)
class Surge:
    symbol: str
    business_date: str
    window_start_us: int
    event_time_us: int
    current_volume: int
    avg_volume_10m: float
    surge_ratio: float
    priority_score: float
    source: str  # "ticks" or "snapshots"

    def to_record(self) -> dict[str, object]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Observation:
    """A tick (``trade_volume`` known) or a snapshot (``trade_volume`` None) of one symbol."""

    symbol: str
    business_date: str
    event_time_us: int
    cumulative_volume: int
    trade_volume: int | None
    source: str


def observe(state: SymbolWindows | None, obs: Observation, rule: SurgeRule) -> tuple[SymbolWindows, Surge | None, bool]:
    """Fold one observation into the symbol's windows. Returns the new state, a surge if one fired, and
    whether the observation was too late to count (its minute is no longer retained)."""
    minute = obs.event_time_us // MINUTE_US
    if state is None or state.business_date != obs.business_date:
        own = obs.trade_volume if obs.trade_volume is not None else 0
        state = SymbolWindows(obs.business_date, minute, obs.cumulative_volume, {minute: own} if own else {})
        return state, _evaluate(state, minute, obs, rule), False
    newest = max(state.minutes, default=state.first_minute)
    late = minute <= newest - rule.retain_minutes
    if late:
        state.cumulative = max(state.cumulative, obs.cumulative_volume)
        return state, None, True
    growth = obs.cumulative_volume - state.cumulative
    if growth <= 0:  # a duplicate or an older tick: nothing new, nothing to evaluate
        return state, None, False
    state.cumulative = obs.cumulative_volume
    state.minutes[minute] = state.minutes.get(minute, 0) + growth
    oldest_kept = max(newest, minute) - rule.retain_minutes + 1
    for old in [m for m in state.minutes if m < oldest_kept]:
        del state.minutes[old]
    return state, _evaluate(state, minute, obs, rule), False


def _evaluate(state: SymbolWindows, minute: int, obs: Observation, rule: SurgeRule) -> Surge | None:
    # At most one event per minute, never for a minute before one that fired (a late tick cannot re-fire).
    if minute <= state.fired_minute or minute - state.first_minute < rule.lookback_minutes:
        return None
    current = state.minutes.get(minute, 0)
    if current < rule.min_volume or current == 0:
        return None
    get = state.minutes.get
    avg = sum(get(m, 0) for m in range(minute - rule.lookback_minutes, minute)) / rule.lookback_minutes
    if current < rule.multiplier * avg:
        return None
    ratio = current / avg if avg > 0 else float(current)
    state.fired_minute = minute
    return Surge(
        symbol=obs.symbol,
        business_date=obs.business_date,
        window_start_us=minute * MINUTE_US,
        event_time_us=obs.event_time_us,
        current_volume=current,
        avg_volume_10m=avg,
        surge_ratio=ratio,
        priority_score=priority_score(ratio, rule.multiplier),
        source=obs.source,
    )
