"""The KIS simulator: one market, one simulated clock, KIS's REST and WebSocket servers on real sockets.

A driver task advances the market to the simulated clock every ``tick_s`` wall seconds and hands the new
trades to the WebSocket server; REST answers from the same market state. ``GET /sim/ledger`` on the REST
port reports exactly what was sent (ground truth for tests); ``POST /sim/drop`` cuts every session now.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from websockets.asyncio.server import Server, serve

from app.kis.credentials import simulator_credentials
from app.sim.clock import SimClock
from app.sim.ledger import Ledger
from app.sim.market import Market, RatePeriod, SurgeSpec
from app.sim.rest import RestFaults, create_rest_app
from app.sim.ws import WsFaults, WsLimits, WsServer

log = logging.getLogger(__name__)


def latest_open() -> dt.datetime:
    """09:00 KST of the latest KRX trading day: simulated ticks carry their trade time into Kafka, and a
    fixed date would fall out of the topics' retention (and be deleted by the broker) a month later."""
    from app.krx import KST, latest_session, today_kst

    return dt.datetime.combine(latest_session(today_kst()), dt.time(9, 0), KST)


@dataclass(frozen=True)
class SimConfig:
    seed: int = 1
    start: dt.datetime = field(default_factory=latest_open)
    speed: float = 1.0
    n_symbols: int = 2000
    surges: Sequence[SurgeSpec] = ()
    random_surges: int = 0
    rate_scale: float = 1.0
    rate_periods: Sequence[RatePeriod] = ()
    host: str = "127.0.0.1"
    rest_port: int = 18443
    ws_port: int = 18000
    app_key_ids: Sequence[str] = ("main",)
    tick_s: float = 0.02
    limits: WsLimits = field(default_factory=WsLimits)
    ws_faults: WsFaults = field(default_factory=WsFaults)
    rest_faults: RestFaults = field(default_factory=RestFaults)
    # The market trades up to this simulated instant and no further (REST and sessions keep serving).
    trade_until_us: int | None = None


class KisSimulator:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.market = Market(
            seed=config.seed,
            business_date=config.start.date(),
            n_symbols=config.n_symbols,
            surges=config.surges,
            random_surges=config.random_surges,
            rate_scale=config.rate_scale,
            rate_periods=config.rate_periods,
        )
        self.clock = SimClock(config.start, config.speed)
        self.market.start_at(self.clock.start_us)
        self.ledger = Ledger()
        creds = {label: simulator_credentials(label) for label in config.app_key_ids}
        accepted = {c.app_key.get_secret_value(): c.app_secret.get_secret_value() for c in creds.values()}
        labels = {c.app_key.get_secret_value(): label for label, c in creds.items()}
        self.rest_app = create_rest_app(self.market, self.clock.now_us, accepted, config.rest_faults, labels=labels)
        self.rest_app.router.add_get("/sim/ledger", self._ledger_view)
        self.rest_app.router.add_post("/sim/drop", self._drop_view)
        self.ws = WsServer(
            self.market,
            self.clock,
            self.ledger,
            self.rest_app["approval_keys"],
            labels,
            config.limits,
            config.ws_faults,
        )
        self._runner: web.AppRunner | None = None
        self._ws_server: Server | None = None
        self._driver: asyncio.Task[None] | None = None
        self.rest_port = config.rest_port
        self.ws_port = config.ws_port

    @property
    def rest_url(self) -> str:
        return f"http://{self.config.host}:{self.rest_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.ws_port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.rest_app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.rest_port)
        await site.start()
        self.rest_port = _bound_port(site)
        self._ws_server = await serve(
            self.ws.handler,
            self.config.host,
            self.config.ws_port,
            process_request=self.ws.process_request,
            ping_interval=None,
            compression=None,
            max_size=2**20,
        )
        self.ws_port = int(next(iter(self._ws_server.sockets)).getsockname()[1])
        self._driver = asyncio.create_task(self._drive(), name="sim-driver")

    async def _drive(self) -> None:
        while True:
            until = self.clock.now_us()
            if self.config.trade_until_us is not None:
                until = min(until, self.config.trade_until_us)
            trades = self.market.advance_to(until)
            self.ledger.trades_generated += len(trades)
            self.ledger.sim_time_us = until
            await self.ws.deliver(trades)
            self.ledger.delivered(until, time.time())
            await self.ws.housekeeping()
            # Pace the simulator itself; nothing waits on this as synchronisation.
            await asyncio.sleep(self.config.tick_s)

    async def stop(self) -> None:
        driver_error: BaseException | None = None
        if self._driver is not None:
            if self._driver.done() and not self._driver.cancelled():
                driver_error = self._driver.exception()
            self._driver.cancel()
            await asyncio.gather(self._driver, return_exceptions=True)
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
        if self._runner is not None:
            await self._runner.cleanup()
        if driver_error is not None:
            raise driver_error

    def check_driver(self) -> None:
        """Raise the driver's exception if it died (a dead simulator must not look like a quiet market)."""
        if self._driver is not None and self._driver.done() and not self._driver.cancelled():
            exc = self._driver.exception()
            if exc is not None:
                raise exc

    async def _ledger_view(self, _request: web.Request) -> web.Response:
        doc = self.ledger.to_json()
        doc["rest"] = self.rest_app.get("stats", {})
        doc["active"] = self.ws.describe()
        return web.Response(body=orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS), content_type="application/json")

    async def _drop_view(self, _request: web.Request) -> web.Response:
        dropped = await self.ws.drop_all()
        return web.json_response({"dropped": dropped})


def _bound_port(site: web.TCPSite) -> int:
    server = site._server  # aiohttp keeps the asyncio server here; port 0 needs the real port back
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1])
