"""KRX trading calendar and session times (Asia/Seoul), from exchange-calendars' XKRX.

Sessions: pre-open call auction 08:30-09:00, continuous trading 09:00-15:20, closing call auction
15:20-15:30. Holidays and shortened days come from the calendar, never from a hand-kept list.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

KST = ZoneInfo("Asia/Seoul")
PRE_OPEN = dt.time(8, 30)
CONTINUOUS_OPEN = dt.time(9, 0)
CONTINUOUS_CLOSE = dt.time(15, 20)
CLOSE = dt.time(15, 30)


@lru_cache(maxsize=1)
def _calendar() -> object:
    import exchange_calendars  # slow import (pandas): only when first needed

    return exchange_calendars.get_calendar("XKRX")


@lru_cache(maxsize=512)
def is_trading_day(day: dt.date) -> bool:
    """False before the calendar's first session (nothing of ours traded then); a date past its last session
    raises: exchange-calendars needs an upgrade, and guessing would decide a real day wrongly."""
    cal: Any = _calendar()
    if day < cal.first_session.date():
        return False
    return bool(cal.is_session(day.isoformat()))


def is_continuous_trading(instant: dt.datetime) -> bool:
    """True during 09:00-15:20 KST on a KRX trading day."""
    local = instant.astimezone(KST)
    return is_trading_day(local.date()) and CONTINUOUS_OPEN <= local.time() < CONTINUOUS_CLOSE


def latest_session(on_or_before: dt.date, *, regular: bool = False) -> dt.date:
    """The last KRX trading day on or before ``on_or_before``. ``regular`` skips days that open late
    (the year's first session and the college entrance exam day open at 10:00)."""
    cal: Any = _calendar()
    session = cal.date_to_session(on_or_before.isoformat(), direction="previous")
    while regular and cal.session_open(session).tz_convert(KST).time() != CONTINUOUS_OPEN:
        session = cal.previous_session(session)
    return dt.date.fromisoformat(str(session.date()))


def today_kst() -> dt.date:
    return dt.datetime.now(KST).date()
