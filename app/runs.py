"""Running the observer's own processes from a tool (``observer demo``, ``observer replay``) and knowing
when they are done.

The tools start ``observer worker``/``sink``/``bridge`` as the separate processes users run, each with its
log, and stop them with SIGTERM. "Done" is read from the stores, not guessed from time: every record of
the sink's input topics is in PostgreSQL and in the JSONL archive (their own offsets), the worker's group
has committed everything it reads, and nothing new has arrived for a quiet period.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import orjson
import psycopg
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from app.config import Settings
from app.kafka_read import new_reader, time_window
from app.sink.archive import COMMIT_FILE


class RunError(RuntimeError):
    """A tool's run could not finish; the message says which part failed and where its log is."""


def free_port(preferred: int | None = None) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RunError("no free port on 127.0.0.1")


def scrape(port: int) -> dict[str, float]:
    """A process's Prometheus metrics as ``name{labels}`` -> value (empty if it does not answer yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def healthy(port: int) -> bool:
    """The worker's /api/health says ok: its partitions are assigned (so its scanner and agents run)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:  # connection refused, or HTTP 503 while starting
        return False


def metric_sum(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


def _stop_with_parent() -> None:
    """In the child before exec: SIGTERM when the tool that started it dies, even by SIGKILL (Linux), so a
    killed demo or replay leaves no process behind writing to topics that are gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class Processes:
    """The observer processes of a run: started with their own logs, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child holds it; a restart appends
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env | (env or {}),
            start_new_session=True,  # a Ctrl-C of the tool reaches the tool, which stops them in order
            preexec_fn=_stop_with_parent,
        )

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                raise RunError(
                    f"observer {name} exited with status {proc.returncode}; its log is {self.logs / name}.log:\n  "
                    + "\n  ".join(tail)
                )

    def stop(self, name: str, timeout_s: float = 60.0) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self, name: str) -> int:
        """SIGKILL, as the OOM killer or a node's loss would: no shutdown code runs. Returns the pid."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait()
        return proc.pid

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items() if proc.poll() is None}

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


async def wait_for(check: Callable[[], bool], deadline_s: float, what: str, procs: Processes) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        procs.check()
        if time.monotonic() > end:
            raise RunError(f"no {what} within {deadline_s:.0f} s")
        await asyncio.sleep(0.25)


async def end_offsets(settings: Settings, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """The end offset of every partition of ``topics`` (physical names)."""
    reader = new_reader(settings.bootstrap_servers)
    await reader.start()
    try:
        ends: dict[tuple[str, int], int] = {}
        for topic in topics:
            for r in await time_window(reader, topic, None, None):
                ends[(topic, r.partition)] = r.end
        return ends
    finally:
        await reader.stop()


async def committed_offsets(settings: Settings, group: str) -> dict[tuple[str, int], int]:
    """The offsets a consumer group has committed, as Kafka's own consumer-group tool reports them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in found.items() if meta.offset >= 0}


async def sink_offsets(settings: Settings) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
    """The next offset each store of the sink will write, per input partition: (PostgreSQL, JSONL)."""
    app_id = f"{settings.topic_prefix}{settings.sink_app_id}"
    pg: dict[tuple[str, int], int] = {}
    try:
        async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, connect_timeout=5) as conn:
            query = sql.SQL("SELECT topic, kafka_partition, next_offset FROM {}.sink_offsets WHERE consumer = %s")
            rows = await (await conn.execute(query.format(sql.Identifier(settings.pg_schema)), (app_id,))).fetchall()
            pg = {(t, p): n for t, p, n in rows}
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        pass  # the sink has not made its tables yet: nothing written
    jsonl: dict[tuple[str, int], int] = {}
    commit = settings.data_root / COMMIT_FILE
    if commit.is_file():
        for key, n in orjson.loads(commit.read_bytes()).get("offsets", {}).items():
            topic, _, partition = key.rpartition(":")
            jsonl[(topic, int(partition))] = n
    return pg, jsonl


Behind = Callable[[], Awaitable[int]]


async def wait_drained(
    settings: Settings,
    sink_topics: Iterable[str],
    procs: Processes,
    deadline_s: float,
    quiet_s: float,
    echo: Callable[[str], None],
    also_behind: Behind | None = None,
) -> None:
    """Until both stores hold everything in the sink's input topics (``sink_topics``, physical names),
    ``also_behind`` (another stage's backlog) is zero, and no input has grown for ``quiet_s``."""
    topics = list(sink_topics)
    end = time.monotonic() + deadline_s
    last_ends: dict[tuple[str, int], int] = {}
    quiet_since = time.monotonic()
    shown = 0.0
    while True:
        procs.check()
        ends = await end_offsets(settings, topics)
        pg, jsonl = await sink_offsets(settings)
        behind = sum(max(0, n - min(pg.get(tp, 0), jsonl.get(tp, 0))) for tp, n in ends.items())
        other = await also_behind() if also_behind is not None else 0
        if ends != last_ends:
            last_ends, quiet_since = ends, time.monotonic()
        if behind == 0 and other == 0 and time.monotonic() - quiet_since >= quiet_s:
            return
        if time.monotonic() > end:
            raise RunError(
                f"not drained within {deadline_s:.0f} s: {behind} records not in both stores, {other} not processed"
            )
        if time.monotonic() - shown > 5:
            shown = time.monotonic()
            extra = f", {other:,} not yet processed" if other else ""
            echo(f"  draining: {behind:,} records not yet in both stores{extra}")
        await asyncio.sleep(0.5)
