"""The KRX calendar wrapper."""

from __future__ import annotations

import datetime as dt

from app.krx import is_trading_day, latest_session


def test_trading_days_come_from_the_xkrx_calendar() -> None:
    assert is_trading_day(dt.date(2025, 1, 2))  # the year's first session (opens at 10:00)
    assert not is_trading_day(dt.date(2025, 1, 1))  # New Year's Day
    assert not is_trading_day(dt.date(2025, 1, 4))  # a Saturday
    assert latest_session(dt.date(2025, 1, 2), regular=True) == dt.date(2024, 12, 30)


def test_a_date_before_the_calendar_is_no_trading_day_rather_than_an_error() -> None:
    """A clock at the epoch (an input with no time) must not crash the slot manager."""
    assert not is_trading_day(dt.date(1970, 1, 1))
