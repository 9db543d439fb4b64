"""``observer``: the one command line of the project. Each subcommand's ``--help`` explains it."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from app import kafka_backoff
from app.config import ConfigError, Settings, load_settings
from app.stack.common import StackError
from app.topics import TopicsError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_CONFIG = 2


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def cli(ctx: click.Context) -> None:
    """KRX tick observer: KIS real-time trades through Kafka and Faust into JSONL and PostgreSQL.

    Configuration comes from environment variables prefixed OBSERVER_ (see README).
    """
    try:
        ctx.obj = load_settings()
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(EXIT_CONFIG)


# ------------------------------------------------------------------------------------------- stack


@cli.group()
def stack() -> None:
    """The local Kafka (KRaft) and PostgreSQL 15 the project runs on, without Docker.

    State lives in .local/ of the checkout (or OBSERVER_HOME): Kafka jars from Maven Central, the
    broker's log dirs, the PostgreSQL data directory, logs and pid files.
    """


@stack.command("install")
@click.pass_context
def stack_install(ctx: click.Context) -> None:
    """Fetch the Kafka jars (Maven) and install PostgreSQL 15 (Debian packages) if missing; start nothing."""
    from app.stack.kafka import LocalKafka
    from app.stack.postgres import LocalPostgres

    s = _settings(ctx)
    kafka, pg = LocalKafka(s), LocalPostgres(s)
    click.echo("kafka: jars " + ("fetched" if kafka.install() else f"already in {kafka.lib_dir}"))
    click.echo("postgres: server " + ("installed" if pg.install() else f"already in {pg.bin}"))


@stack.command("up")
@click.option("--no-topics", is_flag=True, help="Do not create the topics of topics/topics.toml.")
@click.pass_context
def stack_up(ctx: click.Context, no_topics: bool) -> None:
    """Start Kafka and PostgreSQL (idempotent: a second call reports what already runs).

    Installs what is missing first, waits until the broker answers metadata requests and the database
    accepts connections, then creates the declared topics.
    """
    from app.stack.kafka import LocalKafka
    from app.stack.postgres import LocalPostgres
    from app.topics import apply_topics

    s = _settings(ctx)
    started = time.monotonic()
    click.echo(LocalKafka(s).start())
    click.echo(LocalPostgres(s).start())
    if not no_topics:
        report = asyncio.run(apply_topics(s))
        click.echo(f"topics: {len(report.created)} created, {len(report.unchanged)} ok, {len(report.drift)} drifted")
        for line in report.drift:
            click.echo(f"  DRIFT {line}")
    click.echo(f"stack up in {time.monotonic() - started:.1f} s")


@stack.command("down")
@click.pass_context
def stack_down(ctx: click.Context) -> None:
    """Stop Kafka (SIGTERM, orderly shutdown) and PostgreSQL (fast shutdown). Data stays."""
    from app.stack.kafka import LocalKafka
    from app.stack.postgres import LocalPostgres

    s = _settings(ctx)
    click.echo(LocalKafka(s).stop())
    click.echo(LocalPostgres(s).stop())


@stack.command("status")
@click.pass_context
def stack_status(ctx: click.Context) -> None:
    """Say what runs where; exit 1 if either service is not serving."""
    from app.stack.kafka import LocalKafka
    from app.stack.postgres import LocalPostgres

    s = _settings(ctx)
    statuses = [LocalKafka(s).status(), LocalPostgres(s).status()]
    for st in statuses:
        click.echo(st.line())
    if not all(st.running for st in statuses):
        ctx.exit(EXIT_FAILED)


@stack.command(
    "consumer-groups",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def stack_consumer_groups(ctx: click.Context) -> None:
    """Kafka's own kafka-consumer-groups tool on the local broker, from the installed jars: e.g.
    `observer stack consumer-groups --describe --group G` prints each partition's committed offset,
    end offset and LAG. Arguments go to the tool as they are; --bootstrap-server is added."""
    from app.stack.kafka import LocalKafka, kafka_tool_command

    s = _settings(ctx)
    kafka = LocalKafka(s)
    if not kafka.installed():
        raise click.ClickException("Kafka is not installed: run observer stack install")
    # Its log goes where the broker's does (a tool without kafka.logs.dir would log into the current directory).
    cmd = kafka_tool_command(
        s,
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        "--bootstrap-server",
        s.bootstrap_servers,
        *ctx.args,
    )
    import subprocess

    ctx.exit(subprocess.run(cmd, check=False).returncode)


# ---------------------------------------------------------------------------------------------- db


@cli.group()
def db() -> None:
    """The sink's PostgreSQL schema (OBSERVER_PG_SCHEMA)."""


