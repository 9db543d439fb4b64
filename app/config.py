"""The one configuration object, read once at start from the environment (prefix ``OBSERVER_``).

Every process builds a single :class:`Settings` through :func:`load_settings` and passes it down;
nothing else reads the environment. A bad value stops the process with one line naming the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _default_home() -> Path:
    # A source checkout keeps its state beside the code (ignored by git); an installed package uses cwd.
    if (PROJECT_ROOT / "pyproject.toml").is_file():
        return PROJECT_ROOT / ".local"
    return Path.cwd() / ".local"


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message names the variable and the fix."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OBSERVER_", extra="forbid", frozen=True)

    home: Path = Field(default_factory=_default_home, description="State: jars, data dirs, logs, pid files.")

    # Local Kafka (KRaft, one combined broker+controller on loopback).
    kafka_version: str = "4.1.1"
    kafka_host: str = "127.0.0.1"
    kafka_port: int = Field(default=19092, ge=1, le=65535)
    kafka_controller_port: int = Field(default=19093, ge=1, le=65535)
    kafka_heap: str = Field(default="768m", pattern=r"^\d+[mMgG]$")
    kafka_start_timeout_s: float = Field(default=120.0, gt=0)
    # Set to use an existing cluster instead of the local one ("host:port,host:port").
    kafka_bootstrap: str | None = None

    # Local PostgreSQL 15 (Debian packages, a data directory of the project's).
    pg_bin_dir: Path = Path("/usr/lib/postgresql/15/bin")
    pg_host: str = "127.0.0.1"
    pg_port: int = Field(default=15432, ge=1, le=65535)
    pg_database: str = "observer"
    pg_user: str = "observer"
    # Set to use an existing server instead of the local one (libpq conninfo or URI).
    pg_dsn: str | None = None
    # The schema holding the sink's tables (a replay writes to one of its own).
    pg_schema: str = Field(default="observer", pattern=r"^[a-z_][a-z0-9_]{0,62}$")

    # KIS endpoints. Default: the local simulator (`observer sim`). Real KIS: https://openapi.koreainvestment.com:9443
    # and ws://ops.koreainvestment.com:21000 (paper: :29443 and :31000), with credentials from the environment.
    kis_rest_url: str = "http://127.0.0.1:18443"
    # The KIS URLs point at the simulator on another host (a container): use its public, derived credentials.
    kis_simulator: bool = False
    kis_ws_url: str = "ws://127.0.0.1:18000"
    sim_rest_port: int = Field(default=18443, ge=0, le=65535)
    sim_ws_port: int = Field(default=18000, ge=0, le=65535)

    # The bridge (one process per KIS app key).
    bridge_app_key_id: str = Field(default="main", pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    bridge_metrics_port: int = Field(default=19101, ge=0, le=65535)
    bridge_metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, for a scraper in another one
    bridge_journal_max_bytes: int = Field(default=2 * 2**30, gt=0)
    bridge_watchdog_s: float = Field(default=60.0, gt=0)
    bridge_watchdog_always: bool = False
    bridge_counts_interval_s: float = Field(default=5.0, gt=0)  # day counts to observer.counts this often
    kis_rest_requests_per_second: float = Field(default=10.0, gt=0)

    # The Faust worker (surge agent, slot manager, web views).
    worker_app_id: str = Field(default="observer", pattern=r"^[A-Za-z0-9_.-]{1,60}$")
    worker_web_host: str = "127.0.0.1"
    worker_web_port: int = Field(default=19102, ge=1, le=65535)
    # The agents take up to this many records at a time (waiting at most ``worker_batch_wait_s`` for them):
    # a symbol's windows are decoded and stored once per batch instead of once per tick.
    worker_batch_max: int = Field(default=1000, ge=1)
    worker_batch_wait_s: float = Field(default=0.05, gt=0)
    # How often the worker commits its input offsets, and so stores its tables (Faust's default): what a
    # kill -9 makes it process again. Longer means fewer writes and more to redo after a crash.
    worker_commit_interval_s: float = Field(default=2.8, gt=0)
    surge_multiplier: float = Field(default=3.0, gt=1)
    surge_min_volume: int = Field(default=10_000, ge=0)
    surge_lookback_minutes: int = Field(default=10, ge=1, le=60)
    slot_app_key_ids: tuple[str, ...] = ("main",)
    slot_capacity: int = Field(default=41, ge=1, le=41)  # KIS allows 41 registrations per app key
    slot_bootstrap: tuple[str, ...] = ("005930", "000660", "373220", "051910", "068270", "035720")
    slot_idle_s: float = Field(default=2.0, gt=0)  # a partition silent this long stops holding decisions back
    # A partition read to its end stops holding decisions back at once (the live edge: what it has not sent
    # yet has not happened yet). Off for event-time replays, whose inputs may still be arriving.
    slot_release_at_log_end: bool = True
    # A replay's worker applies the steps of this merge log (a physical topic holding another run's
    # slot.merge-log) in their order instead of merging by event time and idleness: the same decisions.
    slot_follow_log: str | None = None
    # Scanner: every interval, KIS volume rankings (FID_BLNG_CLS_CODE: 0 by volume, 1 by volume increase
    # rate) and the current price of each watchlist symbol, as snapshots; 0 turns it off.
    scanner_interval_s: float = Field(default=5.0, ge=0)
    scanner_rankings: list[str] = Field(default_factory=lambda: ["0", "1"])
    scanner_watchlist: list[str] = Field(default_factory=list)
    # How the watchlist's prices are read: multi_price (30 symbols a call; real accounts only) or inquire_price
    # (one call a symbol; paper accounts have only this).
    scanner_price_call: Literal["multi_price", "inquire_price"] = "multi_price"
    # The sink (one process per data root): JSONL under data_root, rows in pg_schema.
    data_root: Path = Field(default_factory=lambda: _default_home() / "data", description="JSONL archive root.")
    sink_app_id: str = Field(default="observer-sink", pattern=r"^[A-Za-z0-9_.-]{1,60}$")
    sink_web_host: str = "127.0.0.1"
    sink_web_port: int = Field(default=19103, ge=1, le=65535)
    # A batch is up to this many records (waiting at most sink_batch_wait_s): one fsync and one
    # transaction per batch.
    sink_batch_max: int = Field(default=5000, ge=1)
    sink_batch_wait_s: float = Field(default=0.2, gt=0)
    sink_retry_max_s: float = Field(default=30.0, gt=0)  # longest pause between retries of a failing store
    # The sink's inputs as logical topic names (JSON list); empty: every kind it knows. A replay's sink takes
    # only the worker's outputs (surges, decisions, overflow).
    sink_topics: tuple[str, ...] = ()

    # `observer demo` keeps its runs here (each with its own topic prefix, schema and data root).
    demo_root: Path = Field(default_factory=lambda: _default_home() / "demo")
    # `observer replay --into NAME` keeps NAME's worker state, logs and JSONL root under here.
    replay_root: Path = Field(default_factory=lambda: _default_home() / "replay")

    # Output topics (surges, decisions, overflow) get this prefix instead of topic_prefix when set: a replay
    # or a second app id writes beside the live outputs while reading the same inputs.
    output_prefix: str | None = None

    # Topic names are prefixed for isolation (tests use a prefix per test).
    topic_prefix: str = ""

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap or f"{self.kafka_host}:{self.kafka_port}"

    @property
    def postgres_dsn(self) -> str:
        if self.pg_dsn:
            return self.pg_dsn
        return f"host={self.pg_host} port={self.pg_port} dbname={self.pg_database} user={self.pg_user}"

    def topic(self, name: str) -> str:
        """The physical topic name for a logical one from ``topics/topics.toml``."""
        return f"{self.topic_prefix}{name}"

    def output_topic(self, name: str) -> str:
        """The physical name of an output topic of the worker (see ``output_prefix``)."""
        prefix = self.topic_prefix if self.output_prefix is None else self.output_prefix
        return f"{prefix}{name}"


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; turn validation errors into one readable :class:`ConfigError`."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            problems.append(f"OBSERVER_{loc.upper()}: {err['msg']}")
        raise ConfigError("bad configuration: " + "; ".join(problems)) from None
