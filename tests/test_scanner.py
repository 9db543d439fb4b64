"""The scanner: REST rows to Snapshot records (pure), and a poll against the simulator's REST over a socket."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest

from app.kis.credentials import simulator_credentials
from app.kis.rest import KisRestClient
from app.krx import KST
from app.scanner import (
    SOURCE_INQUIRE_PRICE,
    SOURCE_MULTI_PRICE,
    SOURCE_VOLUME_RANK,
    BadSnapshot,
    Scanner,
    snapshot_record,
)
from app.sim.rest import REST_STATS
from app.sim.server import KisSimulator, SimConfig

ROW = {"mksc_shrn_iscd": "005930", "acml_vol": "1234567", "stck_prpr": "71200", "prdy_ctrt": "1.71", "data_rank": "1"}
DATE_S = int(dt.datetime(2025, 1, 15, 10, 15, 0, tzinfo=KST).timestamp())


def test_a_snapshot_is_stamped_with_the_end_of_the_second_before_the_server_date() -> None:
    record = snapshot_record(ROW, None, SOURCE_VOLUME_RANK, float(DATE_S), rank=1)
    assert record["snapshot_time_us"] == DATE_S * 1_000_000 - 1
    assert record["business_date"] == "20250115"
    assert (record["symbol"], record["price"], record["cumulative_volume"], record["rank"]) == (
        "005930",
        71200,
        1234567,
        1,
    )
    assert record["change_rate"] == pytest.approx(1.71) and record["raw"] == ROW
    # A local clock (no Date header) has fractions: the same rule applies to its whole second.
    assert snapshot_record(ROW, None, SOURCE_VOLUME_RANK, DATE_S + 0.75)["snapshot_time_us"] == DATE_S * 1_000_000 - 1


def test_the_first_second_of_a_day_belongs_to_the_day_before() -> None:
    midnight = int(dt.datetime(2025, 1, 16, tzinfo=KST).timestamp())
    assert snapshot_record(ROW, None, SOURCE_VOLUME_RANK, float(midnight))["business_date"] == "20250115"


def test_an_inquire_price_row_takes_the_symbol_it_was_asked_for() -> None:
    row = {k: v for k, v in ROW.items() if k != "mksc_shrn_iscd"}
    record = snapshot_record(row, "000660", SOURCE_INQUIRE_PRICE, float(DATE_S))
    assert record["symbol"] == "000660" and record["source"] == SOURCE_INQUIRE_PRICE and record["rank"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mksc_shrn_iscd": "59"}, "symbol '59' is not a 6-character short code"),
        ({"mksc_shrn_iscd": "00593!"}, "is not a 6-character short code"),
        ({"acml_vol": "-5"}, "acml_vol=-5 is negative"),
        ({"acml_vol": "1e3"}, "acml_vol='1e3' is not an integer"),
        ({"acml_vol": None}, "missing acml_vol"),
        ({"stck_prpr": "71,200"}, "stck_prpr='71,200' is not an integer"),
        ({"prdy_ctrt": "n/a"}, "prdy_ctrt='n/a' is not a number"),
    ],
)
def test_a_bad_row_is_refused_with_the_field_named(change: dict[str, str | None], message: str) -> None:
    row = {k: v for k, v in (ROW | change).items() if v is not None}
    with pytest.raises(BadSnapshot, match=re.escape(message)):
        snapshot_record(row, None, SOURCE_VOLUME_RANK, float(DATE_S))


def test_a_poll_emits_each_call_s_snapshots_before_the_next_call(tmp_path: Path) -> None:
    """One ranking and two watchlist symbols (one of them also ranked): each snapshot reaches ``emit`` as soon
    as its call returns, every symbol once, all stamped with the simulated Date's preceding instant."""

    async def scenario() -> None:
        sim = KisSimulator(SimConfig(rest_port=0, ws_port=0, speed=1.0))
        await sim.start()
        try:
            market = sim.market
            ranked_first = market.volume_rank(30, "0")[0]["mksc_shrn_iscd"]
            quiet = market.symbols[-1].code
            client = KisRestClient(sim.rest_url, simulator_credentials("main"), tmp_path / "tokens.json", 50.0)
            emitted: list[tuple[str, int]] = []  # (symbol, inquire-price requests served when it was emitted)

            async def emit(record: dict[str, Any]) -> None:
                served = sum(sim.rest_app[REST_STATS].requests.get("inquire_price", {}).values())
                emitted.append((record["symbol"], served))

            async with client:
                scanner = Scanner(client, ["0"], [ranked_first, quiet], price_call=SOURCE_INQUIRE_PRICE)
                result = await scanner.poll(emit)
        finally:
            await sim.stop()
        assert not result.failed_calls and not result.rejected
        assert [s["symbol"] for s in result.snapshots] == [e[0] for e in emitted]
        ranked = [s for s in result.snapshots if s["source"] == SOURCE_VOLUME_RANK]
        assert len(ranked) == 30 and all(served == 0 for _, served in emitted[:30]), "ranking emitted before prices"
        assert [(s["symbol"], s["source"]) for s in result.snapshots[30:]] == [(quiet, SOURCE_INQUIRE_PRICE)]
        assert len({s["symbol"] for s in result.snapshots}) == 31, "a ranked watchlist symbol is polled once"
        server_s = client.last_server_time
        assert server_s is not None and server_s == int(server_s)
        assert {s["snapshot_time_us"] for s in result.snapshots[30:]} == {int(server_s) * 1_000_000 - 1}

    asyncio.run(scenario())


def test_a_multi_price_row_becomes_a_snapshot_of_its_own_symbol() -> None:
    row = {"inter_shrn_iscd": "000660", "inter2_prpr": "181000", "acml_vol": "2500000", "prdy_ctrt": "-0.55"}
    record = snapshot_record(row, None, SOURCE_MULTI_PRICE, float(DATE_S))
    assert (record["symbol"], record["price"], record["cumulative_volume"], record["rank"]) == (
        "000660",
        181_000,
        2_500_000,
        None,
    )
    with pytest.raises(BadSnapshot, match="inter2_prpr"):
        snapshot_record({**row, "inter2_prpr": "x"}, None, SOURCE_MULTI_PRICE, float(DATE_S))


def test_a_watchlist_of_35_costs_two_multi_price_calls(tmp_path: Path) -> None:
    """Thirty symbols a call: 35 unranked watchlist symbols are read by two calls, none by inquire-price."""

    async def scenario() -> None:
        sim = KisSimulator(SimConfig(rest_port=0, ws_port=0, speed=1.0))
        await sim.start()
        try:
            ranked = {r["mksc_shrn_iscd"] for r in sim.market.volume_rank(30, "0")}
            watch = [s.code for s in sim.market.symbols if s.code not in ranked][:35]
            client = KisRestClient(sim.rest_url, simulator_credentials("main"), tmp_path / "tokens.json", 50.0)
            async with client:
                result = await Scanner(client, ["0"], watch).poll()
            stats = sim.rest_app[REST_STATS]
            calls = {name: stats.total(name) for name in ("volume_rank", "multi_price", "inquire_price")}
        finally:
            await sim.stop()
        assert not result.failed_calls and not result.rejected
        assert calls == {"volume_rank": 1, "multi_price": 2, "inquire_price": 0}
        priced = result.snapshots[30:]
        assert [s["symbol"] for s in priced] == watch and {s["source"] for s in priced} == {SOURCE_MULTI_PRICE}
        assert all(s["cumulative_volume"] >= 0 and s["price"] > 0 for s in priced)

    asyncio.run(scenario())