@db.command("migrate")
@click.pass_context
def db_migrate(ctx: click.Context) -> None:
    """Apply the versioned SQL migrations not yet applied to the schema (created if missing). Safe to rerun."""
    from app.sink.postgres import migrate, migrations

    s = _settings(ctx)

    async def run() -> list[str]:
        async with await psycopg.AsyncConnection.connect(s.postgres_dsn, connect_timeout=10) as conn:
            return [f"{m.version:04d}_{m.name}" for m in await migrate(conn, s.pg_schema)]

    import psycopg

    try:
        applied = asyncio.run(run())
    except psycopg.OperationalError as exc:
        where = "OBSERVER_PG_DSN" if s.pg_dsn else f"{s.pg_host}:{s.pg_port}"
        raise click.ClickException(f"PostgreSQL at {where} is not reachable: {str(exc).strip()}") from exc
    latest = migrations()[-1]
    click.echo(
        f"schema {s.pg_schema}: {len(applied)} migration(s) applied"
        + (f" ({', '.join(applied)})" if applied else "")
        + f"; at version {latest.version} ({latest.name})"
    )


# ------------------------------------------------------------------------------------------ topics


@cli.group()
def topics() -> None:
    """The Kafka topics declared in topics/topics.toml."""


@topics.command("apply")
@click.option("--check", is_flag=True, help="Create nothing; report missing topics as drift.")
@click.pass_context
def topics_apply(ctx: click.Context, check: bool) -> None:
    """Create the declared topics that are missing and report drift; exit 1 if anything drifted.

    Drift is a partition count or a declared config (retention, cleanup policy, min ISR) that differs on
    the broker. Existing topics are never altered or deleted.
    """
    from app.topics import apply_topics

    report = asyncio.run(apply_topics(_settings(ctx), create=not check))
    for line in report.lines():
        click.echo(line)
    if report.drift:
        ctx.exit(EXIT_FAILED)


@topics.command("list")
def topics_list() -> None:
    """Print the catalogue: name, partitions, retention, key and value record."""
    from app.topics import load_topics

    for spec in load_topics().values():
        retention = "forever" if spec.retention_ms == -1 else f"{spec.retention_ms / 86_400_000:g} d"
        click.echo(
            f"{spec.name:<20} {spec.partitions:>3} partitions  {retention:>8}  key={spec.key!r} value={spec.value}"
        )


@topics.command("strimzi")
@click.option("--cluster", default="observer-kafka", show_default=True, help="The Strimzi Kafka cluster's name.")
@click.option("--replicas", default=3, show_default=True, type=int, help="Replication factor on the cluster.")
@click.option("--min-insync", default=2, show_default=True, type=int, help="min.insync.replicas on the cluster.")
def topics_strimzi(cluster: str, replicas: int, min_insync: int) -> None:
    """Print the catalogue as Strimzi KafkaTopic resources (k8s/base/kafka-topics.yaml is this output)."""
    try:
        import yaml
    except ImportError as exc:  # a maintainer's command: PyYAML comes with the dev extra, not the image
        raise click.ClickException("observer topics strimzi needs PyYAML: pip install -e '.[dev]'") from exc

    from app.topics import load_topics, strimzi_topics

    header = "# Generated by `observer topics strimzi` from topics/topics.toml: do not edit; regenerate.\n"
    resources = strimzi_topics(load_topics(), cluster, replicas, min_insync)
    click.echo(header + yaml.safe_dump_all(resources, sort_keys=False, allow_unicode=True), nl=False)


# --------------------------------------------------------------------------------------------- kis


@cli.group()
def kis() -> None:
    """The KIS Open API protocol: inspect captured WebSocket messages."""


