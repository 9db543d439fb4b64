"""The bridge: one KIS WebSocket session per app key, every message accounted for.

Each message received is classified by the protocol layer and ends in exactly one place:
a PINGPONG is echoed; a control reply updates the subscription state and is published to
``kis.subscriptions``; a data frame becomes one ``RawTick`` per record on ``kis.ticks.raw`` (key:
symbol, Kafka timestamp: the trade's event time); anything that cannot be understood or encoded goes
to ``kis.dlq`` whole, with the reason. All three go through the :class:`Publisher`, which never drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.bridge.assignments import AssignmentFollower
from app.bridge.day_counts import DayCounts
from app.bridge.journal import JournalRecord
from app.bridge.metrics import BridgeMetrics
from app.bridge.publisher import Publisher
from app.kis.protocol import (
    TR_TRADE,
    ControlReply,
    DataFrame,
    FrameError,
    Outcome,
    PingPong,
    classify,
    render_subscribe_request,
)
from app.kis.rest import KisApiError
from app.kis.ticks import frame_to_ticks
from app.records import CodecError, RecordCodec, dead_letter_record

log = logging.getLogger(__name__)


class SessionEnded(Exception):
    """The session cannot go on; ``kind`` is a metric label, ``delay_s`` a minimum wait before reconnecting."""

    def __init__(self, kind: str, message: str, delay_s: float = 0.0) -> None:
        super().__init__(message)
        self.kind = kind
        self.delay_s = delay_s


@dataclass(frozen=True)
class BridgeConfig:
    app_key_id: str
    ws_url: str
    ticks_topic: str
    dlq_topic: str
    subscriptions_topic: str
    counts_topic: str
    reconnect_backoff_s: tuple[float, float] = (0.2, 30.0)
    subscribe_interval_s: float = 0.02  # KIS samples pace requests; 41 symbols re-register in under a second
    watchdog_s: float = 60.0  # no data frame this long while subscribed, in trading hours: reconnect
    watchdog_always: bool = False  # tests and the simulator: ignore the trading-hours gate
    refused_backoff_s: float = 60.0  # after ALREADY IN USE appkey or a repeated invalid approval key
    stable_session_s: float = 30.0  # a session that lasted this long resets the backoff


@dataclass
class SessionState:
    session_id: str
    ws: ClientConnection
    approval_key: str
    frame_seq: int = 0
    registered: set[str] = field(default_factory=set)
    pending: dict[str, str] = field(default_factory=dict)  # symbol -> "subscribe" | "unsubscribe"
    refused: set[str] = field(default_factory=set)
    cipher: tuple[str, str] | None = None
    last_data: float = field(default_factory=time.monotonic)
    opened: float = field(default_factory=time.monotonic)
    restored: bool = False
    records_parsed: int = 0  # trade records of this session's frames (a cut loses what is still in flight)


class Bridge:
    def __init__(
        self,
        config: BridgeConfig,
        approval_key: Callable[[bool], Awaitable[str]],
        publisher: Publisher,
        follower: AssignmentFollower,
        codec: RecordCodec,
        metrics: BridgeMetrics,
        is_trading_time: Callable[[], bool],
    ) -> None:
        """``approval_key(force_new)`` is an async callable returning the WebSocket approval key."""
        self.config = config
        self._approval_key = approval_key
        self.publisher = publisher
        self.follower = follower
        self.codec = codec
        self.metrics = metrics
        self._is_trading_time = is_trading_time
        self.session: SessionState | None = None
        self.sessions_opened = 0
        self.frames_received = 0
        self.records_parsed = 0
        self.dead_lettered = 0
        self.day_counts = DayCounts("bridge", config.app_key_id)
        self.reconnects = 0
        self.last_error = ""
        self.restore_times_s: list[float] = []  # per session: open -> every assigned symbol registered
        self.retry_at: float | None = None  # monotonic time of the next connection attempt while backing off
        self._rng = random.Random()
        received = metrics.messages_received
        self._received = {kind: received.labels(kind) for kind in ("bad", "data", "pingpong", "control")}

    # ------------------------------------------------------------------------------------ run loop

    async def run(self, stop: asyncio.Event) -> None:
        low, high = self.config.reconnect_backoff_s
        backoff = low
        force_new_key = False
        invalid_in_a_row = 0
        while not stop.is_set():
            started = time.monotonic()
            reason, delay = "closed", 0.0
            try:
                await self._session(stop, force_new_key)
                force_new_key = False
                invalid_in_a_row = 0
            except SessionEnded as exc:
                reason, delay = exc.kind, exc.delay_s
                self.last_error = str(exc)
                if exc.kind == "invalid_approval":
                    invalid_in_a_row += 1
                    force_new_key = True
                    if invalid_in_a_row > 1:
                        delay = max(delay, self.config.refused_backoff_s)
                log.error("KIS session ended: %s", exc)
            except KisApiError as exc:
                reason = "approval_failed"
                self.last_error = str(exc)
                log.error("KIS approval key request failed: %s", exc)
            except (OSError, ConnectionClosed, websockets.InvalidHandshake, TimeoutError) as exc:
                reason = type(exc).__name__
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("KIS WebSocket lost: %s", self.last_error)
            finally:
                self.metrics.connected.set(0)
                self.session = None
            if stop.is_set():
                break
            self.reconnects += 1
            self.metrics.reconnects.labels(reason).inc()
            if time.monotonic() - started > self.config.stable_session_s:
                backoff = low
            wait = max(delay, backoff * (0.5 + self._rng.random()))  # jitter: never in lock-step with others
            backoff = min(high, backoff * 2)
            log.info("reconnecting in %.2f s (%s)", wait, reason)
            self.retry_at = time.monotonic() + wait
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            self.retry_at = None

    async def _session(self, stop: asyncio.Event, force_new_key: bool) -> None:
        key = await self._approval_key(force_new_key)
        async with connect(
            self.config.ws_url, ping_interval=None, compression=None, max_size=None, open_timeout=10, close_timeout=2
        ) as ws:
            state = SessionState(session_id=uuid.uuid4().hex[:12], ws=ws, approval_key=key)
            local_port = ws.local_address[1] if ws.local_address else "?"
            self.session = state
            self.sessions_opened += 1
            self.metrics.connected.set(1)
            log.info("KIS session %s open on %s", state.session_id, self.config.ws_url)
            helpers = [
                asyncio.create_task(self._reconcile(state), name="bridge-reconcile"),
                asyncio.create_task(self._watchdog(state), name="bridge-watchdog"),
            ]
            reader = asyncio.create_task(self._read(state), name="bridge-reader")
            stopper = asyncio.create_task(stop.wait(), name="bridge-stop")
            try:
                done, _ = await asyncio.wait([reader, stopper, *helpers], return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stopper and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
            finally:
                for task in (reader, stopper, *helpers):
                    task.cancel()
                await asyncio.gather(reader, stopper, *helpers, return_exceptions=True)
                self.metrics.subscribed.set(0)
                # Matched against what KIS sent on the connection (the simulator's ledger has the port).
                log.info(
                    "KIS session %s closed: %d frames, %d trade records received on local port %s",
                    state.session_id,
                    state.frame_seq,
                    state.records_parsed,
                    local_port,
                )

    # -------------------------------------------------------------------------------------- reading

    async def _read(self, state: SessionState) -> None:
        async for message in state.ws:
            received_at_us = time.time_ns() // 1000
            text = message if isinstance(message, str) else message.decode("utf-8", errors="surrogateescape")
            await self._handle(state, text, received_at_us)
            await self.publisher.wait_capacity()
        raise ConnectionClosed(state.ws.protocol.close_rcvd, state.ws.protocol.close_sent)

    async def _handle(self, state: SessionState, text: str, received_at_us: int) -> None:
        try:
            msg = classify(text)
        except FrameError as exc:
            self._received["bad"].inc()
            self._dead_letter(state, text, exc.reason, exc.detail, received_at_us, frame_seq=None)
            return
        if isinstance(msg, DataFrame):
            self._received["data"].inc()
            await self._on_frame(state, msg, text, received_at_us)
        elif isinstance(msg, PingPong):
            self._received["pingpong"].inc()
            await state.ws.send(msg.text)  # KIS wants the same text back
            self.metrics.pingpongs.inc()
        else:
            self._received["control"].inc()
            self._on_reply(state, msg, received_at_us)

    async def _on_frame(self, state: SessionState, frame: DataFrame, text: str, received_at_us: int) -> None:
        state.frame_seq += 1
        state.last_data = time.monotonic()
        self.frames_received += 1
        self.metrics.frames_received.inc()
        try:
            ticks = frame_to_ticks(
                frame,
                received_at_us=received_at_us,
                app_key_id=self.config.app_key_id,
                session_id=state.session_id,
                frame_seq=state.frame_seq,
                cipher=state.cipher,
            )
            encode = self.codec.encode
            records = [
                JournalRecord(
                    self.config.ticks_topic,
                    t["symbol"].encode(),
                    encode("RawTick", t),
                    t["event_time_us"] // 1000,
                    received_at_us,
                )
                for t in ticks
            ]
        except FrameError as exc:
            self._dead_letter(state, text, exc.reason, exc.detail, received_at_us, state.frame_seq)
            return
        except CodecError as exc:  # e.g. a number beyond int64: the frame goes to the DLQ whole
            self._dead_letter(state, text, "encode_failed", str(exc), received_at_us, state.frame_seq)
            return
        if ticks:
            self.day_counts.frame_parsed(ticks[0]["business_date"], len(records))
        self.records_parsed += len(records)
        state.records_parsed += len(records)
        self.metrics.records_parsed.inc(len(records))
        self.publisher.submit(records)

    def _dead_letter(
        self, state: SessionState, text: str, reason: str, detail: str, received_at_us: int, frame_seq: int | None
    ) -> None:
        self.dead_lettered += 1
        self.metrics.dead_letters.labels(reason).inc()
        self.day_counts.dead_lettered(reason, data_frame=frame_seq is not None)
        log.warning(
            "dead-lettered a message of session %s (frame %s): %s: %s",
            state.session_id,
            frame_seq,
            reason,
            detail[:200],
        )
        payload = text.encode("utf-8", "surrogateescape")
        value = self.codec.encode(
            "DeadLetter",
            dead_letter_record(
                "bridge", reason, detail, payload, received_at_us, session_id=state.session_id, frame_seq=frame_seq
            ),
        )
        self.publisher.submit(
            [JournalRecord(self.config.dlq_topic, b"bridge", value, received_at_us // 1000, received_at_us)]
        )

    # -------------------------------------------------------------------------------- subscriptions

    def _on_reply(self, state: SessionState, reply: ControlReply, received_at_us: int) -> None:
        outcome = reply.outcome
        self.metrics.subscription_replies.labels(reply.msg_cd, outcome.value).inc()
        symbol = reply.tr_key
        action = state.pending.pop(symbol, "unsubscribe" if reply.is_unsubscribe else "subscribe")
        if reply.tr_id == TR_TRADE and reply.key and reply.iv:
            state.cipher = (reply.key, reply.iv)
        if outcome in (Outcome.SUCCESS, Outcome.ALREADY_SUBSCRIBED):
            state.registered.add(symbol)
        elif outcome in (Outcome.UNSUBSCRIBED, Outcome.NOT_FOUND):
            state.registered.discard(symbol)
        elif outcome not in (Outcome.INVALID_APPROVAL, Outcome.APPKEY_IN_USE):
            # MAX SUBSCRIBE OVER and errors: the slot manager learns it from the event; no retry loop here.
            state.refused.add(symbol)
            log.warning("KIS refused %s %s: %s %s", action, symbol, reply.msg_cd, reply.msg1)
        self.metrics.subscribed.set(len(state.registered))
        if (
            not state.restored
            and self.follower.ready.is_set()
            and set(self.follower.assigned) <= (state.registered | state.refused)
        ):
            state.restored = True
            self.restore_times_s.append(time.monotonic() - state.opened)
        assignment = self.follower.assigned.get(symbol)
        event = {
            "app_key_id": self.config.app_key_id,
            "session_id": state.session_id,
            "symbol": symbol,
            "tr_id": reply.tr_id,
            "action": action,
            "outcome": outcome.value,
            "rt_cd": reply.rt_cd,
            "msg_cd": reply.msg_cd,
            "msg1": reply.msg1,
            "event_time_us": received_at_us,
            "decision_id": assignment.decision_id if assignment else None,
        }
        self.publisher.submit(
            [
                JournalRecord(
                    self.config.subscriptions_topic,
                    self.config.app_key_id.encode(),
                    self.codec.encode("SubscriptionEvent", event),
                    received_at_us // 1000,
                    received_at_us,
                )
            ]
        )
        if outcome is Outcome.APPKEY_IN_USE:
            self.metrics.session_errors.labels("appkey_in_use").inc()
            raise SessionEnded(
                "appkey_in_use",
                f"KIS says ALREADY IN USE appkey for app key "
                f"{self.config.app_key_id!r}: another process holds its one session; waiting "
                f"{self.config.refused_backoff_s:.0f} s before trying again",
                self.config.refused_backoff_s,
            )
        if outcome is Outcome.INVALID_APPROVAL:
            self.metrics.session_errors.labels("invalid_approval").inc()
            raise SessionEnded(
                "invalid_approval",
                f"KIS rejected the approval key of app key "
                f"{self.config.app_key_id!r} ({reply.msg_cd}); a new one will be requested",
            )

    async def _reconcile(self, state: SessionState) -> None:
        """Keep KIS registrations equal to the assignment: subscribe the missing, release the released."""
        while True:
            self.follower.changed.clear()
            desired = set(self.follower.assigned)
            self.metrics.assigned.set(len(desired))
            state.refused &= desired  # a re-assigned symbol may be tried again
            # Releases first: KIS answers a session's requests in order, so a replacement's subscribe then
            # finds its predecessor's registration gone instead of a 42nd (MAX SUBSCRIBE OVER).
            for symbol in sorted(state.registered - desired - set(state.pending)):
                await self._request(state, symbol, subscribe=False)
            for symbol in sorted(desired - state.registered - set(state.pending) - state.refused):
                await self._request(state, symbol, subscribe=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.follower.changed.wait(), 1.0)

    async def _request(self, state: SessionState, symbol: str, subscribe: bool) -> None:
        state.pending[symbol] = "subscribe" if subscribe else "unsubscribe"
        await state.ws.send(render_subscribe_request(state.approval_key, TR_TRADE, symbol, subscribe))
        await asyncio.sleep(self.config.subscribe_interval_s)

    async def _watchdog(self, state: SessionState) -> None:
        check_every = min(1.0, self.config.watchdog_s / 4)
        while True:
            await asyncio.sleep(check_every)
            silent = time.monotonic() - state.last_data
            if (
                state.registered
                and silent > self.config.watchdog_s
                and (self.config.watchdog_always or self._is_trading_time())
            ):
                self.metrics.watchdog_trips.inc()
                raise SessionEnded(
                    "watchdog",
                    f"no data frame for {silent:.0f} s with {len(state.registered)} "
                    f"symbols subscribed: the feed is stale, reconnecting",
                )

    def publish_counts(self, final: bool = False) -> None:
        """The day counts changed since the last call, to ``observer.counts`` through the journal."""
        now_us = time.time_ns() // 1000
        self.publisher.submit(
            [
                JournalRecord(
                    self.config.counts_topic, key, self.codec.encode("StageCounts", value), now_us // 1000, now_us
                )
                for key, value in self.day_counts.take(final)
            ]
        )

    def summary(self) -> str:
        p = self.publisher
        return (
            f"bridge {self.config.app_key_id}: {self.frames_received} frames received, {self.records_parsed} "
            f"records parsed, {p.published_total} records acked by Kafka, {self.dead_lettered} dead-lettered, "
            f"{len(p.journal)} left in the journal, {p.in_flight} in flight, {self.sessions_opened} sessions, "
            f"{self.reconnects} reconnects"
        )
