"""Shared fixtures: the real local stack, once per session, and per-test isolation.

The stack fixture reuses a running stack (a developer's) or starts one and stops what it started at
the end. It never skips: a stack that cannot start fails the tests that need it, with the cause.
Each test gets its own topic prefix and its own PostgreSQL schema, removed afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from app.config import Settings, load_settings
from app.stack.kafka import LocalKafka
from app.stack.postgres import LocalPostgres
from app.topics import delete_topics


@pytest.fixture(scope="session")
def stack() -> Iterator[Settings]:
    """Settings of a running local Kafka + PostgreSQL; started here if not already running."""
    settings = load_settings()
    kafka, pg = LocalKafka(settings), LocalPostgres(settings)
    started: list[LocalKafka | LocalPostgres] = []
    if kafka.pid() is None:
        started.append(kafka)
    kafka.start()
    if pg.pid() is None:
        started.append(pg)
    pg.start()
    yield settings
    for service in reversed(started):
        service.stop()


@pytest.fixture
def isolated(stack: Settings) -> Iterator[Settings]:
    """Settings whose topic names carry a prefix unique to this test; its topics are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    settings = stack.model_copy(update={"topic_prefix": prefix})
    yield settings
    asyncio.run(delete_topics(settings))  # the catalogue's and the worker's own (changelogs, candidates)


@pytest.fixture
def pg_schema(stack: Settings) -> Iterator[str]:
    """A PostgreSQL schema of this test's own, dropped afterwards. Yields its name."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(stack.postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    yield schema
    with psycopg.connect(stack.postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