@kis.command("decode")
@click.argument("source", type=click.File("r", encoding="utf-8", errors="surrogateescape"), default="-")
def kis_decode(source: Any) -> None:
    """Decode raw KIS WebSocket messages (one per line; FILE or - for stdin) into trade records.

    Prints one JSON object per trade record with every field under its documented name. A bad frame
    prints its line number and reason to stderr and decoding goes on; the exit status is 1 if any frame
    was bad. Control replies and PINGPONG are counted; a SUBSCRIBE SUCCESS's key/iv decrypts later
    encrypted frames of its TR.
    """
    import orjson

    from app.kis.decode import BadLine, DecodeStats, decode_lines

    stats = DecodeStats()
    out = sys.stdout.buffer
    for item in decode_lines(source, stats):
        if isinstance(item, BadLine):
            click.echo(f"line {item.line_no}: {item.reason}: {item.detail}", err=True)
        else:
            out.write(orjson.dumps(item) + b"\n")
    out.flush()
    click.echo(stats.summary(), err=True)
    if stats.bad:
        sys.exit(EXIT_FAILED)


# --------------------------------------------------------------------------------------------- sim


@cli.command()
@click.option("--seed", default=1, show_default=True, help="Market seed: same seed, same trades.")
@click.option(
    "--date",
    "date_",
    default=None,
    help="Business date (KST), YYYY-MM-DD. Default: the latest KRX trading day, so that the ticks it causes are "
    "within the topics' retention (the broker deletes records older than that by their trade time).",
)
@click.option("--start", default="09:00", show_default=True, help="Simulated start time, HH:MM[:SS] KST.")
@click.option("--until", default=None, help="Stop when the simulated clock reaches HH:MM[:SS] KST.")
@click.option("--speed", default=1.0, show_default=True, type=float, help="Simulated seconds per wall second.")
@click.option("--symbols", default=2000, show_default=True, type=int, help="Universe size.")
@click.option("--surge", "surges", multiple=True, help="SYMBOL@HH:MM+MINUTESxFACTOR, e.g. 005380@09:05+5x10.")
@click.option("--random-surges", default=0, show_default=True, type=int, help="Extra surges placed from the seed.")
@click.option("--rate-scale", default=1.0, show_default=True, type=float, help="Multiply every trade rate.")
@click.option("--rest-port", default=None, type=int, help="REST port (default OBSERVER_SIM_REST_PORT).")
@click.option("--ws-port", default=None, type=int, help="WebSocket port (default OBSERVER_SIM_WS_PORT).")
@click.option(
    "--app-key-id",
    "app_key_ids",
    multiple=True,
    default=("main",),
    show_default=True,
    help="Labels of the app keys the simulator accepts (one WebSocket session each).",
)
@click.option("--drop-every", default=0.0, type=float, help="Cut each session after this many wall seconds.")
@click.option("--malformed-rate", default=0.0, type=float, help="Chance per data frame of an extra garbled frame.")
@click.option("--wrong-field-rate", default=0.0, type=float, help="Chance per frame of an extra 45-field frame.")
@click.option("--unknown-tr-rate", default=0.0, type=float, help="Chance per frame of an extra unknown-TR frame.")
@click.option("--record-width", default=46, show_default=True, type=int, help="Fields per record (47: KIS extra).")
@click.option("--reply-delay-ms", default=0, type=int, help="Delay before each subscribe reply.")
@click.option("--rest-error-rate", default=0.0, type=float, help="Fraction of quotation calls answered HTTP 500.")
@click.option("--rest-slow-ms", default=0, type=int, help="Delay added to every REST response.")
@click.option("--pingpong-interval", default=100.0, show_default=True, type=float, help="PINGPONG every N wall s.")
@click.option("--progress-every", default=10.0, show_default=True, type=float, help="Progress line every N s.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on (0.0.0.0 in a container).")
@click.pass_context
def sim(
    ctx: click.Context,
    host: str,
    seed: int,
    date_: str | None,
    start: str,
    until: str | None,
    speed: float,
    symbols: int,
    surges: tuple[str, ...],
    random_surges: int,
    rate_scale: float,
    rest_port: int | None,
    ws_port: int | None,
    app_key_ids: tuple[str, ...],
    drop_every: float,
    malformed_rate: float,
    wrong_field_rate: float,
    unknown_tr_rate: float,
    record_width: int,
    reply_delay_ms: int,
    rest_error_rate: float,
    rest_slow_ms: int,
    pingpong_interval: float,
    progress_every: float,
) -> None:
    """A fake KIS on 127.0.0.1: REST (approval, token, volume rank, price) and the real-time WebSocket.

    It speaks the exact KIS protocol (replies, error codes, 41 registrations, one session per app key,
    PINGPONG, multi-record frames) over a deterministic seeded market of KRX symbols whose clock starts
    at --date/--start and runs at --speed. Fault knobs break it on purpose. GET /sim/ledger on the REST
    port reports exactly what was sent. Runs until --until, SIGINT or SIGTERM.
    """

    from app.sim.clock import parse_kst
    from app.sim.rest import RestFaults
    from app.sim.run import parse_surge, run_simulator
    from app.sim.server import SimConfig
    from app.sim.ws import WsFaults, WsLimits

    s = _settings(ctx)
    if date_ is None:
        from app.krx import latest_session, today_kst

        date_ = latest_session(today_kst()).isoformat()
    try:
        start_at = parse_kst(f"{date_} {start}")
        until_at = parse_kst(f"{date_} {until}") if until else None
        surge_specs = tuple(parse_surge(x) for x in surges)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    config = SimConfig(
        seed=seed,
        start=start_at,
        speed=speed,
        n_symbols=symbols,
        surges=surge_specs,
        random_surges=random_surges,
        rate_scale=rate_scale,
        host=host,
        rest_port=s.sim_rest_port if rest_port is None else rest_port,
        ws_port=s.sim_ws_port if ws_port is None else ws_port,
        app_key_ids=app_key_ids,
        limits=WsLimits(pingpong_interval_s=pingpong_interval),
        ws_faults=WsFaults(
            drop_every_s=drop_every,
            malformed_rate=malformed_rate,
            wrong_field_count_rate=wrong_field_rate,
            unknown_tr_rate=unknown_tr_rate,
            reply_delay_ms=reply_delay_ms,
            record_width=record_width,
            seed=seed,
        ),
        rest_faults=RestFaults(error_rate=rest_error_rate, slow_ms=rest_slow_ms, seed=seed),
    )
    try:
        asyncio.run(run_simulator(config, until_at, progress_every, click.echo))
    except ValueError as exc:  # the market refuses the configuration (e.g. a surge on an unknown symbol)
        raise click.BadParameter(str(exc)) from None
    except OSError as exc:
        click.echo(
            f"error: simulator cannot listen on {config.host}: {exc.strerror or exc}; choose other ports "
            "with --rest-port/--ws-port",
            err=True,
        )
        sys.exit(EXIT_FAILED)


