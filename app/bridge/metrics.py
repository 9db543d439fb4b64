"""The bridge's Prometheus metrics. One registry per bridge, so several can live in one test process.

Every record the bridge touches moves exactly one of these counters forward, so at any moment
frames received = frames parsed + frames dead-lettered (+ control messages), and
records parsed + dead letters + subscription events = published + journaled + in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Frame receipt to broker ack: a tick is expected in single milliseconds, a broker outage in minutes.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass
class BridgeMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.messages_received = Counter(
            "observer_bridge_messages_received", "WebSocket messages received", ["kind"], registry=r
        )
        self.frames_received = Counter("observer_bridge_frames_received", "Data frames received", registry=r)
        self.records_parsed = Counter(
            "observer_bridge_records_parsed", "Trade records parsed from data frames", registry=r
        )
        self.dead_letters = Counter(
            "observer_bridge_dead_letters", "Messages sent to the dead-letter topic", ["reason"], registry=r
        )
        self.published = Counter(
            "observer_bridge_published", "Records acknowledged by the broker", ["topic"], registry=r
        )
        self.publish_errors = Counter(
            "observer_bridge_publish_errors", "Failed sends (the record is kept and retried)", ["kind"], registry=r
        )
        self.journaled = Counter("observer_bridge_journaled", "Records written to the local journal", registry=r)
        self.journal_records = Gauge(
            "observer_bridge_journal_records", "Records waiting in the local journal", registry=r
        )
        self.journal_bytes = Gauge("observer_bridge_journal_bytes", "Bytes waiting in the local journal", registry=r)
        self.journal_capacity = Gauge(
            "observer_bridge_journal_capacity_bytes", "Waiting bytes at which the journal is full", registry=r
        )
        self.journal_full = Counter(
            "observer_bridge_journal_full", "Times the journal was full (ingest paused)", registry=r
        )
        self.in_flight = Gauge(
            "observer_bridge_in_flight_records", "Records handed to the producer, not yet acked", registry=r
        )
        self.ack_latency = Histogram(
            "observer_bridge_ack_latency_seconds", "Frame receipt to broker ack", buckets=LATENCY_BUCKETS, registry=r
        )
        self.reconnects = Counter("observer_bridge_reconnects", "WebSocket reconnects", ["reason"], registry=r)
        self.watchdog_trips = Counter("observer_bridge_watchdog_trips", "Stale-feed watchdog reconnects", registry=r)
        self.subscription_replies = Counter(
            "observer_bridge_subscription_replies", "KIS replies to (un)subscribe", ["msg_cd", "outcome"], registry=r
        )
        self.subscribed = Gauge("observer_bridge_subscribed_symbols", "Symbols KIS confirmed as registered", registry=r)
        self.assigned = Gauge(
            "observer_bridge_assigned_symbols", "Symbols slot.decisions assigns to this app key", registry=r
        )
        self.undecodable_decisions = Counter(
            "observer_bridge_undecodable_decisions", "slot.decisions records that could not be decoded", registry=r
        )
        self.connected = Gauge("observer_bridge_connected", "1 while a KIS session is open", registry=r)
        self.session_errors = Counter(
            "observer_bridge_session_errors", "Sessions refused or failed", ["kind"], registry=r
        )
        self.pingpongs = Counter("observer_bridge_pingpongs", "PINGPONG keep-alives answered", registry=r)
