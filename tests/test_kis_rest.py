"""KIS REST: the simulator's endpoints against the protocol (plain aiohttp), then our client against them.

The simulator's REST app runs on a real socket (127.0.0.1, port 0) over a real seeded :class:`Market`
advanced to 10:00 KST, so rankings and prices come from a trading day in progress. No pytest-asyncio:
each test drives its own loop with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import re
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

from app.kis.credentials import (
    CredentialsError,
    KisCredentials,
    load_credentials,
    simulator_credentials,
)
from app.kis.rest import KisApiError, KisRestClient
from app.sim.market import Market
from app.sim.rest import (
    APPROVAL_KEYS,
    PATH_APPROVAL,
    PATH_INQUIRE_PRICE,
    PATH_MULTI_PRICE,
    PATH_REVOKE,
    PATH_TOKEN,
    PATH_VOLUME_RANK,
    RANK_PARAMS,
    REST_STATE,
    REST_STATS,
    RestFaults,
    create_rest_app,
    issued_approval_keys,
)

KST = dt.timezone(dt.timedelta(hours=9))
DAY = dt.date(2026, 11, 20)
CREDS = simulator_credentials("main")
APP_KEY = CREDS.app_key.get_secret_value()
APP_SECRET = CREDS.app_secret.get_secret_value()
ACCEPTED = {APP_KEY: APP_SECRET}
LABELS = {APP_KEY: "main"}
OK_ENVELOPE = ("0", "MCA00000", "정상처리 되었습니다.")
RANK_FIELDS = {
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
}
PRICE_KEY_FIELDS = {
    "stck_prpr",
    "prdy_vrss",
    "prdy_vrss_sign",
    "prdy_ctrt",
    "acml_vol",
    "acml_tr_pbmn",
    "prdy_vrss_vol_rate",
    "stck_oprc",
    "stck_hgpr",
    "stck_lwpr",
    "stck_mxpr",
    "stck_llam",
    "stck_sdpr",
    "wghn_avrg_stck_prc",
    "vol_tnrt",
    "lstn_stcn",
    "hts_avls",
    "stck_shrn_iscd",
    "iscd_stat_cls_code",
    "temp_stop_yn",
    "vi_cls_code",
    "mrkt_warn_cls_code",
    "short_over_yn",
    "rprs_mrkt_kor_name",
    "bstp_kor_isnm",
}
RANK_QUERY = {
    "FID_COND_MRKT_DIV_CODE": "J",
    "FID_COND_SCR_DIV_CODE": "20171",
    "FID_INPUT_ISCD": "0000",
    "FID_DIV_CLS_CODE": "0",
    "FID_BLNG_CLS_CODE": "0",
    "FID_TRGT_CLS_CODE": "111111111",
    "FID_TRGT_EXLS_CLS_CODE": "0000000000",
    "FID_INPUT_PRICE_1": "",
    "FID_INPUT_PRICE_2": "",
    "FID_VOL_CNT": "",
    "FID_INPUT_DATE_1": "",
}


def kst_us(hh: int, mm: int) -> int:
    return int(dt.datetime(DAY.year, DAY.month, DAY.day, hh, mm, tzinfo=KST).timestamp()) * 1_000_000


@pytest.fixture(scope="module")
def market() -> Market:
    m = Market(seed=1, business_date=DAY)
    m.start_at(kst_us(9, 59))
    assert m.advance_to(kst_us(10, 0)), "a minute of continuous trading makes trades"
    return m


@contextlib.asynccontextmanager
async def serve(
    market: Market, faults: RestFaults | None = None, *, wall_clock: Callable[[], float] = time.time
) -> AsyncIterator[tuple[str, web.Application]]:
    app = create_rest_app(
        market, lambda: kst_us(10, 0), ACCEPTED, faults or RestFaults(), labels=LABELS, wall_clock=wall_clock
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        await runner.cleanup()


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with http.post(url, data=orjson.dumps(body), headers={"content-type": "application/json"}) as resp:
        return resp.status, orjson.loads(await resp.read())


async def get(
    http: aiohttp.ClientSession, url: str, params: dict[str, str], headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with http.get(url, params=params, headers=headers) as resp:
        return resp.status, orjson.loads(await resp.read())


async def issue_token(http: aiohttp.ClientSession, base: str) -> str:
    status, doc = await post(
        http, base + PATH_TOKEN, {"grant_type": "client_credentials", "appkey": APP_KEY, "appsecret": APP_SECRET}
    )
    assert status == 200, doc
    token = doc["access_token"]
    assert isinstance(token, str)
    return token


def assert_invalid_param(status: int, doc: dict[str, Any], param: str) -> None:
    """KIS's answer to a bad query parameter: HTTP 200, rt_cd 2, OPSQ2001 naming the parameter."""
    assert (status, doc["rt_cd"], doc["msg_cd"], doc["msg1"]) == (200, "2", "OPSQ2001", f"ERROR INVALID {param}")