# ------------------------------------------------------------------------------------------ bridge


@cli.command()
@click.option("--app-key-id", default=None, help="Which app key (default OBSERVER_BRIDGE_APP_KEY_ID).")
@click.option("--metrics-port", default=None, type=int, help="Prometheus port on 127.0.0.1 (0: none).")
@click.pass_context
def bridge(ctx: click.Context, app_key_id: str | None, metrics_port: int | None) -> None:
    """KIS WebSocket to Kafka for one app key: every trade record to kis.ticks.raw, nothing lost.

    Subscribes what slot.decisions assigns to the app key (read back from Kafka at start), answers
    PINGPONG, publishes one RawTick per trade record (key: symbol, timestamp: trade time), every KIS reply
    to kis.subscriptions and anything unreadable to kis.dlq with the reason. While the broker is away,
    records wait in a bounded journal under OBSERVER_HOME and go out in order when it is back.
    Reconnects with backoff; SIGTERM flushes and prints a one-line summary of the counts.
    """
    import logging

    from app.bridge.main import run_bridge
    from app.config import ConfigError

    s = _settings(ctx)
    if app_key_id:
        s = s.model_copy(update={"bridge_app_key_id": app_key_id})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run = asyncio.run(run_bridge(s, metrics_port=metrics_port))
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    click.echo(run.bridge.summary())


# ------------------------------------------------------------------------------------------ worker


