"""Simulator conformance over real sockets, checked with a plain websockets client and plain HTTP.

Nothing here uses the project's own KIS client or parser: frames are checked with the few lines of
splitting the protocol document describes, so the simulator is held to the protocol, not to itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.kis.credentials import simulator_credentials
from app.sim.clock import KST
from app.sim.market import SurgeSpec, Trade
from app.sim.server import KisSimulator, SimConfig
from app.sim.ws import WsFaults, WsLimits

LIQUID = "005930"
START = dt.datetime(2026, 11, 20, 9, 0, tzinfo=KST)


@contextlib.asynccontextmanager
async def running_sim(**overrides: Any) -> AsyncIterator[KisSimulator]:
    config = dataclasses.replace(SimConfig(start=START, rest_port=0, ws_port=0, n_symbols=2000), **overrides)
    sim = KisSimulator(config)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def approval_key(sim: KisSimulator, label: str = "main") -> str:
    creds = simulator_credentials(label)
    body = {
        "grant_type": "client_credentials",
        "appkey": creds.app_key.get_secret_value(),
        "secretkey": creds.app_secret.get_secret_value(),
    }
    async with aiohttp.ClientSession() as http, http.post(f"{sim.rest_url}/oauth2/Approval", json=body) as resp:
        assert resp.status == 200
        doc = await resp.json()
    return str(doc["approval_key"])


def request(approval: str, tr_key: str, tr_type: str = "1", tr_id: str = "H0STCNT0", **header: str) -> str:
    h = {"approval_key": approval, "custtype": "P", "tr_type": tr_type, "content-type": "utf-8", **header}
    return json.dumps({"header": h, "body": {"input": {"tr_id": tr_id, "tr_key": tr_key}}})


async def next_control(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next JSON message that is not PINGPONG, skipping data frames (deadline, not a sleep)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        msg = await asyncio.wait_for(ws.recv(), timeout=max(0.01, end - loop.time()))
        assert isinstance(msg, str)
        if msg.startswith("{"):
            doc: dict[str, Any] = json.loads(msg)
            if doc["header"].get("tr_id") != "PINGPONG":
                return doc


def split_frame(msg: str) -> list[list[str]]:
    flag, tr_id, count, payload = msg.split("|", 3)
    assert flag == "0" and tr_id == "H0STCNT0" and len(count) == 3
    fields = payload.split("^")
    n = int(count)
    assert len(fields) % n == 0
    width = len(fields) // n
    return [fields[i * width : (i + 1) * width] for i in range(n)]


async def ledger(sim: KisSimulator) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{sim.rest_url}/sim/ledger") as resp:
        assert resp.status == 200
        return dict(await resp.json())


# ------------------------------------------------------------------------------------ replies


def test_subscribe_replies_have_the_exact_kis_shape() -> None:
    async def scenario() -> None:
        async with running_sim() as sim:
            key = await approval_key(sim)
            async with connect(sim.ws_url, ping_interval=None) as ws:
                await ws.send(request(key, LIQUID))
                ok = await next_control(ws)
                assert ok["header"] == {"tr_id": "H0STCNT0", "tr_key": LIQUID, "encrypt": "N"}
                assert {k: ok["body"][k] for k in ("rt_cd", "msg_cd", "msg1")} == {
                    "rt_cd": "0",
                    "msg_cd": "OPSP0000",
                    "msg1": "SUBSCRIBE SUCCESS",
                }
                assert len(ok["body"]["output"]["iv"]) == 16 and len(ok["body"]["output"]["key"]) == 32

                await ws.send(request(key, LIQUID))
                dup = await next_control(ws)
                assert (dup["body"]["rt_cd"], dup["body"]["msg_cd"], dup["body"]["msg1"]) == (
                    "1",
                    "OPSP0002",
                    "ALREADY IN SUBSCRIBE",
                )

                await ws.send(request(key, LIQUID, tr_type="2"))
                off = await next_control(ws)
                assert (off["body"]["msg_cd"], off["body"]["msg1"]) == ("OPSP0001", "UNSUBSCRIBE SUCCESS")

                await ws.send(request(key, LIQUID, tr_type="2"))
                missing = await next_control(ws)
                assert missing["body"]["msg_cd"] == "OPSP0003"

    asyncio.run(scenario())


def test_the_42nd_registration_is_refused_and_the_session_goes_on() -> None:
    async def scenario() -> None:
        async with running_sim() as sim:
            key = await approval_key(sim)
            codes = [s.code for s in sim.market.symbols[:42]]
            async with connect(sim.ws_url, ping_interval=None) as ws:
                replies = []
                for code in codes:
                    await ws.send(request(key, code))
                    replies.append(await next_control(ws))
                assert [r["body"]["msg_cd"] for r in replies[:41]] == ["OPSP0000"] * 41
                assert (replies[41]["body"]["rt_cd"], replies[41]["body"]["msg_cd"], replies[41]["body"]["msg1"]) == (
                    "1",
                    "OPSP0008",
                    "MAX SUBSCRIBE OVER",
                )
                # Still serving: release one, then the 42nd fits.
                await ws.send(request(key, codes[0], tr_type="2"))
                assert (await next_control(ws))["body"]["msg_cd"] == "OPSP0001"
                await ws.send(request(key, codes[41]))
                assert (await next_control(ws))["body"]["msg_cd"] == "OPSP0000"

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("raw", "msg_cd"),
    [
        ("{not json", "OPSP9999"),
        (json.dumps({"body": {"input": {"tr_id": "H0STCNT0", "tr_key": LIQUID}}}), "OPSP9998"),
        (json.dumps({"header": {"approval_key": "x"}}), "OPSP9992"),
        (json.dumps({"header": {"approval_key": "x"}, "body": {}}), "OPSP9991"),
        ("BADKEY", "OPSP0011"),
        ("CUSTTYPE", "OPSP8998"),
        ("TRTYPE", "OPSP8997"),
        ("TRID", "OPSP8991"),
        ("TRKEY", "OPSP8992"),
    ],
)
def test_malformed_requests_get_the_kis_error_codes(raw: str, msg_cd: str) -> None:
    async def scenario() -> None:
        async with running_sim() as sim:
            key = await approval_key(sim)
            text = {
                "BADKEY": request("not-an-approval-key", LIQUID),
                "CUSTTYPE": request(key, LIQUID, custtype="X"),
                "TRTYPE": request(key, LIQUID, tr_type="0"),
                "TRID": request(key, LIQUID, tr_id="H0ZZZZZ0"),
                "TRKEY": request(key, "999999"),
            }.get(raw, raw)
            async with connect(sim.ws_url, ping_interval=None) as ws:
                await ws.send(text)
                reply = await next_control(ws)
                assert reply["body"]["msg_cd"] == msg_cd
                assert reply["body"]["rt_cd"] != "0"

    asyncio.run(scenario())


def test_a_second_session_on_the_same_app_key_is_refused_and_closed() -> None:
    async def scenario() -> None:
        async with running_sim() as sim:
            key = await approval_key(sim)
            async with connect(sim.ws_url, ping_interval=None) as first:
                await first.send(request(key, LIQUID))
                assert (await next_control(first))["body"]["msg_cd"] == "OPSP0000"
                async with connect(sim.ws_url, ping_interval=None) as second:
                    await second.send(request(key, "000660"))
                    refusal = json.loads(await asyncio.wait_for(second.recv(), 5))
                    assert refusal == {
                        "header": {"tr_id": "(null)", "tr_key": "", "encrypt": "N"},
                        "body": {"rt_cd": "9", "msg_cd": "OPSP8996", "msg1": "ALREADY IN USE appkey"},
                    }
                    with pytest.raises(ConnectionClosed):
                        await asyncio.wait_for(second.recv(), 5)
                # The first session is untouched.
                await first.send(request(key, "000660"))
                assert (await next_control(first))["body"]["msg_cd"] == "OPSP0000"
            assert (await ledger(sim))["totals"]["refused_sessions"] == {"main": 1}

    asyncio.run(scenario())


def test_documented_paths_are_served_and_others_refused() -> None:
    async def scenario() -> None:
        async with running_sim() as sim:
            for path in ("/", "/tryitout", "/tryitout/H0STCNT0"):
                async with connect(sim.ws_url + path, ping_interval=None):
                    pass
            with pytest.raises(InvalidStatus) as err:
                async with connect(sim.ws_url + "/ws", ping_interval=None):
                    pass
            assert err.value.response.status_code == 404

    asyncio.run(scenario())


# -------------------------------------------------------------------------------------- pingpong


def test_pingpong_is_sent_and_a_silent_client_is_disconnected() -> None:
    async def scenario() -> None:
        limits = WsLimits(pingpong_interval_s=0.2, pingpong_timeout_s=0.5)
        async with running_sim(limits=limits) as sim:
            key = await approval_key(sim)
            async with connect(sim.ws_url, ping_interval=None) as ws:
                await ws.send(request(key, sim.market.symbols[-1].code))
                await next_control(ws)
                ping = None
                while ping is None:
                    msg = await asyncio.wait_for(ws.recv(), 5)
                    if isinstance(msg, str) and '"PINGPONG"' in msg:
                        ping = json.loads(msg)
                assert set(ping) == {"header"} and set(ping["header"]) == {"tr_id", "datetime"}
                assert len(ping["header"]["datetime"]) == 14
                # No echo: the server closes the session.
                with pytest.raises(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(ws.recv(), 5)
            assert (await ledger(sim))["sessions"][0]["close_reason"] == "no_pingpong_echo"

    asyncio.run(scenario())


def test_echoing_pingpong_keeps_the_session() -> None:
    async def scenario() -> None:
        limits = WsLimits(pingpong_interval_s=0.1, pingpong_timeout_s=0.3)
        async with running_sim(limits=limits) as sim:
            key = await approval_key(sim)
            async with connect(sim.ws_url, ping_interval=None) as ws:
                await ws.send(request(key, sim.market.symbols[-1].code))
                await next_control(ws)
                echoed = 0
                while echoed < 8:
                    msg = await asyncio.wait_for(ws.recv(), 5)
                    if isinstance(msg, str) and '"PINGPONG"' in msg:
                        await ws.send(msg)
                        echoed += 1
            doc = await ledger(sim)
            assert doc["sessions"][0]["pongs_received"] >= 8
            assert doc["sessions"][0]["close_reason"] != "no_pingpong_echo"

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------- data frames


def test_frames_carry_every_record_the_ledger_counts_with_multi_record_batches() -> None:
    async def scenario() -> None:
        surge = SurgeSpec(symbol=LIQUID, start=dt.time(9, 0), minutes=30, factor=20)
        async with running_sim(speed=60, surges=(surge,)) as sim:
            key = await approval_key(sim)
            received: list[list[str]] = []
            counts: list[int] = []
            async with connect(sim.ws_url, ping_interval=None, max_size=2**22) as ws:
                await ws.send(request(key, LIQUID))
                assert (await next_control(ws))["body"]["msg_cd"] == "OPSP0000"
                while len(received) < 2000:
                    msg = await asyncio.wait_for(ws.recv(), 10)
                    assert isinstance(msg, str)
                    if msg[0] == "0":
                        records = split_frame(msg)
                        counts.append(len(records))
                        received.extend(records)
                await ws.send(request(key, LIQUID, tr_type="2"))
                # Replies and frames share one ordered stream: after OPSP0001 no frame of LIQUID follows.
                while True:
                    msg = await asyncio.wait_for(ws.recv(), 10)
                    assert isinstance(msg, str)
                    if msg[0] == "0":
                        received.extend(split_frame(msg))
                    elif json.loads(msg)["body"]["msg_cd"] == "OPSP0001":
                        break
            session = (await ledger(sim))["sessions"][0]
            assert session["records_by_symbol"][LIQUID] == len(received)
            assert all(len(r) == 46 and r[0] == LIQUID for r in received)
            assert max(counts) > 1 and max(counts) <= 5, "same-second trades go out together, at most 5"
            cumulative = [int(r[13]) for r in received]
            assert cumulative == sorted(cumulative) and len(set(cumulative)) == len(cumulative)
            assert all(int(r[13]) - int(p[13]) == int(r[12]) for p, r in itertools.pairwise(received))

    asyncio.run(scenario())


def test_injected_bad_frames_are_counted_by_kind() -> None:
    async def scenario() -> None:
        faults = WsFaults(malformed_rate=0.3, wrong_field_count_rate=0.2, unknown_tr_rate=0.1, seed=5, record_width=47)
        async with running_sim(speed=60, ws_faults=faults) as sim:
            key = await approval_key(sim)
            seen = {"malformed": 0, "wrong_field_count": 0, "unknown_tr": 0, "good": 0}
            async with connect(sim.ws_url, ping_interval=None) as ws:
                await ws.send(request(key, LIQUID))
                await next_control(ws)
                while seen["good"] < 300:
                    msg = await asyncio.wait_for(ws.recv(), 10)
                    assert isinstance(msg, str)
                    if msg[0] != "0":
                        continue
                    _, tr_id, count, payload = msg.split("|", 3)
                    fields = payload.split("^")
                    if tr_id != "H0STCNT0":
                        seen["unknown_tr"] += 1
                    elif len(fields) // int(count) < 46:
                        seen["wrong_field_count"] += 1
                    elif any(not fields[i].lstrip("-").isdigit() for i in (2, 12, 13)):
                        seen["malformed"] += 1
                    else:
                        assert len(fields) == 47 * int(count), "record_width=47 appends one field per record"
                        seen["good"] += 1
                await ws.send(request(key, LIQUID, tr_type="2"))
                while (msg := await asyncio.wait_for(ws.recv(), 10))[0] != "{" or "OPSP0001" not in msg:
                    if msg[0] == "0" and msg.split("|", 3)[1] != "H0STCNT0":
                        seen["unknown_tr"] += 1
                    elif msg[0] == "0":
                        fields = msg.split("|", 3)[3].split("^")
                        count = int(msg.split("|", 3)[2])
                        if len(fields) // count < 46:
                            seen["wrong_field_count"] += 1
                        elif any(not fields[i].lstrip("-").isdigit() for i in (2, 12, 13)):
                            seen["malformed"] += 1
            bad = (await ledger(sim))["sessions"][0]["bad_frames"]
            assert bad == {k: v for k, v in seen.items() if k != "good" and v}
            assert sum(bad.values()) > 50

    asyncio.run(scenario())


def test_drop_fault_cuts_the_connection_and_a_new_session_starts_clean() -> None:
    async def scenario() -> None:
        async with running_sim(speed=30, ws_faults=WsFaults(drop_every_s=0.5)) as sim:
            key = await approval_key(sim)
            async with connect(sim.ws_url, ping_interval=None) as ws:
                await ws.send(request(key, LIQUID))
                await next_control(ws)
                with pytest.raises(ConnectionClosed) as err:
                    while True:
                        await asyncio.wait_for(ws.recv(), 5)
                assert err.value.rcvd is None, "a cut connection has no close frame (1006)"
            # Stay away for 10 simulated seconds (a condition on the simulator's clock, with a deadline).
            dropped_at = (await ledger(sim))["sim_time_us"]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while (await ledger(sim))["sim_time_us"] < dropped_at + 10_000_000:
                assert loop.time() < deadline, "the simulated clock stopped"
                await asyncio.sleep(0.05)
            async with connect(sim.ws_url, ping_interval=None) as ws:
                # Registrations did not survive: registering again succeeds rather than ALREADY IN SUBSCRIBE.
                await ws.send(request(key, LIQUID))
                assert (await next_control(ws))["body"]["msg_cd"] == "OPSP0000"
            doc = await ledger(sim)
            assert doc["totals"]["drops"] >= 1
            assert doc["sessions"][0]["close_reason"] == "fault_drop"
            assert doc["totals"]["missed_while_unregistered"] > 0, "trades made between sessions are on the ledger"

    asyncio.run(scenario())


def test_flood_sends_only_registered_symbols_and_the_ledger_counts_them() -> None:
    async def scenario() -> None:
        pre_open = dt.datetime(2026, 11, 20, 8, 0, tzinfo=KST)  # no trades of the market's own
        async with running_sim(start=pre_open) as sim:
            wanted = [s.code for s in sim.market.symbols[:2]]
            other = sim.market.symbols[2].code
            key = await approval_key(sim)
            async with connect(sim.ws_url, ping_interval=None) as ws:
                for code in wanted:
                    await ws.send(request(key, code))
                    assert (await next_control(ws))["body"]["msg_cd"] == "OPSP0000"
                record = [wanted[0], *["0"] * 45]
                trades = [
                    Trade(code, 1_700_000_000_000_000 + i // 7 * 1_000_000, [code, *record[1:]])
                    for i, code in enumerate(itertools.islice(itertools.cycle([*wanted, other]), 60))
                ]
                sent = await sim.ws.flood(trades)
                got: list[str] = []
                while len(got) < sent:
                    msg = await asyncio.wait_for(ws.recv(), 5)
                    if isinstance(msg, str) and msg.startswith("0|"):
                        got.extend(r[0] for r in split_frame(msg))
            totals = sim.ledger.totals()
        assert sent == 40 == totals["records_sent"]
        assert sorted(got) == sorted(t.symbol for t in trades if t.symbol in wanted)
        assert totals["records_by_symbol"] == {code: 20 for code in wanted}

    asyncio.run(scenario())


def test_a_leaked_registration_makes_the_clients_41st_subscription_the_42nd() -> None:
    async def scenario() -> None:
        async with running_sim() as sim:
            key = await approval_key(sim)
            codes = [s.code for s in sim.market.symbols[:41]]
            async with connect(sim.ws_url, ping_interval=None) as ws:
                await ws.send(request(key, codes[0]))
                assert (await next_control(ws))["body"]["msg_cd"] == "OPSP0000"
                assert sim.ws.leak_registration() == 1
                replies = []
                for code in codes[1:]:
                    await ws.send(request(key, code))
                    replies.append((await next_control(ws))["body"]["msg_cd"])
                assert replies == ["OPSP0000"] * 39 + ["OPSP0008"]
                assert sim.ledger.totals()["replies"]["OPSP0008"] == 1
                assert [sym for _, _, sym in sim.ledger.subscribes] == codes[:40]  # accepted trade subscriptions
            # The leak belongs to the session: a new one has all 41 again.
            async with connect(sim.ws_url, ping_interval=None) as ws:
                for code in codes:
                    await ws.send(request(key, code))
                    assert (await next_control(ws))["body"]["msg_cd"] == "OPSP0000"

    asyncio.run(scenario())
