"""The market scanner: KIS REST volume rankings and current prices as ``Snapshot`` records.

Symbols without a WebSocket slot are seen only through these polls. Their cumulative volume (``acml_vol``)
feeds the same surge windows as the ticks (see ``app.surge.rule``), so such a symbol can surge into a slot.
A snapshot's event time is the KIS server's clock (the reply's HTTP Date), so that against the simulator it
is simulated time, like the ticks' trade times. The Date has whole seconds, so the snapshot is stamped with
the last instant it certainly covers, the end of the second before its Date: the slot manager can then
decide on it as soon as every input has reached the Date's second, a second earlier than if it were
stamped with the Date itself (see ``app.slots.merge``).

Parsing is pure (rows in, records or a reason out); :class:`Scanner` does the polling, paced by the REST
client, and never raises out of a poll: a failed call is counted and the next interval tries again.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.kis.protocol import MULTI_PRICE_MAX_SYMBOLS
from app.kis.rest import KisApiError, KisRestClient
from app.krx import KST

log = logging.getLogger(__name__)

SOURCE_VOLUME_RANK = "volume_rank"
SOURCE_INQUIRE_PRICE = "inquire_price"
SOURCE_MULTI_PRICE = "multi_price"
PRICE_CALLS = (SOURCE_MULTI_PRICE, SOURCE_INQUIRE_PRICE)


class BadSnapshot(ValueError):
    """A REST row that cannot become a Snapshot (its reason names the field)."""


def _int(row: dict[str, str], name: str) -> int:
    try:
        return int(row[name])
    except KeyError:
        raise BadSnapshot(f"missing {name}") from None
    except ValueError:
        raise BadSnapshot(f"{name}={row[name]!r} is not an integer") from None


def _float(row: dict[str, str], name: str) -> float:
    try:
        return float(row.get(name) or "0")
    except ValueError:
        raise BadSnapshot(f"{name}={row[name]!r} is not a number") from None


def snapshot_record(
    row: dict[str, str], symbol: str | None, source: str, server_time_s: float, rank: int | None = None
) -> dict[str, Any]:
    """One Snapshot from one REST row (``symbol`` from the row's ``mksc_shrn_iscd``, or a multi-price row's
    ``inter_shrn_iscd``, when None)."""
    multi = source == SOURCE_MULTI_PRICE
    code = symbol if symbol is not None else row.get("inter_shrn_iscd" if multi else "mksc_shrn_iscd", "")
    if len(code) != 6 or not code.isalnum():
        raise BadSnapshot(f"symbol {code!r} is not a 6-character short code")
    volume = _int(row, "acml_vol")
    if volume < 0:
        raise BadSnapshot(f"acml_vol={volume} is negative")
    when_us = int(server_time_s) * 1_000_000 - 1  # covers every trade before the Date's second
    return {
        "symbol": code,
        "business_date": dt.datetime.fromtimestamp(when_us / 1_000_000, KST).strftime("%Y%m%d"),
        "snapshot_time_us": when_us,
        "source": source,
        "price": _int(row, "inter2_prpr" if multi else "stck_prpr"),
        "cumulative_volume": volume,
        "change_rate": _float(row, "prdy_ctrt"),
        "rank": rank,
        "raw": dict(row),
    }


@dataclass
class PollResult:
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[dict[str, str], str]] = field(default_factory=list)  # (row, reason)
    failed_calls: list[str] = field(default_factory=list)  # "endpoint: error"


SnapshotSink = Callable[[dict[str, Any]], Awaitable[None]]


class Scanner:
    """One poll = each configured ranking, then each watchlist symbol's current price.

    Each call's snapshots go to ``emit`` as soon as the call returns (a poll of many calls takes as many
    paced requests, and a surge should not wait for the rest of them); they are also in the result.
    """

    def __init__(
        self,
        rest: KisRestClient,
        rankings: Sequence[str],
        watchlist: Sequence[str],
        wall_clock: Callable[[], float] = time.time,
        price_call: str = SOURCE_MULTI_PRICE,
    ) -> None:
        if price_call not in PRICE_CALLS:
            raise ValueError(f"price_call {price_call!r} is not one of {PRICE_CALLS}")
        self.rest = rest
        self.rankings = tuple(rankings)
        self.watchlist = tuple(watchlist)
        self.price_call = price_call
        self._wall = wall_clock

    def _server_time(self) -> float:
        return self.rest.last_server_time if self.rest.last_server_time is not None else self._wall()

    async def poll(self, emit: SnapshotSink | None = None) -> PollResult:
        """Stops at the first failed call: KIS is down or refusing, and the next poll is the retry."""
        result = PollResult()

        async def take(record: dict[str, Any]) -> None:
            result.snapshots.append(record)
            if emit is not None:
                await emit(record)

        seen: set[str] = set()  # a symbol in two rankings is one observation
        for blng in self.rankings:
            rows = await self._call(result, f"volume_rank/{blng}", self.rest.volume_rank(blng_cls=blng))
            if rows is None:
                return result
            when = self._server_time()
            for row in rows:
                try:
                    rank = int(row.get("data_rank") or 0) or None
                    record = snapshot_record(row, None, SOURCE_VOLUME_RANK, when, rank)
                except (BadSnapshot, ValueError) as exc:
                    result.rejected.append((row, str(exc)))
                    continue
                if record["symbol"] not in seen:
                    seen.add(record["symbol"])
                    await take(record)
        unseen = [code for code in self.watchlist if code not in seen]
        if self.price_call == SOURCE_MULTI_PRICE:
            await self._poll_multi_price(result, unseen, take)
            return result
        for code in unseen:
            output = await self._call(result, f"inquire_price/{code}", self.rest.inquire_price(code))
            if output is None:
                return result
            try:
                record = snapshot_record(output, code, SOURCE_INQUIRE_PRICE, self._server_time())
            except BadSnapshot as exc:
                result.rejected.append((output, str(exc)))
                continue
            await take(record)
        return result

    async def _poll_multi_price(
        self, result: PollResult, codes: list[str], take: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> None:
        """Thirty symbols a call: a watchlist of 60 costs two requests instead of sixty."""
        for start in range(0, len(codes), MULTI_PRICE_MAX_SYMBOLS):
            asked = codes[start : start + MULTI_PRICE_MAX_SYMBOLS]
            rows = await self._call(result, f"multi_price/{asked[0]}+{len(asked) - 1}", self.rest.multi_price(asked))
            if rows is None:
                return
            when = self._server_time()
            for row in rows:
                try:
                    record = snapshot_record(row, None, SOURCE_MULTI_PRICE, when)
                    if record["symbol"] not in asked:
                        raise BadSnapshot(f"inter_shrn_iscd {record['symbol']!r} was not asked for")
                except BadSnapshot as exc:
                    result.rejected.append((row, str(exc)))
                    continue
                await take(record)

    @staticmethod
    async def _call(result: PollResult, what: str, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except KisApiError as exc:  # already counted and logged by the client; the next poll retries
            result.failed_calls.append(f"{what}: {exc}")
            return None