@cli.command()
@click.option("--web-port", default=None, type=int, help="Faust web server port on 127.0.0.1 (views, /metrics).")
@click.pass_context
def worker(ctx: click.Context, web_port: int | None) -> None:
    """The Faust app: surge windows from kis.ticks.raw into observer.surges (the slot manager follows).

    One-minute event-time windows of traded volume per symbol live in a Faust table whose changelog
    makes them survive a restart. Prometheus metrics at http://127.0.0.1:19102/metrics. Runs until
    SIGTERM or Ctrl-C.
    """
    from app.worker.app import run_worker

    s = _settings(ctx)
    if web_port:
        s = s.model_copy(update={"worker_web_port": web_port})
    run_worker(s)


# ------------------------------------------------------------------------------------------- sink


@cli.command()
@click.option("--web-port", default=None, type=int, help="Faust web server port on 127.0.0.1 (/metrics).")
@click.option("--data-root", default=None, type=click.Path(path_type=Path), help="JSONL root (OBSERVER_DATA_ROOT).")
@click.pass_context
def sink(ctx: click.Context, web_port: int | None, data_root: Path | None) -> None:
    """Every record of kis.ticks.raw, kis.snapshots, observer.surges, slot.decisions and slot.overflow
    (or those of OBSERVER_SINK_TOPICS) into hourly/daily JSONL files under the data root and
    day-partitioned PostgreSQL tables.

    A batch is in both stores (files fsynced, transaction committed, each with its Kafka offsets) before
    its consumer offsets are committed; a restart cuts uncommitted bytes and skips what either store
    already holds, so nothing is lost or written twice. PostgreSQL down or a full disk: the batch is
    retried with backoff, counted (observer_sink_write_errors) and logged, and nothing moves on until it
    is written. Records that can never be written go to kis.dlq with the reason. Applies the database
    migrations at start. One sink per data root. Metrics at http://127.0.0.1:19103/metrics.
    """
    from app.sink.agent import run_sink
    from app.sink.archive import ArchiveError

    s = _settings(ctx)
    if web_port:
        s = s.model_copy(update={"sink_web_port": web_port})
    if data_root:
        s = s.model_copy(update={"data_root": data_root})
    try:
        run_sink(s)
    except ArchiveError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


# ------------------------------------------------------------------------------------------- audit


def _parse_date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


