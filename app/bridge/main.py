"""``observer bridge``: wiring the bridge for one app key, running it, and the SIGTERM summary."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

from app import kafka_backoff
from app.bridge.assignments import AssignmentFollower
from app.bridge.journal import Journal
from app.bridge.metrics import BridgeMetrics
from app.bridge.publisher import Publisher, PublisherConfig
from app.bridge.service import Bridge, BridgeConfig
from app.config import Settings
from app.kis.credentials import choose_credentials
from app.kis.rest import KisRestClient
from app.krx import is_continuous_trading
from app.observability import with_process_metrics
from app.records import default_codec

log = logging.getLogger(__name__)


@dataclass
class BridgeRun:
    bridge: Bridge
    publisher: Publisher
    metrics: BridgeMetrics


async def publish_counts_every(bridge: Bridge, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        bridge.publish_counts()


async def run_bridge(
    settings: Settings,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[BridgeRun], None] | None = None,
    metrics_port: int | None = None,
    watchdog_s: float | None = None,
    watchdog_always: bool | None = None,
) -> BridgeRun:
    """Run until ``stop`` (or SIGTERM/SIGINT when ``stop`` is None); flush; return the run for its counts."""
    kafka_backoff.install()
    credentials = choose_credentials(settings, dict(os.environ))
    app_key_id = settings.bridge_app_key_id
    metrics = BridgeMetrics()
    codec = default_codec()
    state_dir = settings.home / "bridge" / app_key_id
    journal = Journal(state_dir / "journal", max_bytes=settings.bridge_journal_max_bytes)
    publisher = Publisher(PublisherConfig(bootstrap_servers=settings.bootstrap_servers), journal, metrics)
    follower = AssignmentFollower(
        settings.bootstrap_servers,
        settings.topic("slot.decisions"),
        app_key_id,
        codec,
        on_undecodable=metrics.undecodable_decisions.inc,
    )
    config = BridgeConfig(
        app_key_id=app_key_id,
        ws_url=settings.kis_ws_url,
        ticks_topic=settings.topic("kis.ticks.raw"),
        dlq_topic=settings.topic("kis.dlq"),
        subscriptions_topic=settings.topic("kis.subscriptions"),
        counts_topic=settings.topic("observer.counts"),
        watchdog_s=settings.bridge_watchdog_s if watchdog_s is None else watchdog_s,
        watchdog_always=settings.bridge_watchdog_always if watchdog_always is None else watchdog_always,
    )
    port = settings.bridge_metrics_port if metrics_port is None else metrics_port
    http_server = None
    if port:
        from prometheus_client import start_http_server

        http_server, _thread = start_http_server(
            port, addr=settings.bridge_metrics_host, registry=with_process_metrics(metrics.registry)
        )
    own_stop = stop is None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if own_stop:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    rest = KisRestClient(
        settings.kis_rest_url,
        credentials,
        settings.home / "kis" / "tokens.json",
        requests_per_second=settings.kis_rest_requests_per_second,
    )

    async def approval_key(force_new: bool) -> str:
        return await rest.approval_key(force_new=force_new)

    bridge = Bridge(
        config,
        approval_key,
        publisher,
        follower,
        codec,
        metrics,
        is_trading_time=lambda: is_continuous_trading(dt.datetime.now(dt.UTC)),
    )
    run = BridgeRun(bridge, publisher, metrics)
    await publisher.start()
    follower_task = asyncio.create_task(follower.run(), name="assignment-follower")
    counts_task = asyncio.create_task(publish_counts_every(bridge, settings.bridge_counts_interval_s), name="counts")
    try:
        async with rest:
            if on_ready is not None:
                on_ready(run)
            await bridge.run(stop)
    finally:
        follower_task.cancel()
        counts_task.cancel()
        for name, outcome in zip(
            ("assignment follower", "counts"),
            await asyncio.gather(follower_task, counts_task, return_exceptions=True),
            strict=True,
        ):
            if isinstance(outcome, Exception):
                log.error("bridge: the %s task failed: %s: %s", name, type(outcome).__name__, outcome)
        bridge.publish_counts(final=True)
        await publisher.stop(timeout_s=30)
        journal.close()
        if http_server is not None:
            http_server.shutdown()
        if own_stop:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    return run