def quote_headers(token: str, tr: str, **override: str) -> dict[str, str]:
    headers = {
        "content-type": "application/json; charset=utf-8",
        "authorization": f"Bearer {token}",
        "appkey": APP_KEY,
        "appsecret": APP_SECRET,
        "tr_id": tr,
        "custtype": "P",
    }
    headers.update(override)
    return {k: v for k, v in headers.items() if v != "<drop>"}


# ====================================================================== (a) conformance, plain aiohttp


def test_approval_and_token_shapes_and_same_token_within_6h(market: Market) -> None:
    async def main() -> None:
        async with serve(market) as (base, app), aiohttp.ClientSession() as http:
            status, doc = await post(
                http,
                base + PATH_APPROVAL,
                {"grant_type": "client_credentials", "appkey": APP_KEY, "secretkey": APP_SECRET},
            )
            assert status == 200 and set(doc) == {"approval_key"}
            key = doc["approval_key"]
            assert isinstance(key, str) and key
            # The WebSocket server reads the same live dict, under the typed key and the plain string key.
            assert issued_approval_keys(app) == {key: APP_KEY}
            assert app[APPROVAL_KEYS] is app["approval_keys"] is issued_approval_keys(app)

            before = time.time()
            status, doc = await post(
                http,
                base + PATH_TOKEN,
                {"grant_type": "client_credentials", "appkey": APP_KEY, "appsecret": APP_SECRET},
            )
            assert status == 200
            assert set(doc) == {"access_token", "token_type", "expires_in", "access_token_token_expired"}
            assert doc["token_type"] == "Bearer" and doc["expires_in"] == 86400
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", doc["access_token_token_expired"])
            expires = dt.datetime.strptime(doc["access_token_token_expired"], "%Y-%m-%d %H:%M:%S")
            expected = dt.datetime.fromtimestamp(before + 86400, KST).replace(tzinfo=None)
            assert abs((expires - expected).total_seconds()) <= 2, "KST wall clock + 24 h"

            status, again = await post(
                http,
                base + PATH_TOKEN,
                {"grant_type": "client_credentials", "appkey": APP_KEY, "appsecret": APP_SECRET},
            )
            assert status == 200 and again["access_token"] == doc["access_token"]
            assert again["access_token_token_expired"] == doc["access_token_token_expired"]
            stats = app[REST_STATS]
            assert (stats.tokens_issued, stats.tokens_reused, stats.approvals_issued) == (1, 1, 1)
            assert stats.total("token", 200) == 2 and app["stats"] is stats

    asyncio.run(main())


def test_oauth_rejects_bad_key_and_bad_secret(market: Market) -> None:
    async def main() -> None:
        async with serve(market) as (base, _app), aiohttp.ClientSession() as http:
            for path, secret_field in ((PATH_APPROVAL, "secretkey"), (PATH_TOKEN, "appsecret")):
                status, doc = await post(
                    http,
                    base + path,
                    {"grant_type": "client_credentials", "appkey": "PS" + "x" * 34, secret_field: APP_SECRET},
                )
                assert (status, doc) == (
                    403,
                    {"error_description": "유효하지 않은 AppKey입니다.", "error_code": "EGW00103"},
                )
                status, doc = await post(
                    http, base + path, {"grant_type": "client_credentials", "appkey": APP_KEY, secret_field: "y" * 180}
                )
                assert (status, doc["error_code"]) == (403, "EGW00105")
            # The secret goes in "secretkey" for Approval, "appsecret" for tokenP: the other name is refused.
            status, doc = await post(
                http,
                base + PATH_APPROVAL,
                {"grant_type": "client_credentials", "appkey": APP_KEY, "appsecret": APP_SECRET},
            )
            assert (status, doc["error_code"]) == (403, "EGW00105")

    asyncio.run(main())