class Progress:
    """Records read so far, on stderr, at most every half second (long reads must show they move)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.counts: dict[str, int] = {}
        self.shown = 0.0
        self.tty = sys.stderr.isatty()

    def __call__(self, name: str, n: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + n
        now = time.monotonic()
        if now - self.shown >= (0.5 if self.tty else 10.0):
            self.shown = now
            done = ", ".join(f"{k} {v:,}" for k, v in self.counts.items())
            click.echo(f"\r{self.what}: {done}" + ("" if self.tty else "\n"), err=True, nl=False)

    def close(self) -> None:
        if self.tty and self.shown:
            click.echo("", err=True)


@cli.command()
@click.option("--date", "date_", required=True, help="KRX business date, YYYY-MM-DD.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object.")
@click.pass_context
def audit(ctx: click.Context, date_: str, as_json: bool) -> None:
    """Where every record of a business date went: counts per stage and the receive-to-persist ratio.

    Bridge frames received, records parsed and dead letters by reason (from observer.counts); the date's
    records in Kafka (ticks, snapshots, surges, slot decisions, overflow; total and distinct by natural
    key); the sink's dead letters; committed JSONL lines under the data root; PostgreSQL rows in
    OBSERVER_PG_SCHEMA. Reads without a consumer group, so it disturbs nothing. Exit status 1 if anything
    is unaccounted for (a trade parsed but not in Kafka, a record in Kafka in neither store nor the DLQ,
    a duplicate line), with one line per problem.
    """
    from app.audit import collect_day

    s = _settings(ctx)
    date = _parse_date(date_)
    progress = Progress(f"reading {date}")
    try:
        result = asyncio.run(collect_day(s, date, progress))
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        progress.close()
    if as_json:
        import orjson

        click.echo(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        for line in result.table():
            click.echo(line)
    if result.problems():
        sys.exit(EXIT_FAILED)


Run = TypeVar("Run")


def _run_tool(
    job: Callable[[Callable[[str], None]], Coroutine[Any, Any, Run]],
    as_json: bool,
    summary: Callable[[Run], dict[str, Any]],
    table: Callable[[Run], list[str]],
) -> Run:
    """Run a tool that starts processes (demo, replay): progress on stdout, or stderr with --json; then its
    summary as a table or one JSON object. A failed run prints the reason and exits 1."""
    import orjson

    from app.runs import RunError

    echo = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    try:
        run = asyncio.run(job(echo))
    except RunError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    if as_json:
        click.echo(orjson.dumps(summary(run), option=orjson.OPT_INDENT_2).decode())
    else:
        for line in table(run):
            click.echo(line)
    return run


# ------------------------------------------------------------------------------------------ replay


@cli.command()
@click.option("--date", "date_", required=True, help="KRX business date, YYYY-MM-DD.")
@click.option("--from", "from_", default=None, help="Start of the window, HH:MM KST (default: the day's start).")
@click.option("--to", "to", default=None, help="End of the window, HH:MM KST, exclusive (default: the day's end).")
@click.option("--into", "into", default=None, help="Name of the replay's outputs (default replay_YYYYMMDD).")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for the replay to drain.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 12), help="Worker processes.")
@click.option("--expect-identical", is_flag=True, help="Exit 1 if the outputs differ from the live ones.")
@click.option(
    "--event-time",
    is_flag=True,
    help="Merge the slot manager's inputs by event time instead of following the live run's merge log "
    "(for a replay under changed settings).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.pass_context
def replay(
    ctx: click.Context,
    date_: str,
    from_: str | None,
    to: str | None,
    into: str | None,
    timeout: float,
    workers: int,
    expect_identical: bool,
    event_time: bool,
    as_json: bool,
) -> None:
    """Run a past day's ticks and snapshots through the Faust logic again, apart from the live apps.

    Copies the window of kis.ticks.raw and kis.snapshots (found by offsets for times) into topics of the
    replay's own prefix, replay-NAME., then runs observer worker (scanner off) and observer sink (surges,
    slot decisions, overflow) on them under fresh app ids, into the PostgreSQL schema NAME and the JSONL
    root OBSERVER_REPLAY_ROOT/NAME/data (.local/replay), with a progress bar. Prints the surges, slot decisions and
    overflow it produced beside the live ones of the same window, and whether they are byte-identical.
    The slot manager applies its inputs in the order the live one did (slot.merge-log: where idle
    partitions and KIS refusals put things), unless --event-time. The live consumer groups, tables and
    outputs are only read. A replay of the same NAME replaces the earlier one; NAME is never the live
    schema. OBSERVER_* settings (the surge rule, say) apply.
    """
    from app.replay import ReplayOptions, run_replay, summary_table

    s = _settings(ctx)
    date = _parse_date(date_)
    try:
        options = ReplayOptions(
            day=date,
            name=into or f"replay_{date:%Y%m%d}",
            start=dt.time.fromisoformat(from_) if from_ else None,
            end=dt.time.fromisoformat(to) if to else None,
            timeout_s=timeout,
            follow_live=not event_time,
            workers=workers,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if options.start and options.end and options.end <= options.start:
        raise click.BadParameter(f"--to {to} is not after --from {from_}")
    run = _run_tool(lambda echo: run_replay(s, options, echo), as_json, lambda r: r.summary(), summary_table)
    if expect_identical and not run.identical:
        sys.exit(EXIT_FAILED)


# --------------------------------------------------------------------------------------- analytics


@cli.group()
def analytics() -> None:
    """Downstream analytics consumers, each in a consumer group of its own."""


@analytics.command("minute-bars")
@click.option("--group", default="observer-analytics-minute-bars", show_default=True, help="Consumer group id.")
@click.pass_context
def analytics_minute_bars(ctx: click.Context, group: str) -> None:
    """One-minute OHLCV bars per symbol from kis.ticks.raw into OBSERVER_PG_SCHEMA.minute_bars, until SIGTERM.

    Its own consumer group (prefixed by OBSERVER_TOPIC_PREFIX), so it never takes records from the sink or
    the worker. Exactly once into PostgreSQL: each batch's bars and the offsets they reach are one
    transaction, and the consumer seeks to those offsets after any restart or rebalance; a trade published
    twice is recognised by its cumulative volume. Its lag: observer stack consumer-groups --describe
    --group <prefix><group>.
    """
    from app.analytics.minute_bars import run_minute_bars

    counts = asyncio.run(run_minute_bars(_settings(ctx), group, click.echo))
    click.echo(
        f"stopped: {counts.records_in:,} records, {counts.ticks_added:,} ticks in bars, "
        f"{counts.duplicates:,} repeated, {counts.dead_letters:,} dead-lettered"
    )


# --------------------------------------------------------------------------------------- republish


@cli.command()
@click.option(
    "--jsonl",
    "jsonl",
    required=True,
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="The archive: a sink data root (the directory holding observer/).",
)
@click.option("--date", "date_", required=True, help="KRX business date, YYYY-MM-DD.")
@click.option("--prefix", default=None, help="Topic prefix of the republished day (default republish-YYYYMMDD.).")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as one JSON object.")
@click.pass_context
def republish(ctx: click.Context, jsonl: Path, date_: str, prefix: str | None, as_json: bool) -> None:
    """Put an archived day (JSONL) back into Kafka, for a day older than the topics' retention.

    Reads the committed scalp (trades) and swing (snapshots) lines of the date under the data root and
    publishes them as RawTick and Snapshot records, keyed and stamped as the bridge and scanner did, to
    topics of their own (default prefix republish-YYYYMMDD., created with unlimited retention). Records the
    topics already hold are not sent again, so running it twice adds nothing. Lines that cannot be read
    back go to the prefix's kis.dlq with file and line (exit status 1). Then replay the day with
    OBSERVER_TOPIC_PREFIX set to the prefix: observer replay --date D --event-time.
    """
    import re

    import orjson

    from app.republish import republish as run_republish

    s = _settings(ctx)
    date = _parse_date(date_)
    target = prefix if prefix is not None else f"{s.topic_prefix}republish-{date:%Y%m%d}."
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", target):
        raise click.BadParameter(f"{target!r}: a topic prefix may hold only letters, digits, '.', '_' and '-'")
    progress = Progress(f"republishing {date}")
    try:
        result = asyncio.run(run_republish(s, jsonl, date, target, progress))
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        progress.close()
    if as_json:
        click.echo(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(f"republished {date} from {jsonl} to {target}* in {result.wall_s:.1f} s")
        for kind, k in result.kinds.items():
            click.echo(
                f"  {kind:<9}  {k.lines:>9,} lines  {k.sent:>9,} sent  {k.already:>9,} already there  "
                f"{k.bad:>5,} dead-lettered"
                + (
                    f"  ({k.unreadable_in_target:,} unreadable records in the target topic)"
                    if k.unreadable_in_target
                    else ""
                )
            )
        for line in result.bad_lines:
            click.echo(f"  bad line: {line}")
        click.echo(f"replay it: OBSERVER_TOPIC_PREFIX={target} observer replay --date {date} --event-time")
    if any(k.bad for k in result.kinds.values()):
        sys.exit(EXIT_FAILED)


# -------------------------------------------------------------------------------------------- demo


@cli.command()
@click.option("--speed", default=180.0, show_default=True, type=float, help="Simulated seconds per wall second.")
@click.option("--from", "from_", default="08:55", show_default=True, help="Simulated start, HH:MM KST.")
@click.option("--until", default="12:00", show_default=True, help="Simulated end, HH:MM KST.")
@click.option("--seed", default=1, show_default=True, help="Market seed.")
@click.option("--random-surges", default=24, show_default=True, help="Surges the simulator places in the morning.")
@click.option("--malformed-rate", default=0.002, show_default=True, help="Chance per frame of an extra bad frame.")
@click.option("--keep-stack", is_flag=True, help="Leave Kafka and PostgreSQL running even if the demo started them.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.pass_context
def demo(
    ctx: click.Context,
    speed: float,
    from_: str,
    until: str,
    seed: int,
    random_surges: int,
    malformed_rate: float,
    keep_stack: bool,
    as_json: bool,
) -> None:
    """The whole system on the simulator: a KRX morning in about a minute, then what happened.

    Starts the local Kafka and PostgreSQL if they are not running, the KIS simulator, and observer bridge,
    worker and sink as separate processes; runs a simulated morning of the latest past session at --speed;
    stops the bridge, lets the worker and sink drain, stops them, and prints frames received, ticks
    published, JSONL lines, PostgreSQL rows, dead letters, surges, slot changes, overflow and the
    receive-to-persist ratio (the audit of the day). Stops everything it started. Each run has its own
    topic prefix, schema and data root under OBSERVER_DEMO_ROOT (.local/demo); the latest run is kept.
    Exit status 1 if anything is unaccounted for.
    """
    from app.demo import DemoOptions, run_demo, summary_table

    s = _settings(ctx)
    try:
        options = DemoOptions(
            speed=speed,
            start=dt.time.fromisoformat(from_),
            until=dt.time.fromisoformat(until),
            seed=seed,
            random_surges=random_surges,
            malformed_rate=malformed_rate,
            keep_stack=keep_stack,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    run = _run_tool(lambda echo: run_demo(s, options, echo), as_json, lambda r: r.summary(), summary_table)
    if run.summary()["unaccounted"]:
        sys.exit(EXIT_FAILED)


# -------------------------------------------------------------------------------------------- soak


@cli.command()
@click.option("--short", is_flag=True, help="The test suite's soak: 09:00-10:50 at 40x (about four minutes).")
@click.option("--speed", default=None, type=float, help="Simulated seconds per wall second (default 39; 40 short).")
@click.option("--peak-factor", default=None, type=float, help="Every trade rate x this in the peak (default 3.5).")
@click.option("--seed", default=None, type=int, help="Market seed (default 7).")
@click.option("--keep-stack", is_flag=True, help="Leave Kafka and PostgreSQL running even if the soak started them.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.pass_context
def soak(
    ctx: click.Context,
    short: bool,
    speed: float | None,
    peak_factor: float | None,
    seed: int | None,
    keep_stack: bool,
    as_json: bool,
) -> None:
    """A whole simulated KRX session (08:55-15:31 KST) under production's faults, in about ten minutes.

    The demo's system (stack, simulator, bridge, worker, sink) at a realistic trade rate, then a peak of
    at least three times the seed system's busiest hour, with bad frames all day and, on a schedule:
    WebSocket drops, kill -9 of the worker and of the sink (restarted at once), the broker and PostgreSQL
    restarted, a registration KIS keeps so that the bridge's next subscription is KIS's 42nd, and a burst
    of surges in more symbols than the 41 slots. Then the audit of the day, the slot policy replayed from
    the decisions, peak RSS per process and together, and latency percentiles (frame to Kafka ack, tick to
    JSONL and PostgreSQL, surge to subscribe). The run is kept under .local/soak until the next one.
    Exit status 1 if any check fails.
    """
    from dataclasses import replace

    from app.soak import SoakOptions, run_soak, soak_table

    s = _settings(ctx)
    options = SoakOptions.short() if short else SoakOptions()
    given = {"speed": speed, "peak_factor": peak_factor, "seed": seed}
    changes: dict[str, Any] = {"keep_stack": keep_stack} | {k: v for k, v in given.items() if v is not None}
    try:
        options = replace(options, **changes)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    result = _run_tool(lambda echo: run_soak(s, options, echo), as_json, lambda r: r.summary(), soak_table)
    if result.failures():
        sys.exit(EXIT_FAILED)


# ------------------------------------------------------------------------------------------- smoke


@cli.command()
@click.option(
    "--url",
    envvar="OBSERVER_HEALTHCHECK_URL",
    required=True,
    help="The process's health or metrics URL (env OBSERVER_HEALTHCHECK_URL; the image's services set it).",
)
@click.option("--timeout", "timeout_s", type=float, default=4.0, show_default=True)
def healthcheck(url: str, timeout_s: float) -> None:
    """Exit 0 if URL answers HTTP 200 within the timeout, 1 otherwise (the container health check).

    The worker's /api/health is 200 only while its partitions are assigned and no agent crashed in the last
    minute; the sink's and bridge's /metrics answer while their process serves."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        raise click.ClickException(f"{url}: {exc}") from exc
    if status != 200:
        raise click.ClickException(f"{url}: HTTP {status}")
    click.echo(f"{url}: ok")


@cli.command()
@click.pass_context
def smoke(ctx: click.Context) -> None:
    """Check the running stack end to end: one RawTick through Kafka, one row through PostgreSQL."""
    from app.smoke import run_smoke

    for line in asyncio.run(run_smoke(_settings(ctx))):
        click.echo(line)


def main() -> None:
    kafka_backoff.install()  # every Kafka client of every subcommand
    try:
        cli(standalone_mode=True)
    except (StackError, TopicsError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
