"""The Faust app (``observer worker``): surge agent, scanner, slot manager agent and web views.

Built by a factory rather than at import time, because topic names and the app id depend on the
configuration (tests give every run its own prefix). Inputs are read as raw bytes and decoded here, so a
record that cannot be decoded goes to ``kis.dlq`` with its topic, partition and offset instead of being
skipped by Faust's deserializer; outputs and table changelogs use the registered Avro codecs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from aiokafka.errors import IllegalStateError
from faust.exceptions import ConsumerNotStarted
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from app.config import Settings
from app.kafka_read import PartitionRange, new_reader, read_ranges, time_window
from app.kis.credentials import choose_credentials
from app.kis.rest import KisRestClient
from app.krx import is_trading_day
from app.observability import with_process_metrics
from app.records import CodecError, dead_letter_record, default_codec
from app.scanner import Scanner
from app.slots.manager import Refusal, SlotManager, restore_state, state_to_record
from app.slots.policy import Candidate, Decision, SlotPolicy
from app.surge.rule import Observation, Surge, SurgeRule, SymbolWindows, observe
from app.worker.codecs import codec_name
from app.worker.transport import DeferredChangelog, new_observer_app
from app.worker.views import WorkerState, counters, health_view, slots_view, status_page

log = logging.getLogger(__name__)


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry

    def __post_init__(self) -> None:
        r = self.registry
        self.ticks_in = Counter("observer_worker_ticks_in", "Ticks the surge agent took in", registry=r)
        self.late_ticks = Counter(
            "observer_worker_late_ticks", "Ticks older than the retained windows (not counted)", registry=r
        )
        self.surges_out = Counter("observer_worker_surges", "Surge events published", ["source"], registry=r)
        self.dead_letters = Counter(
            "observer_worker_dead_letters", "Records sent to the dead-letter topic", ["reason"], registry=r
        )
        self.slot_inputs = Counter("observer_worker_slot_inputs", "Slot manager inputs", ["kind"], registry=r)
        self.decisions = Counter("observer_worker_slot_decisions", "Slot decisions published", ["action"], registry=r)
        self.overflow = Counter("observer_worker_slot_overflow", "Overflow records published", ["reason"], registry=r)
        self.snapshots_in = Counter("observer_worker_snapshots_in", "Snapshots the surge agent took in", registry=r)
        self.scanner_polls = Counter("observer_scanner_polls", "Scanner polls", ["outcome"], registry=r)
        self.snapshots_out = Counter("observer_scanner_snapshots", "Snapshots published by the scanner", registry=r)
        self.slots_used = Gauge("observer_worker_slots_used", "Slots held", registry=r)
        self.pending = Gauge("observer_worker_slot_pending_inputs", "Inputs waiting for the watermark", registry=r)
        self.recovery = Counter(
            "observer_worker_slot_recovered_steps",
            "Merge-log steps of a stopped run applied again after a restart (applied) or given up on (abandoned)",
            ["outcome"],
            registry=r,
        )
        self.recovering = Gauge(
            "observer_worker_slot_recovering_steps", "Merge-log steps of a stopped run still to apply", registry=r
        )
        self.agent_crashes = Counter(
            "observer_worker_agent_crashes", "Agent crashes (Faust restarts the agent)", ["agent"], registry=r
        )


US = 1_000_000
STATE_KEY = b"state"
# A recovered merge-log step waits for its input to come again; every one was in Kafka before its step
# was, so this is only reached if that input is gone (retention): then the merge decides again, loudly.
RECOVERY_TIMEOUT_S = 120.0
REFUSALS = {"max_subscribe_over", "error", "not_found"}


def windows_key(symbol: str, kind: str) -> bytes:
    """A symbol's windows are kept per input kind: each is then fed by one partition of one topic, in that
    partition's order, so its surges are the same however a consumer interleaves ticks and snapshots (live
    and in a replay). Both kinds of a symbol share its partition (the windows table's, too)."""
    return symbol.encode() if kind == "ticks" else f"{symbol}@{kind}".encode()


def candidates_topic_name(settings: Settings) -> str:
    """The worker's internal input of the slot manager (one partition), named after its app id."""
    return f"{settings.topic_prefix}{settings.worker_app_id}-slot-candidates"


def candidate_record(source: str, surge: Surge) -> dict[str, Any]:
    return {
        "kind": "surge",
        "source": source,
        "event_time_us": surge.event_time_us,
        "symbol": surge.symbol,
        "trigger_type": "surge" if surge.source == "ticks" else "snapshot_surge",
        "priority_score": surge.priority_score,
        "current_volume": surge.current_volume,
        "avg_volume_10m": surge.avg_volume_10m,
        "surge_ratio": surge.surge_ratio,
        "at_log_end": False,
    }


def progress_record(source: str, event_time_us: int, at_log_end: bool = False) -> dict[str, Any]:
    return {
        "kind": "progress",
        "source": source,
        "event_time_us": event_time_us,
        "symbol": None,
        "trigger_type": "",
        "priority_score": 0.0,
        "current_volume": 0,
        "avg_volume_10m": 0.0,
        "surge_ratio": 0.0,
        "at_log_end": at_log_end,
    }


def clock_record() -> dict[str, Any]:
    return progress_record("", 0) | {"kind": "clock"}


def candidate_of(value: dict[str, Any]) -> Candidate:
    return Candidate(
        value["symbol"],
        value["priority_score"],
        value["trigger_type"],
        value["event_time_us"],
        value["current_volume"],
        value["avg_volume_10m"],
        value["surge_ratio"],
    )


def refusal_of(event: dict[str, Any]) -> Refusal | None:
    """A subscribe request KIS turned down for the symbol (session-level errors are the bridge's)."""
    if event["action"] == "subscribe" and event["outcome"] in REFUSALS:
        return Refusal(event["app_key_id"], event["symbol"], event["outcome"], event["msg_cd"])
    return None


def create_app(settings: Settings) -> faust.App:
    app = new_observer_app(
        settings,
        "worker",
        settings.worker_app_id,
        settings.worker_web_host,
        settings.worker_web_port,
        topic_partitions=12,
        topic_replication_factor=1,
        broker_commit_interval=settings.worker_commit_interval_s,
    )
    metrics = WorkerMetrics(CollectorRegistry())
    view_state = WorkerState(metrics.registry)
    codec = default_codec()
    rule = SurgeRule(
        multiplier=settings.surge_multiplier,
        min_volume=settings.surge_min_volume,
        lookback_minutes=settings.surge_lookback_minutes,
        retain_minutes=settings.surge_lookback_minutes + 2,
    )

    snapshots_topic = app.topic(
        settings.topic("kis.snapshots"), key_serializer="raw", value_serializer=codec_name("Snapshot")
    )
    # The surge agent reads both inputs as raw bytes; keyed by symbol, 12 partitions each, so a symbol's
    # ticks and snapshots land in the same partition of the windows table.
    observations_topic = app.topic(
        settings.topic("kis.ticks.raw"),
        settings.topic("kis.snapshots"),
        key_serializer="raw",
        value_serializer="raw",
    )
    surges_topic = app.topic(
        settings.output_topic("observer.surges"), key_serializer="raw", value_serializer=codec_name("SurgeEvent")
    )
    candidates_topic = app.topic(
        candidates_topic_name(settings), key_serializer="raw", value_serializer=codec_name("SlotCandidate")
    )
    following = settings.slot_follow_log is not None
    slot_inputs = app.topic(
        candidates_topic_name(settings),
        settings.topic("kis.subscriptions"),
        *([settings.slot_follow_log] if settings.slot_follow_log else []),
        key_serializer="raw",
        value_serializer="raw",
    )
    merge_log_topic = app.topic(
        settings.output_topic("slot.merge-log"), key_serializer="raw", value_serializer=codec_name("SlotMergeStep")
    )
    decisions_topic = app.topic(
        settings.output_topic("slot.decisions"), key_serializer="raw", value_serializer=codec_name("SlotDecision")
    )
    overflow_topic = app.topic(
        settings.output_topic("slot.overflow"), key_serializer="raw", value_serializer=codec_name("OverflowEvent")
    )
    dlq_topic = app.topic(settings.topic("kis.dlq"), key_serializer="raw", value_serializer=codec_name("DeadLetter"))
    # Keys are symbols, values SurgeWindows records, both as bytes: Faust tables pick their changelog
    # serializer from the types, and bytes means "raw", so the changelog holds our Avro as written.
    windows = app.Table("surge-windows", partitions=12, key_type=bytes, value_type=bytes)
    windows_writes = DeferredChangelog(app, windows)

    async def dead_letter(stage: str, event: Any, reason: str, detail: str) -> None:
        metrics.dead_letters.labels(reason).inc()
        msg = event.message
        log.warning("dead-lettered %s[%s]@%s: %s: %s", msg.topic, msg.partition, msg.offset, reason, detail[:200])
        await dlq_topic.send(
            key=b"worker",
            value=dead_letter_record(
                stage,
                reason,
                detail,
                msg.value or b"",
                time.time_ns() // 1000,
                source=(msg.topic, msg.partition, msg.offset),
            ),
        )

    progress_second: dict[str, int] = {}
    progress_at_end: dict[str, bool] = {}
    snapshots_name = settings.topic("kis.snapshots")
    ticks_name = settings.topic("kis.ticks.raw")

    async def observation_of(event: Any) -> tuple[str, Observation] | None:
        """The event as a tick or snapshot observation, or None once it has been dead-lettered."""
        kind = "snapshots" if event.message.topic == snapshots_name else "ticks"
        (metrics.snapshots_in if kind == "snapshots" else metrics.ticks_in).inc()
        try:
            name, value = codec.decode(event.value)
        except CodecError as exc:
            await dead_letter("surge_agent", event, "undecodable", str(exc))
            return None
        if kind == "ticks" and name == "RawTick":
            time_us, trade_volume = value["event_time_us"], value["trade_volume"]
        elif kind == "snapshots" and name == "Snapshot":
            time_us, trade_volume = value["snapshot_time_us"], None
        else:
            await dead_letter("surge_agent", event, "wrong_record", f"a {name} record on {event.message.topic}")
            return None
        obs = Observation(
            value["symbol"], value["business_date"], time_us, value["cumulative_volume"], trade_volume, kind
        )
        return f"{kind}/{event.message.partition}", obs

    def highwater_of(tp: Any) -> int | None:
        """The partition's end offset as the consumer last heard it from the broker (None: not yet)."""
        try:
            return app.consumer.highwater(tp)
        except (ConsumerNotStarted, IllegalStateError):  # not started, or the partition was just revoked
            return None

    def read_to_end(tp: Any, offset: int) -> bool:
        highwater = highwater_of(tp)
        return highwater is not None and offset + 1 >= highwater

    @contextlib.contextmanager
    def crash_counted(agent: str) -> Iterator[None]:
        """Faust restarts a crashed agent from its last commit: count the crash and show it in the health view,
        or a crash loop would pass for a healthy worker."""
        try:
            yield
        except Exception as exc:
            metrics.agent_crashes.labels(agent).inc()
            view_state.crashes[agent] = (time.monotonic(), f"{type(exc).__name__}: {exc}"[:300])
            log.exception("%s crashed; Faust restarts it from its last committed offsets", agent)
            raise

    @app.agent(observations_topic)
    async def surge_agent(stream: Any) -> None:
        with crash_counted("surge_agent"):
            await surge_batches(stream)

    async def surge_batches(stream: Any) -> None:
        # A batch at a time: each symbol's windows are decoded and encoded once per batch; their changelog
        # records go out at the next commit (DeferredChangelog), before its offsets.
        async for batch in stream.take_events(settings.worker_batch_max, within=settings.worker_batch_wait_s):
            touched: dict[bytes, tuple[SymbolWindows, int]] = {}
            latest: dict[str, int] = {}  # source -> latest event time in this batch
            last_offset: dict[str, tuple[Any, int]] = {}  # source -> (its partition, last offset in the batch)
            for event in batch:
                msg = event.message
                kind = "snapshots" if msg.topic == snapshots_name else "ticks"
                last_offset[f"{kind}/{msg.partition}"] = (msg.tp, msg.offset)
                found = await observation_of(event)
                if found is None:
                    continue
                source, obs = found
                key = windows_key(obs.symbol, obs.source)
                if key in touched:
                    state: SymbolWindows | None = touched[key][0]
                else:
                    stored = windows.get(key)
                    state = SymbolWindows.from_record(codec.decode(stored)[1]) if stored is not None else None
                state, surge, late = observe(state, obs, rule)
                if late:
                    metrics.late_ticks.inc()
                    continue
                touched[key] = (state, event.message.partition)
                latest[source] = max(latest.get(source, 0), obs.event_time_us)
                if surge is not None:
                    metrics.surges_out.labels(surge.source).inc()
                    surge_record = surge.to_record()
                    view_state.recent_surges.append(surge_record)
                    # Every output carries its event time as the Kafka timestamp, as the ticks do: the topics'
                    # retention and offsets-for-times (audit, replay) then go by market time.
                    await surges_topic.send(
                        key=obs.symbol.encode(), value=surge_record, timestamp=surge.event_time_us / US
                    )
                    await candidates_topic.send(key=b"c", value=candidate_record(source, surge))
            view_state.last_input_monotonic = time.monotonic()
            for key, (state, partition) in touched.items():
                windows_writes.set(key, codec.encode("SurgeWindows", state.to_record()), partition)
            for source, time_us in latest.items():
                second = time_us // 1_000_000
                at_end = read_to_end(*last_offset[source])
                # At most one marker per source and second, and one whenever the source reaches or leaves
                # its partition's end.
                if second > progress_second.get(source, -1) or at_end != progress_at_end.get(source, False):
                    progress_second[source] = max(second, progress_second.get(source, -1))
                    progress_at_end[source] = at_end
                    await candidates_topic.send(key=b"c", value=progress_record(source, time_us, at_end))

    slot_table = app.Table("slot-manager", partitions=1, key_type=bytes, value_type=bytes)
    slot_writes = DeferredChangelog(app, slot_table)
    sources = frozenset({f"{kind}/{p}" for kind in ("ticks", "snapshots") for p in range(12)})
    policy = SlotPolicy(
        app_key_ids=tuple(settings.slot_app_key_ids),
        capacity=settings.slot_capacity,
        bootstrap=tuple(settings.slot_bootstrap),
    )
    box: dict[str, SlotManager] = {}
    heard: dict[str, float] = {}  # source -> wall time of its last input (idleness is the one wall-clock input)
    started = time.monotonic()

    def manager() -> SlotManager:
        if "m" not in box:
            m = SlotManager(policy, sources)
            stored = slot_table.get(STATE_KEY)
            if stored is not None:
                restore_state(m, codec.decode(stored)[1])
                log.info(
                    "slot manager restored: %d slots held, %d inputs pending", m.book.held(), len(m.merger.pending)
                )
            box["m"] = m
        return box["m"]

    async def merge_log_after(offset: int) -> list[tuple[int, dict[str, Any]]]:
        """The steps of ``slot.merge-log`` after ``offset``, up to its end now."""
        topic = settings.output_topic("slot.merge-log")
        reader = new_reader(settings.bootstrap_servers)
        await reader.start()
        try:
            ranges = [r for r in await time_window(reader, topic, None, None) if r.partition == 0]
            ranges = [PartitionRange(0, max(r.start, offset + 1), r.end) for r in ranges]
            return [(rec.offset, codec.decode(rec.value)[1]) async for rec in read_ranges(reader, topic, ranges)]
        finally:
            await reader.stop()

    async def recovered_manager() -> SlotManager:
        """The manager, with the steps its previous run published after the stored state to apply again."""
        if "m" in box:
            return box["m"]
        m = manager()
        if not following and m.merge_log_offset >= -1:
            steps = await merge_log_after(m.merge_log_offset)
            m.recover(steps)
            if m.recovering:
                log.warning(
                    "slot manager recovering: %d merge-log steps after offset %d were published by the run "
                    "before this one after its last stored state; applying them again before deciding",
                    m.recovering,
                    m.merge_log_offset,
                )
                recovery_started[0] = time.monotonic()
        return m

    recovery_started = [0.0]

    at_log_end: set[str] = set()  # sources whose latest marker said the worker had read them to the end

    def idle_sources() -> set[str]:
        now = time.monotonic()
        if now - started < settings.slot_idle_s:
            return set(at_log_end)
        return {s for s in sources if now - heard.get(s, started) > settings.slot_idle_s} | at_log_end

    async def take_slot_input(m: SlotManager, event: Any) -> bool:
        """Feed one input to the manager; False if it was dead-lettered instead."""
        try:
            name, value = codec.decode(event.value)
        except CodecError as exc:
            await dead_letter("slot_manager", event, "undecodable", str(exc))
            return False
        if name == "SlotMergeStep" and following:
            metrics.slot_inputs.labels("followed_step").inc()
            m.follow(value)
            return True
        if name == "SubscriptionEvent":
            # Not an event-time source: its times are the bridge's wall clock (see SlotManager.refuse_now).
            metrics.slot_inputs.labels("subscription").inc()
            refusal = refusal_of(value)
            if refusal is not None and not following:  # a followed log brings its run's refusals
                m.refuse_now(refusal)
            return True
        if name != "SlotCandidate":
            await dead_letter("slot_manager", event, "wrong_record", f"a {name} record on the slot manager's inputs")
            return False
        kind = value["kind"]
        metrics.slot_inputs.labels(kind).inc()
        if kind != "clock":
            if value["source"] not in sources:
                await dead_letter("slot_manager", event, "unknown_source", f"slot input from {value['source']!r}")
                return False
            heard[value["source"]] = time.monotonic()
        if kind == "surge" and following:
            m.arrive(value["source"], candidate_of(value))  # applied when the followed log says
        elif kind == "surge":
            if not m.first_offer(value["source"], value["symbol"], value["event_time_us"]):
                metrics.slot_inputs.labels("repeated_surge").inc()
                m.advance(value["source"], value["event_time_us"])
                return True
            m.add(value["source"], value["event_time_us"], candidate_of(value))
        elif kind == "progress":
            if value["event_time_us"] > 0:  # 0: a partition with an empty log, nothing seen yet
                m.advance(value["source"], value["event_time_us"])
            if value["at_log_end"] and settings.slot_release_at_log_end:
                at_log_end.add(value["source"])
            else:
                at_log_end.discard(value["source"])
        return True

    @app.agent(slot_inputs)
    async def slot_manager_agent(stream: Any) -> None:
        with crash_counted("slot_manager_agent"):
            await slot_manager_batches(stream)

    async def slot_manager_batches(stream: Any) -> None:
        # Decides after every input, as the inputs arrive; the state is stored once per batch, and goes to
        # the changelog at the next commit (DeferredChangelog), before its offsets.
        async for batch in stream.take_events(settings.worker_batch_max, within=settings.worker_batch_wait_s):
            m = await recovered_manager()
            outcomes: list[Any] = []
            for event in batch:
                msg = event.message
                if not m.first_delivery(msg.topic, msg.partition, msg.offset):
                    metrics.slot_inputs.labels("redelivered").inc()
                    continue
                if not await take_slot_input(m, event):
                    continue
                recovering = m.recovering
                outcomes.extend(m.step_following() if following else m.step(idle_sources()))
                metrics.recovery.labels("applied").inc(recovering - m.recovering)
            if m.recovering and time.monotonic() - recovery_started[0] > RECOVERY_TIMEOUT_S:
                left = m.abandon_recovery()
                metrics.recovery.labels("abandoned").inc(left)
                log.error(
                    "slot manager: %d recovered merge-log steps still wait for their inputs after %.0f s; "
                    "deciding from the merge again (the next decisions may differ from what the run before "
                    "decided after offset %d)",
                    left,
                    RECOVERY_TIMEOUT_S,
                    m.merge_log_offset,
                )
            metrics.recovering.set(m.recovering)
            await publish_outcomes(m, outcomes)
            metrics.slots_used.set(m.book.held())
            metrics.pending.set(m.waiting if following else len(m.merger.pending))
            slot_writes.set(STATE_KEY, codec.encode("SlotManagerState", state_to_record(m)), 0)

    async def publish_outcomes(m: SlotManager, outcomes: list[Any]) -> None:
        """The batch's merge steps, then its outcomes, each acknowledged before the next; the state that
        says they were made follows them. A crash in between leaves steps the next run applies again
        (:meth:`SlotManager.recover`), and outcomes it then repeats with the same ids: never an outcome
        without its step, which a restart could decide otherwise."""
        steps = [
            await merge_log_topic.send(key=b"merge", value=step, timestamp=step["time_us"] / US) for step in m.merge_log
        ]
        m.merge_log.clear()
        logged = await asyncio.gather(*steps)
        if logged:
            m.merge_log_offset = max(r.offset for r in logged)
        sent: list[Any] = []
        for outcome in outcomes:
            if isinstance(outcome, Decision):
                metrics.decisions.labels(outcome.action).inc()
                key, value, topic = outcome.app_key_id.encode(), outcome.to_record(), decisions_topic
            else:
                metrics.overflow.labels(outcome.reason.split(":")[0]).inc()
                key, value, topic = outcome.symbol.encode(), outcome.to_record(), overflow_topic
            sent.append(await topic.send(key=key, value=value, timestamp=outcome.decided_at_us / US))
        await asyncio.gather(*sent)

    @app.timer(interval=0.5)  # type: ignore[untyped-decorator]
    async def slot_clock() -> None:
        """Wakes the slot manager so that idle partitions stop holding decisions back."""
        await candidates_topic.send(key=b"c", value=clock_record())
        # An input partition with an empty log has nothing to say, so the surge agent never speaks for it.
        for tp in app.consumer.assignment():
            if tp.topic not in (snapshots_name, ticks_name):
                continue
            source = f"{'snapshots' if tp.topic == snapshots_name else 'ticks'}/{tp.partition}"
            if source not in progress_at_end and highwater_of(tp) == 0:
                progress_at_end[source] = True
                await candidates_topic.send(key=b"c", value=progress_record(source, 0, at_log_end=True))

    if settings.scanner_interval_s > 0:
        install_scanner(app, settings, metrics, snapshots_topic, dlq_topic)

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(
            generate_latest(with_process_metrics(metrics.registry)), content_type="text/plain; version=0.0.4"
        )

    def windows_of(symbol: str) -> dict[str, Any] | None:
        found = {}
        for kind in ("ticks", "snapshots"):
            stored = windows.get(windows_key(symbol, kind))
            found[kind] = None if stored is None else codec.decode(stored)[1]
        return found if any(found.values()) else None

    view_state.manager = lambda: box.get("m")
    view_state.windows = windows_of
    install_views(app, view_state)

    app.observer_metrics = metrics  # type: ignore[attr-defined]
    return app


def install_views(app: faust.App, state: WorkerState) -> None:
    def health() -> tuple[dict[str, Any], int]:
        try:
            assigned = len(app.consumer.assignment())
        except ConsumerNotStarted:  # reported as "starting"
            assigned = 0
        return health_view(state, assigned, bool(app.rebalancing))

    @app.page("/")
    async def status(web: Any, request: Any) -> Any:
        return web.html(status_page(state, health()[0]))

    @app.page("/api/health")
    async def health_json(web: Any, request: Any) -> Any:
        doc, code = health()
        return web.json(doc, status=code)

    @app.page("/api/slots")
    async def slots_json(web: Any, request: Any) -> Any:
        return web.json(slots_view(state.manager()))

    @app.page("/api/surges")
    async def surges_json(web: Any, request: Any) -> Any:
        return web.json({"surges": list(reversed(state.recent_surges))})

    @app.page("/api/counters")
    async def counters_json(web: Any, request: Any) -> Any:
        return web.json(counters(state.registry))

    @app.page("/api/symbols/{symbol}/windows")
    async def windows_json(web: Any, request: Any, symbol: str) -> Any:
        found = state.windows(symbol)
        if found is None:
            return web.json({"symbol": symbol, "error": "no windows for this symbol on this worker"}, status=404)
        return web.json({"symbol": symbol, **found})


def install_scanner(app: faust.App, settings: Settings, metrics: WorkerMetrics, out: Any, dlq: Any) -> None:
    """The scanner timer: on the leader only (one poller per app, however many workers), paced by the client."""
    credentials = choose_credentials(settings, os.environ)  # a missing credential fails the start, loudly
    rest = KisRestClient(
        settings.kis_rest_url,
        credentials,
        settings.home / "kis" / "tokens.json",
        requests_per_second=settings.kis_rest_requests_per_second,
        max_retries=2,  # the next poll is the retry; a stuck poll would only delay it
    )
    scanner = Scanner(
        rest, settings.scanner_rankings, settings.scanner_watchlist, price_call=settings.scanner_price_call
    )
    opened: list[bool] = []

    @app.timer(interval=settings.scanner_interval_s, on_leader=True)  # type: ignore[untyped-decorator]
    async def scan() -> None:
        if not opened:
            await rest.__aenter__()
            opened.append(True)

        async def publish(record: dict[str, Any]) -> None:
            await out.send(key=record["symbol"].encode(), value=record, timestamp=record["snapshot_time_us"] / US)
            metrics.snapshots_out.inc()

        result = await scanner.poll(publish)
        metrics.scanner_polls.labels("failed_call" if result.failed_calls else "ok").inc()
        for failure in result.failed_calls:
            log.warning("scanner: %s", failure)
        for row, reason in result.rejected:
            metrics.dead_letters.labels("bad_snapshot").inc()
            log.warning("scanner: dead-lettered a REST row: %s", reason)
            await dlq.send(
                key=b"scanner",
                value=dead_letter_record("scanner", "bad_snapshot", reason, orjson.dumps(row), time.time_ns() // 1000),
            )

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_rest(app: Any, **kwargs: Any) -> None:
        if opened:
            await rest.__aexit__(None, None, None)


def run_worker(settings: Settings) -> None:
    """Run the Faust worker in the foreground until SIGTERM/SIGINT."""
    from faust.worker import Worker

    from app.topics import TopicSpec, apply_topics, load_topics

    # The worker's own topics exist, and are visible, before Faust starts: a changelog topic Faust creates
    # itself can be missing from its consumer's metadata for minutes (PartitionsMismatch on every write).
    app_id = settings.worker_app_id
    own = [
        TopicSpec(f"{app_id}-slot-candidates", "constant", "SlotCandidate", 1, 1, 7 * 86_400_000, "delete", 1, ""),
        TopicSpec(f"{app_id}-surge-windows-changelog", "symbol", "SurgeWindows", 12, 1, -1, "compact", 1, ""),
        TopicSpec(f"{app_id}-slot-manager-changelog", "state", "SlotManagerState", 1, 1, -1, "compact", 1, ""),
    ]
    asyncio.run(apply_topics(settings, {spec.name: spec for spec in own}))
    if settings.output_prefix is not None:  # fresh outputs beside the live ones: create them
        catalogue = load_topics()
        outputs = {k: catalogue[k] for k in ("observer.surges", "slot.decisions", "slot.overflow", "slot.merge-log")}
        asyncio.run(apply_topics(settings.model_copy(update={"topic_prefix": settings.output_prefix}), outputs))
    # Load the KRX calendar now: its first use (pandas) blocks for seconds, which inside the event loop
    # would stall every agent of the worker.
    is_trading_day(dt.date.today())
    app = create_app(settings)
    worker = Worker(app, loglevel="INFO", redirect_stdouts=False)
    worker.execute_from_commandline()