def test_token_reissue_throttle_and_6h_reuse(market: Market) -> None:
    now = [time.time()]

    async def main() -> None:
        async with serve(market, wall_clock=lambda: now[0]) as (base, app), aiohttp.ClientSession() as http:
            first = await issue_token(http, base)
            status, doc = await post(
                http, base + PATH_REVOKE, {"appkey": APP_KEY, "appsecret": APP_SECRET, "token": first}
            )
            assert (status, doc) == (200, {"code": 200, "message": "접근토큰 폐기에 성공하였습니다"})
            # A forced re-issue (the current token is gone) within 60 s of the last new one is refused.
            now[0] += 30
            status, doc = await post(
                http,
                base + PATH_TOKEN,
                {"grant_type": "client_credentials", "appkey": APP_KEY, "appsecret": APP_SECRET},
            )
            assert (status, doc) == (
                403,
                {"error_description": "접근토큰 발급 잠시 후 다시 시도하세요(1분당 1회)", "error_code": "EGW00133"},
            )
            now[0] += 31
            second = await issue_token(http, base)
            assert second != first
            now[0] += 6 * 3600 - 1
            assert await issue_token(http, base) == second, "same token within 6 h"
            now[0] += 2
            third = await issue_token(http, base)
            assert third != second, "a new token after 6 h"
            assert app[REST_STATS].tokens_throttled == 1 and app[REST_STATS].tokens_issued == 3

    asyncio.run(main())

    async def unthrottled() -> None:
        async with serve(market, RestFaults(token_throttle=False)) as (base, _app), aiohttp.ClientSession() as http:
            first = await issue_token(http, base)
            status, _ = await post(
                http, base + PATH_REVOKE, {"appkey": APP_KEY, "appsecret": APP_SECRET, "token": first}
            )
            assert status == 200
            assert await issue_token(http, base) != first

    asyncio.run(unthrottled())


