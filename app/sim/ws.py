"""The simulator's WebSocket side: KIS's real-time server, its replies, limits and faults.

Rules reproduced (see KIS_PROTOCOL.md sections 2, 3, 6): plain ``ws://`` on root, ``/tryitout`` or
``/tryitout/<TR>``; JSON register (``tr_type`` 1) / release (2) requests authenticated by an approval
key; OPSP0000 with iv/key, OPSP0001, ALREADY IN SUBSCRIBE, UNSUBSCRIBE ERROR, MAX SUBSCRIBE OVER at the
42nd registration, invalid approval, ALREADY IN USE appkey (then closed) for a second session, JSON
parsing errors; registrations lost with the session; PINGPONG on a timer, echo expected, session closed
without one; data frames ``0|H0STCNT0|NNN|...`` with several records when trades of a symbol fall together.
"""

from __future__ import annotations

import asyncio
import random
import string
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from app.kis.protocol import PINGPONG, TR_TRADE, render_control_reply, render_data_frame, render_pingpong
from app.sim.clock import KST, SimClock
from app.sim.ledger import Ledger, SessionLedger
from app.sim.market import Market, Trade

# TRs a client may register; only H0STCNT0 data is generated, the others just take a registration slot.
REGISTERABLE_TRS = frozenset({TR_TRADE, "H0STASP0", "H0STANC0", "H0UNCNT0", "H0NXCNT0"})
ACCEPTED_PATHS = ("/", "/tryitout")
MINUTE_US = 60_000_000


@dataclass(frozen=True)
class WsFaults:
    """Failures on demand. Bad frames are extra frames (the real trades still go out), counted by kind."""

    drop_every_s: float = 0.0  # wall seconds a session lives before the server cuts it; 0 = never
    malformed_rate: float = 0.0  # per data frame: chance of an extra garbled frame
    wrong_field_count_rate: float = 0.0  # per data frame: chance of an extra frame with 45-field records
    unknown_tr_rate: float = 0.0  # per data frame: chance of an extra frame of an unknown TR id
    reply_delay_ms: int = 0  # slow subscribe/unsubscribe replies
    stall_after_s: float = 0.0  # wall seconds after which a session gets no more data (stays open); 0 = never
    record_width: int = 46  # 47 appends a trailing field, as some 2026 client reports describe
    seed: int = 0


@dataclass(frozen=True)
class WsLimits:
    max_registrations: int = 41
    pingpong_interval_s: float = 100.0
    pingpong_timeout_s: float = 100.0
    max_records_per_frame: int = 5


@dataclass(eq=False)
class Session:
    number: int
    ws: ServerConnection
    opened: float
    app_key: str | None = None
    ledger: SessionLedger | None = None
    registered: dict[tuple[str, str], None] = field(default_factory=dict)  # insertion-ordered set
    iv: str = ""
    key: str = ""
    last_ping: float = 0.0
    awaiting_echo_since: float | None = None
    closing: bool = False

    def trade_symbols(self) -> set[str]:
        return {tr_key for tr_id, tr_key in self.registered if tr_id == TR_TRADE}


