"""The benchmark's baseline: a Faust app whose one agent takes ``kis.ticks.raw`` (raw bytes) and only counts.

    python bench/noop_worker.py APP_ID WEB_PORT

Same transport, broker settings and partitions as ``observer worker``; the settings (topic prefix, Kafka
port) come from the environment like the worker's. ``GET /api/counters`` gives ``{"ticks_in": n}``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from faust.worker import Worker

from app.config import load_settings
from app.worker.transport import ObserverApp


def main() -> None:
    app_id, port = sys.argv[1], int(sys.argv[2])
    settings = load_settings()
    datadir = settings.home / "noop" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = ObserverApp(
        app_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        store="memory://",
        datadir=str(datadir),
        topic_partitions=12,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        web_host="127.0.0.1",
        web_port=port,
        web_bind="127.0.0.1",
    )
    ticks = app.topic(settings.topic("kis.ticks.raw"), key_serializer="raw", value_serializer="raw")
    count = [0]

    @app.agent(ticks)
    async def noop(stream: Any) -> None:
        async for _event in stream.events():
            count[0] += 1

    @app.page("/api/counters")
    async def counters(web: Any, request: Any) -> Any:
        return web.json({"ticks_in": count[0]})

    Worker(app, loglevel="WARNING", redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