def test_quotation_header_errors(market: Market) -> None:
    async def main() -> None:
        async with serve(market) as (base, app), aiohttp.ClientSession() as http:
            token = await issue_token(http, base)
            url, params = base + PATH_INQUIRE_PRICE, {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": "005930"}
            cases: list[tuple[dict[str, str], int, str]] = [
                ({"authorization": "<drop>"}, 500, "EGW00205"),
                ({"authorization": f"Basic {token}"}, 500, "EGW00205"),
                ({"authorization": "Bearer not-a-token"}, 500, "EGW00121"),
                ({"appkey": "<drop>"}, 500, "EGW00103"),
                ({"appkey": "PS" + "z" * 34}, 500, "EGW00103"),
                ({"appsecret": "<drop>"}, 500, "EGW00105"),
                ({"custtype": "<drop>"}, 500, "EGW00208"),
                ({"custtype": "X"}, 500, "EGW00208"),
                ({"tr_id": "FHPST01710000"}, 200, "OPSQ0002"),
                ({"tr_id": "<drop>"}, 200, "OPSQ0002"),
            ]
            for override, want_status, want_code in cases:
                status, doc = await get(http, url, params, quote_headers(token, "FHKST01010100", **override))
                assert (status, doc.get("msg_cd")) == (want_status, want_code), override
                assert doc["rt_cd"] != "0" and doc["msg1"] and "output" not in doc
            status, doc = await get(http, url, params, quote_headers(token, "FHKST01010100", custtype="B"))
            assert (status, doc["rt_cd"]) == (200, "0")
            app[REST_STATE].expire_tokens()
            status, doc = await get(http, url, params, quote_headers(token, "FHKST01010100"))
            assert (status, doc) == (500, {"rt_cd": "1", "msg_cd": "EGW00123", "msg1": "기간이 만료된 token 입니다."})

    asyncio.run(main())


def test_inquire_price_envelope_and_fields(market: Market) -> None:
    async def main() -> None:
        async with serve(market) as (base, app), aiohttp.ClientSession() as http:
            token = await issue_token(http, base)
            headers = quote_headers(token, "FHKST01010100")
            url = base + PATH_INQUIRE_PRICE
            status, doc = await get(http, url, {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": "005930"}, headers)
            assert status == 200 and (doc["rt_cd"], doc["msg_cd"], doc["msg1"]) == OK_ENVELOPE
            output = doc["output"]
            assert set(output) >= PRICE_KEY_FIELDS and all(isinstance(v, str) for v in output.values())
            assert output == market.inquire_price("005930") and output["stck_shrn_iscd"] == "005930"
            assert int(output["acml_vol"]) > 0, "the market has traded by 10:00"
            for params, bad in (
                ({"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": "999999"}, "FID_INPUT_ISCD"),
                ({"FID_COND_MRKT_DIV_CODE": "Z", "FID_INPUT_ISCD": "005930"}, "FID_COND_MRKT_DIV_CODE"),
                ({"FID_COND_MRKT_DIV_CODE": "J"}, "FID_INPUT_ISCD"),
            ):
                assert_invalid_param(*await get(http, url, params, headers), bad)
            assert app[REST_STATS].codes["inquire_price"]["MCA00000"] == 1

    asyncio.run(main())


MULTI_PRICE_FIELDS = {
    "inter_shrn_iscd", "inter_kor_isnm", "inter2_prpr", "inter2_prdy_vrss", "prdy_vrss_sign", "prdy_ctrt",
    "acml_vol", "acml_tr_pbmn", "inter2_prdy_clpr", "inter2_askp", "inter2_bidp", "hour_cls_code",
}  # fmt: skip


def test_multi_price_answers_up_to_30_symbols_in_order_and_names_a_bad_pair(market: Market) -> None:
    codes = [s.code for s in market.symbols[:30]]

    def pairs(these: list[str], market_code: str = "J") -> dict[str, str]:
        out = {}
        for n, code in enumerate(these, start=1):
            out |= {f"FID_COND_MRKT_DIV_CODE_{n}": market_code, f"FID_INPUT_ISCD_{n}": code}
        return out

    async def main() -> None:
        async with serve(market) as (base, app), aiohttp.ClientSession() as http:
            token = await issue_token(http, base)
            headers = quote_headers(token, "FHKST11300006")
            url = base + PATH_MULTI_PRICE
            status, doc = await get(http, url, pairs(codes), headers)
            assert status == 200 and (doc["rt_cd"], doc["msg_cd"], doc["msg1"]) == OK_ENVELOPE
            rows = doc["output"]
            assert [r["inter_shrn_iscd"] for r in rows] == codes
            for row, code in zip(rows, codes, strict=True):
                assert set(row) == MULTI_PRICE_FIELDS and all(isinstance(v, str) for v in row.values())
                single = market.inquire_price(code)
                assert (row["inter2_prpr"], row["acml_vol"], row["prdy_ctrt"]) == (
                    single["stck_prpr"],
                    single["acml_vol"],
                    single["prdy_ctrt"],
                ), "the same market state as inquire-price"
                assert int(row["inter2_askp"]) > int(row["inter2_bidp"]) > 0
            status, doc = await get(http, url, pairs([*codes, "005930"]), headers)  # a 31st pair is not read
            assert len(doc["output"]) == 30
            for params, bad in (
                (pairs([codes[0], "999999"]), "FID_INPUT_ISCD_2"),
                (pairs(codes[:2], "Z"), "FID_COND_MRKT_DIV_CODE_1"),
                ({}, "FID_INPUT_ISCD_1"),
            ):
                assert_invalid_param(*await get(http, url, params, headers), bad)
            status, doc = await get(http, url, pairs(codes[:1]), quote_headers(token, "FHKST01010100"))
            assert doc["msg_cd"] == "OPSQ0002", "the multi-price path wants its own tr_id"
            assert app[REST_STATS].codes["multi_price"]["MCA00000"] == 2

    asyncio.run(main())


def test_client_multi_price_takes_1_to_30_symbols(market: Market, tmp_path: Path) -> None:
    codes = [s.code for s in market.symbols[:30]]

    async def main() -> None:
        async with serve(market) as (base, app), client(base, tmp_path, rps=50) as kis:
            rows = await kis.multi_price(codes)
            assert [r["inter_shrn_iscd"] for r in rows] == codes
            for wrong in ([], [*codes, "005930"]):
                with pytest.raises(ValueError, match="1 to 30 symbols"):
                    await kis.multi_price(wrong)
            assert app[REST_STATS].total("multi_price") == 1, "a wrong count never reaches KIS"

    asyncio.run(main())


def test_volume_rank_envelope_fields_order_and_required_params(market: Market) -> None:
    async def main() -> None:
        async with serve(market, RestFaults(rate_limit_per_s=0)) as (base, _app), aiohttp.ClientSession() as http:
            token = await issue_token(http, base)
            headers = quote_headers(token, "FHPST01710000")
            url = base + PATH_VOLUME_RANK
            status, doc = await get(http, url, RANK_QUERY, headers)
            assert status == 200 and (doc["rt_cd"], doc["msg_cd"], doc["msg1"]) == OK_ENVELOPE
            rows = doc["output"]
            assert 0 < len(rows) <= 30
            assert all(set(r) == RANK_FIELDS and all(isinstance(v, str) for v in r.values()) for r in rows)
            assert [r["data_rank"] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
            volumes = [int(r["acml_vol"]) for r in rows]
            assert volumes == sorted(volumes, reverse=True) and volumes[0] > 0
            # blng 3 ranks by traded value; the price filter applies to the rows.
            status, doc = await get(http, url, {**RANK_QUERY, "FID_BLNG_CLS_CODE": "3"}, headers)
            values = [int(r["acml_tr_pbmn"]) for r in doc["output"]]
            assert values == sorted(values, reverse=True)
            status, doc = await get(http, url, {**RANK_QUERY, "FID_INPUT_PRICE_1": "10000"}, headers)
            assert doc["rt_cd"] == "0" and all(int(r["stck_prpr"]) >= 10000 for r in doc["output"])
            for param in RANK_PARAMS:
                query = {k: v for k, v in RANK_QUERY.items() if k != param}
                assert_invalid_param(*await get(http, url, query, headers), param)
            for param, value in (
                ("FID_COND_SCR_DIV_CODE", "20170"),
                ("FID_BLNG_CLS_CODE", "9"),
                ("FID_COND_MRKT_DIV_CODE", "Q"),
            ):
                assert_invalid_param(*await get(http, url, {**RANK_QUERY, param: value}, headers), param)

    asyncio.run(main())


def test_rate_limit_per_appkey_sliding_window(market: Market) -> None:
    assert RestFaults().rate_limit_per_s == 20

    async def main() -> None:
        async with serve(market, RestFaults(rate_limit_per_s=3)) as (base, app), aiohttp.ClientSession() as http:
            token = await issue_token(http, base)
            headers = quote_headers(token, "FHKST01010100")
            params = {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": "005930"}
            replies = await asyncio.gather(*(get(http, base + PATH_INQUIRE_PRICE, params, headers) for _ in range(7)))
            ok = [doc for status, doc in replies if status == 200 and doc["rt_cd"] == "0"]
            limited = [(status, doc) for status, doc in replies if doc.get("msg_cd") == "EGW00201"]
            assert len(ok) == 3 and len(limited) == 4
            assert all(
                r == (500, {"rt_cd": "1", "msg_cd": "EGW00201", "msg1": "초당 거래건수를 초과하였습니다."})
                for r in limited
            )
            stats = app[REST_STATS]
            assert stats.rate_limited == 4 and stats.max_per_window["main"] == 7 and stats.by_key["main"] == 7

    asyncio.run(main())


# ====================================================================== (b) our client


def client(base: str, tmp_path: Path, creds: KisCredentials = CREDS, rps: float = 20.0, **kwargs: Any) -> KisRestClient:
    kwargs.setdefault("backoff_base_s", 0.01)
    kwargs.setdefault("backoff_max_s", 0.05)
    return KisRestClient(base, creds, tmp_path / "kis" / "tokens.json", rps, **kwargs)


def test_client_token_cache_private_and_reused_across_instances(market: Market, tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(market) as (base, app):
            async with client(base, tmp_path) as kis:
                rows = await kis.volume_rank()
                assert 0 < len(rows) <= 30 and rows[0]["data_rank"] == "1"
            cache = tmp_path / "kis" / "tokens.json"
            assert stat.S_IMODE(cache.stat().st_mode) == 0o600
            assert stat.S_IMODE((tmp_path / "kis" / "tokens.json.lock").stat().st_mode) == 0o600
            text = cache.read_text()
            assert APP_KEY not in text and APP_SECRET not in text
            assert list(orjson.loads(text)["tokens"]) == ["main"]
            async with client(base, tmp_path) as kis2:
                price = await kis2.inquire_price("005930")
                assert price["stck_shrn_iscd"] == "005930"
                assert kis2.token_requests == 0
            assert app[REST_STATS].total("token") == 1, "the second instance used the cached token"
            assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]

    asyncio.run(main())


def test_client_pacing_respects_requests_per_second(market: Market, tmp_path: Path) -> None:
    rps = 4

    async def main() -> None:
        # The server allows exactly rps per sliding second: any burst from the client would be refused.
        async with serve(market, RestFaults(rate_limit_per_s=rps)) as (base, app):
            async with client(base, tmp_path, rps=rps) as kis:
                results = await asyncio.gather(*(kis.inquire_price("005930") for _ in range(3 * rps + 2)))
            assert len(results) == 3 * rps + 2
            stats = app[REST_STATS]
            assert stats.by_key["main"] == 3 * rps + 2
            assert stats.max_per_window["main"] <= rps, stats.max_per_window
            assert stats.rate_limited == 0 and kis.retries["inquire_price"] == 0

    asyncio.run(main())


def test_client_retries_through_faults(market: Market, tmp_path: Path) -> None:
    async def main() -> None:
        faults = RestFaults(error_rate=0.5, seed=3, rate_limit_per_s=0)
        async with serve(market, faults) as (base, app):
            async with client(base, tmp_path, max_retries=10) as kis:
                for code in ["005930", "000660", "373220", "051910"] * 4:
                    assert (await kis.inquire_price(code))["stck_shrn_iscd"] == code
                rows = await kis.volume_rank()
                assert rows
            injected = app[REST_STATS].faults_injected
            assert injected > 0
            assert kis.retries["inquire_price"] + kis.retries["volume_rank"] == injected
            assert kis.requests[("inquire_price", "http_5xx")] + kis.requests[("volume_rank", "http_5xx")] == injected
            assert kis.requests[("inquire_price", "ok")] == 16 and not kis.errors

    asyncio.run(main())


def test_client_gives_up_after_max_retries(market: Market, tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(market, RestFaults(error_rate=1.0)) as (base, _app):
            async with client(base, tmp_path, max_retries=2) as kis:
                with pytest.raises(KisApiError) as info:
                    await kis.inquire_price("005930")
            assert (info.value.http_status, info.value.msg_cd) == (500, "EGW00002")
            assert kis.retries["inquire_price"] == 2 and kis.errors["inquire_price"] == 1

    asyncio.run(main())


def test_client_refreshes_an_expired_token_once(market: Market, tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(market, RestFaults(token_throttle=False)) as (base, app):
            async with client(base, tmp_path) as kis:
                await kis.inquire_price("005930")
                old = await kis.access_token()
                app[REST_STATE].expire_tokens()
                await kis.inquire_price("005930")
                assert kis.token_refreshes == 1 and await kis.access_token() != old
            stats = app[REST_STATS]
            assert stats.codes["inquire_price"]["EGW00123"] == 1 and stats.tokens_issued == 2
            cached = orjson.loads((tmp_path / "kis" / "tokens.json").read_bytes())["tokens"]["main"]
            assert cached["access_token"] != old

    asyncio.run(main())


def test_client_throttled_reissue_keeps_valid_token_or_waits(market: Market, tmp_path: Path) -> None:
    async def main() -> None:
        async with serve(market) as (base, _app), aiohttp.ClientSession() as http:
            async with client(base, tmp_path) as kis:
                token = await kis.access_token()
            # Revoke it behind the client's back, so the next new token would be a re-issue within 60 s.
            status, _ = await post(
                http, base + PATH_REVOKE, {"appkey": APP_KEY, "appsecret": APP_SECRET, "token": token}
            )
            assert status == 200
            # 23.5 h later by the client's clock the cached token is inside its last hour: the client asks for
            # a new one, is throttled (EGW00133) and keeps the cached one, which has not expired yet.
            later = time.time() + 23.5 * 3600
            async with client(base, tmp_path, wall_clock=lambda: later) as kis:
                assert await kis.access_token() == token and kis.token_requests == 1
            # With no token at all it waits and retries, a bounded number of times.
            async with client(base, tmp_path / "other", max_retries=2, token_retry_wait_s=0.01) as kis:
                with pytest.raises(KisApiError) as info:
                    await kis.access_token()
            assert info.value.msg_cd == "EGW00133" and kis.token_requests == 3

    asyncio.run(main())


def test_client_invalid_secret_raises_without_leaking(
    market: Market, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wrong_secret = "S3cr3t" + "q" * 174
    bad = KisCredentials(app_key_id="main", app_key=SecretStr(APP_KEY), app_secret=SecretStr(wrong_secret))
    caplog.set_level(logging.DEBUG)

    async def main() -> list[KisApiError]:
        errors: list[KisApiError] = []
        async with serve(market) as (base, _app), client(base, tmp_path, bad) as kis:
            for call in (kis.approval_key, kis.access_token, lambda: kis.inquire_price("005930")):
                with pytest.raises(KisApiError) as info:
                    await call()
                errors.append(info.value)
            assert repr(kis) == f"KisRestClient(base_url={base!r}, app_key_id='main')"
        return errors

    errors = asyncio.run(main())
    assert [(e.endpoint, e.http_status, e.msg_cd) for e in errors] == [
        ("approval", 403, "EGW00105"),
        ("token", 403, "EGW00105"),
        ("token", 403, "EGW00105"),
    ]
    for exc in errors:
        for secret in (wrong_secret, APP_KEY, APP_SECRET):
            assert secret not in str(exc) and secret not in repr(exc)
    assert "EGW00105" in caplog.text
    for secret in (wrong_secret, APP_KEY, APP_SECRET):
        assert secret not in caplog.text
    assert wrong_secret not in repr(bad) and wrong_secret not in str(bad) and APP_KEY not in repr(bad)
    assert not (tmp_path / "kis" / "tokens.json").exists()


def test_client_redacts_secrets_echoed_by_a_server(tmp_path: Path) -> None:
    """A (broken) server that echoes the secret back: the error still does not carry it."""

    async def echo(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        return web.json_response(
            {"error_code": "EGW00105", "error_description": f"bad {body['secretkey']}"}, status=403
        )

    async def main() -> KisApiError:
        app = web.Application()
        app.router.add_post(PATH_APPROVAL, echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            async with client(f"http://127.0.0.1:{runner.addresses[0][1]}", tmp_path) as kis:
                with pytest.raises(KisApiError) as info:
                    await kis.approval_key()
                return info.value
        finally:
            await runner.cleanup()

    exc = asyncio.run(main())
    assert APP_SECRET not in str(exc) and "[redacted]" in str(exc)


def test_client_connection_errors_are_retried_then_raised(tmp_path: Path) -> None:
    async def main() -> KisRestClient:
        # A port nothing listens on (bound then closed).
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        async with client(f"http://127.0.0.1:{port}", tmp_path, max_retries=2) as kis:
            with pytest.raises(KisApiError) as info:
                await kis.approval_key()
            assert (info.value.http_status, info.value.msg_cd) == (0, "CONNECTION")
        return kis

    kis = asyncio.run(main())
    assert kis.retries["approval"] == 2 and kis.requests[("approval", "connection")] == 3


# ====================================================================== credentials


def test_credentials_from_env_and_missing_variable_named() -> None:
    creds = load_credentials({"OBSERVER_KIS_APP_KEY": APP_KEY, "OBSERVER_KIS_APP_SECRET": APP_SECRET}, None)
    assert creds.app_key_id == "main" and creds.app_key.get_secret_value() == APP_KEY
    assert APP_KEY not in repr(creds) and APP_SECRET not in repr(creds) and APP_SECRET not in str(creds)
    with pytest.raises(CredentialsError, match="OBSERVER_KIS_APP_SECRET is not set") as info:
        load_credentials({"OBSERVER_KIS_APP_KEY": APP_KEY}, None)
    assert APP_KEY not in str(info.value)
    with pytest.raises(CredentialsError, match="OBSERVER_KIS_APP_KEY is not set"):
        load_credentials({}, None)
    labelled = load_credentials(
        {"OBSERVER_KIS_APP_KEY": APP_KEY, "OBSERVER_KIS_APP_SECRET": APP_SECRET, "OBSERVER_KIS_APP_KEY_ID": "alt1"},
        None,
    )
    assert labelled.app_key_id == "alt1"


def test_credentials_from_files_and_their_safety_checks(tmp_path: Path) -> None:
    toml = tmp_path / "kis.toml"
    toml.write_text(f'[kis]\napp_key = "{APP_KEY}"\napp_secret = "{APP_SECRET}"\napp_key_id = "acct2"\n')
    os.chmod(toml, 0o600)
    creds = load_credentials({}, toml)
    assert (creds.app_key_id, creds.app_key.get_secret_value(), creds.app_secret.get_secret_value()) == (
        "acct2",
        APP_KEY,
        APP_SECRET,
    )

    env_file = tmp_path / "kis.env"
    env_file.write_text(f"# KIS\nexport OBSERVER_KIS_APP_KEY={APP_KEY}\nOBSERVER_KIS_APP_SECRET='{APP_SECRET}'\n")
    os.chmod(env_file, 0o600)
    assert (
        load_credentials({"OBSERVER_KIS_SECRETS_FILE": str(env_file)}, None).app_secret.get_secret_value() == APP_SECRET
    )
    # The environment wins over the file, variable by variable.
    assert (
        load_credentials({"OBSERVER_KIS_APP_KEY": "PS" + "k" * 34}, env_file).app_key.get_secret_value()
        == "PS" + "k" * 34
    )

    os.chmod(env_file, 0o644)
    with pytest.raises(CredentialsError, match="chmod 600") as info:
        load_credentials({}, env_file)
    assert APP_SECRET not in str(info.value)

    # Inside a git checkout only .local/ is allowed.
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / ".local").mkdir()
    inside, local = repo / "secrets.env", repo / ".local" / "secrets.env"
    for path in (inside, local):
        path.write_text(env_file.read_text())
        os.chmod(path, 0o600)
    with pytest.raises(CredentialsError, match="inside the git checkout"):
        load_credentials({}, inside)
    assert load_credentials({}, local).app_key.get_secret_value() == APP_KEY
    # This project's own checkout is refused before anything is read.
    with pytest.raises(CredentialsError, match="inside the git checkout"):
        load_credentials({}, Path(__file__).resolve().parent / "no-such-secrets.toml")

    broken = tmp_path / "broken.env"
    broken.write_text(f"{APP_SECRET}\n")
    os.chmod(broken, 0o600)
    with pytest.raises(CredentialsError, match="line 1 is not NAME=value") as info:
        load_credentials({}, broken)
    assert APP_SECRET not in str(info.value)


def test_simulator_credentials_are_deterministic_and_accepted(market: Market) -> None:
    a, b, other = simulator_credentials("main"), simulator_credentials("main"), simulator_credentials("alt")
    assert len(a.app_key.get_secret_value()) == 36 and len(a.app_secret.get_secret_value()) == 180
    assert a == b and a.app_key != other.app_key and a.app_secret != other.app_secret

    async def main() -> None:
        async with serve(market) as (base, _app), aiohttp.ClientSession() as http:
            status, _ = await post(
                http,
                base + PATH_APPROVAL,
                {
                    "grant_type": "client_credentials",
                    "appkey": a.app_key.get_secret_value(),
                    "secretkey": a.app_secret.get_secret_value(),
                },
            )
            assert status == 200

    asyncio.run(main())