class WsServer:
    """Serves sessions and delivers the market's trades to whoever registered them."""

    def __init__(
        self,
        market: Market,
        clock: SimClock,
        ledger: Ledger,
        approval_keys: Mapping[str, str],
        app_key_ids: Mapping[str, str],
        limits: WsLimits | None = None,
        faults: WsFaults | None = None,
    ) -> None:
        self.market = market
        self.clock = clock
        self.ledger = ledger
        self.approval_keys = approval_keys  # approval key -> app key (filled by the REST side as it issues)
        self.app_key_ids = app_key_ids  # app key -> non-secret label
        self.limits = limits or WsLimits()
        self.faults = faults or WsFaults()
        self.active: dict[str, Session] = {}  # app key -> its one session
        self.sessions: set[Session] = set()
        self._rng = random.Random(self.faults.seed)
        self._next_session = 1
        # Per app key: symbols registered when its last session ended and not registered since.
        self._gaps: dict[str, set[str]] = {}

    # --------------------------------------------------------------------------------- connection

    def process_request(self, _conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0].rstrip("/") or "/"
        if path in ACCEPTED_PATHS or path.startswith("/tryitout/"):
            return None
        body = f"no such path {path}\n".encode()
        return Response(HTTPStatus.NOT_FOUND.value, "Not Found", Headers([("Content-Length", str(len(body)))]), body)

    async def handler(self, ws: ServerConnection) -> None:
        session = Session(number=self._next_session, ws=ws, opened=time.monotonic())
        self._next_session += 1
        self.sessions.add(session)
        reason = "client_closed"
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    message = message.decode("utf-8", errors="replace")
                await self._on_message(session, message)
        except ConnectionClosed as exc:
            reason = f"connection_closed_{exc.rcvd.code if exc.rcvd else 1006}"
        finally:
            self._end(session, reason)

    def _end(self, session: Session, reason: str) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        if session.ledger is not None and session.ledger.closed_wall is None:
            session.ledger.closed_wall = time.time()
            session.ledger.close_reason = session.ledger.close_reason or reason
        if session.app_key is not None and self.active.get(session.app_key) is session:
            del self.active[session.app_key]
            self._gaps.setdefault(session.app_key, set()).update(session.trade_symbols())

    async def _close(self, session: Session, reason: str, abrupt: bool) -> None:
        """End a session. Abrupt: wait until every sent byte left user space, then cut the TCP connection."""
        if session.closing:
            return
        session.closing = True
        if session.ledger is not None:
            session.ledger.close_reason = reason
        transport = session.ws.transport
        if abrupt:
            deadline = time.monotonic() + 5
            while transport.get_write_buffer_size() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            transport.abort()
        else:
            await session.ws.close()
        self._end(session, reason)

    # ------------------------------------------------------------------------------------ requests

    async def _on_message(self, session: Session, text: str) -> None:
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            await self._reply(session, "", "", "OPSP9999")
            return
        header = doc.get("header") if isinstance(doc, dict) else None
        if isinstance(header, dict) and header.get("tr_id") == PINGPONG:
            if session.ledger is not None:
                session.ledger.pongs_received += 1
            session.awaiting_echo_since = None
            return
        if not isinstance(header, dict):
            await self._reply(session, "", "", "OPSP9998")
            return
        body = doc.get("body")
        if not isinstance(body, dict):
            await self._reply(session, "", "", "OPSP9992")
            return
        inp = body.get("input")
        if not isinstance(inp, dict):
            await self._reply(session, "", "", "OPSP9991")
            return
        tr_id, tr_key = str(inp.get("tr_id", "")), str(inp.get("tr_key", ""))
        app_key = self.approval_keys.get(str(header.get("approval_key", "")))
        if app_key is None or (session.app_key is not None and app_key != session.app_key):
            await self._reply(session, tr_id, tr_key, "OPSP0011")
            return
        custtype = header.get("custtype")
        if custtype is None:
            await self._reply(session, tr_id, tr_key, "OPSP9997")
            return
        if custtype not in ("P", "B"):
            await self._reply(session, tr_id, tr_key, "OPSP8998")
            return
        tr_type = header.get("tr_type")
        if tr_type not in ("1", "2"):
            await self._reply(session, tr_id, tr_key, "OPSP8997")
            return
        if tr_id not in REGISTERABLE_TRS:
            await self._reply(session, tr_id, tr_key, "OPSP8991")
            return
        if tr_key not in self.market.by_code:
            await self._reply(session, tr_id, tr_key, "OPSP8992")
            return
        if session.app_key is None and not await self._bind(session, app_key):
            return
        if self.faults.reply_delay_ms:
            await asyncio.sleep(self.faults.reply_delay_ms / 1000)
        key = (tr_id, tr_key)
        if tr_type == "1":
            if key in session.registered:
                await self._reply(session, tr_id, tr_key, "OPSP0002")
            elif len(session.registered) >= self.limits.max_registrations:
                await self._reply(session, tr_id, tr_key, "OPSP0008")
            else:
                session.registered[key] = None
                if tr_id == TR_TRADE:
                    self._gaps.get(app_key, set()).discard(tr_key)
                    label = session.ledger.app_key_id if session.ledger else ""
                    self.ledger.subscribes.append((time.time(), label, tr_key))
                await self._reply(session, tr_id, tr_key, "OPSP0000", with_cipher=True)
        elif key in session.registered:
            del session.registered[key]
            await self._reply(session, tr_id, tr_key, "OPSP0001")
        else:
            await self._reply(session, tr_id, tr_key, "OPSP0003")

    async def _bind(self, session: Session, app_key: str) -> bool:
        """The first authenticated request ties the session to its app key: one session per key."""
        label = self.app_key_ids.get(app_key, "unknown")
        if app_key in self.active:
            self.ledger.refused_sessions[label] += 1
            reply = orjson.dumps(
                {
                    "header": {"tr_id": "(null)", "tr_key": "", "encrypt": "N"},
                    "body": {"rt_cd": "9", "msg_cd": "OPSP8996", "msg1": "ALREADY IN USE appkey"},
                }
            )
            try:
                await session.ws.send(reply.decode())
            finally:
                await self._close(session, "appkey_in_use", abrupt=False)
            return False
        session.app_key = app_key
        session.ledger = self.ledger.open_session(session.number, label, time.time())
        remote = session.ws.remote_address
        session.ledger.client_port = int(remote[1]) if remote else 0
        session.iv = "".join(self._rng.choices(string.hexdigits.lower()[:16], k=16))
        session.key = "".join(self._rng.choices(string.ascii_lowercase, k=32))
        session.last_ping = time.monotonic()
        self.active[app_key] = session
        return True

    async def _reply(self, session: Session, tr_id: str, tr_key: str, msg_cd: str, with_cipher: bool = False) -> None:
        text = render_control_reply(
            tr_id, tr_key, msg_cd, iv=session.iv if with_cipher else None, key=session.key if with_cipher else None
        )
        await session.ws.send(text)
        if session.ledger is not None:
            session.ledger.replies[msg_cd] += 1

    # ------------------------------------------------------------------------------------ delivery

    async def deliver(self, trades: Sequence[Trade]) -> None:
        """Send each trade to the session that registered its symbol, same-symbol runs batched into frames."""
        if not trades:
            return
        self._count_gaps(trades)
        stall_after = self.faults.stall_after_s
        for session in list(self.active.values()):
            symbols = session.trade_symbols()
            if not symbols or session.closing:
                continue
            mine = [t for t in trades if t.symbol in symbols]
            if stall_after and time.monotonic() - session.opened >= stall_after:
                self.ledger.withheld_by_stall.update(t.symbol for t in mine)  # a stale feed: open but silent
                continue
            for frame_trades in self._frames(mine):
                if session.closing:
                    self._count_missed(session, frame_trades)
                    continue
                await self._send_frame(session, frame_trades)

    async def flood(self, trades: Sequence[Trade]) -> int:
        """Send ``trades`` to the sessions that registered their symbols as fast as the sockets take them.

        For benchmarks: frames are rendered before the first one goes, so the sending rate is the socket's,
        not the renderer's. The ledger counts them as :meth:`deliver` would. Returns the records sent.
        """
        rendered = [
            (session, self._render(frame_trades), frame_trades)
            for session in list(self.active.values())
            for frame_trades in self._frames([t for t in trades if t.symbol in session.trade_symbols()])
        ]
        sent = 0
        for session, text, frame_trades in rendered:
            if await self._send_rendered(session, text, frame_trades):
                sent += len(frame_trades)
        return sent

    def _frames(self, trades: list[Trade]) -> list[list[Trade]]:
        """Consecutive trades of one symbol in one second go out together, at most N per frame."""
        frames: list[list[Trade]] = []
        limit = self.limits.max_records_per_frame
        for t in trades:
            last = frames[-1] if frames else None
            if (
                last is not None
                and len(last) < limit
                and last[0].symbol == t.symbol
                and last[0].event_time_us == t.event_time_us
            ):
                last.append(t)
            else:
                frames.append([t])
        return frames

    def _record(self, trade: Trade) -> list[str]:
        extra = self.faults.record_width - len(trade.record)
        return trade.record + ["2"] * extra if extra > 0 else trade.record

    def _render(self, frame_trades: list[Trade]) -> str:
        return render_data_frame(TR_TRADE, [self._record(t) for t in frame_trades])

    async def _send_frame(self, session: Session, frame_trades: list[Trade]) -> None:
        if await self._send_rendered(session, self._render(frame_trades), frame_trades):
            await self._maybe_inject(session, frame_trades[0])

    async def _send_rendered(self, session: Session, text: str, frame_trades: list[Trade]) -> bool:
        """Send one frame and put it on the ledger: sent, or missed if the session is gone. True if sent."""
        assert session.ledger is not None
        try:
            await session.ws.send(text)
        except ConnectionClosed:
            self._count_missed(session, frame_trades)
            return False
        ledger = session.ledger
        ledger.frames_sent += 1
        ledger.records_sent += len(frame_trades)
        ledger.records_by_symbol.update(t.symbol for t in frame_trades)
        self.ledger.records_by_minute.update(t.event_time_us // MINUTE_US * MINUTE_US for t in frame_trades)
        return True

    def _count_missed(self, session: Session, trades: Sequence[Trade]) -> None:
        label = self.app_key_ids.get(session.app_key or "", "unknown")
        missed = self.ledger.missed_while_unregistered.setdefault(label, Counter())
        for t in trades:
            missed[t.symbol] += 1

    def _count_gaps(self, trades: Sequence[Trade]) -> None:
        for app_key, gap in self._gaps.items():
            if not gap:
                continue
            label = self.app_key_ids.get(app_key, "unknown")
            missed = self.ledger.missed_while_unregistered.setdefault(label, Counter())
            for t in trades:
                if t.symbol in gap:
                    missed[t.symbol] += 1

    async def _maybe_inject(self, session: Session, trade: Trade) -> None:
        f = self.faults
        rng = self._rng
        bad: list[tuple[str, str]] = []
        if f.malformed_rate and rng.random() < f.malformed_rate:
            record = list(self._record(trade))
            record[rng.choice((2, 12, 13))] = rng.choice(("", "N/A", "12a", "--"))
            bad.append(("malformed", render_data_frame(TR_TRADE, [record])))
        if f.wrong_field_count_rate and rng.random() < f.wrong_field_count_rate:
            short = self._record(trade)[:45]
            bad.append(("wrong_field_count", render_data_frame(TR_TRADE, [short, short])))
        if f.unknown_tr_rate and rng.random() < f.unknown_tr_rate:
            bad.append(("unknown_tr", render_data_frame("H0STXXX0", [self._record(trade)])))
        assert session.ledger is not None
        for kind, text in bad:
            try:
                await session.ws.send(text)
            except ConnectionClosed:
                return
            session.ledger.bad_frames[kind] += 1

    # ------------------------------------------------------------------------------- housekeeping

    async def housekeeping(self) -> None:
        """PINGPONG on its interval, sessions closed for a missing echo or by the drop fault."""
        now = time.monotonic()
        for session in list(self.active.values()):
            if self.faults.drop_every_s and now - session.opened >= self.faults.drop_every_s:
                self.ledger.drops += 1
                await self._close(session, "fault_drop", abrupt=True)
                continue
            if session.awaiting_echo_since is not None:
                if now - session.awaiting_echo_since > self.limits.pingpong_timeout_s:
                    await self._close(session, "no_pingpong_echo", abrupt=True)
                continue
            if now - session.last_ping >= self.limits.pingpong_interval_s:
                stamp = self.clock.now_kst().astimezone(KST).strftime("%Y%m%d%H%M%S")
                try:
                    await session.ws.send(render_pingpong(stamp))
                except ConnectionClosed:
                    continue
                session.last_ping = now
                session.awaiting_echo_since = now
                if session.ledger is not None:
                    session.ledger.pings_sent += 1

    async def drop_all(self, reason: str = "fault_drop") -> int:
        sessions = list(self.active.values())
        for session in sessions:
            self.ledger.drops += 1
            await self._close(session, reason, abrupt=True)
        return len(sessions)

    def leak_registration(self, tr_id: str = "H0STASP0") -> int:
        """Every open session gets a registration its client never made nor sees, as KIS keeps one after an
        unsubscribe under the wrong TR: the client's own 41st subscription is then KIS's 42nd (MAX
        SUBSCRIBE OVER). The leak ends with the session. Returns the sessions leaked into."""
        for session in self.active.values():
            held = {k for _, k in session.registered}
            spare = next(code for code in self.market.by_code if code not in held)
            session.registered[(tr_id, spare)] = None
        return len(self.active)

    def describe(self) -> dict[str, Any]:
        return {
            "sessions": [
                {
                    "session": s.number,
                    "app_key_id": self.app_key_ids.get(s.app_key or "", "unknown"),
                    "registered": len(s.registered),
                }
                for s in self.active.values()
            ]
        }
