"""Running the simulator as a process: ``observer sim``. Progress lines while it runs, totals at the end."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import signal
import time
from collections.abc import Callable

from app.sim.clock import KST
from app.sim.market import SurgeSpec
from app.sim.server import KisSimulator, SimConfig

_SURGE = re.compile(r"^(?P<sym>[0-9A-Z]{6,7})@(?P<hh>\d{1,2}):(?P<mm>\d{2})\+(?P<min>\d+(\.\d+)?)x(?P<f>\d+(\.\d+)?)$")


def parse_surge(text: str) -> SurgeSpec:
    """``SYMBOL@HH:MM+MINUTESxFACTOR``, e.g. ``005380@09:05+5x10``: ten times the usual trading for 5 minutes."""
    m = _SURGE.match(text.strip())
    if m is None:
        raise ValueError(f"surge {text!r} is not SYMBOL@HH:MM+MINUTESxFACTOR (e.g. 005380@09:05+5x10)")
    return SurgeSpec(
        symbol=m["sym"], start=dt.time(int(m["hh"]), int(m["mm"])), minutes=float(m["min"]), factor=float(m["f"])
    )


async def run_simulator(
    config: SimConfig, until_kst: dt.datetime | None, progress_every_s: float, echo: Callable[[str], None]
) -> KisSimulator:
    sim = KisSimulator(config)
    await sim.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The banner tells a supervisor we are ready, so it comes after the signal handlers.
    creds = ", ".join(config.app_key_ids)
    echo(
        f"sim: KIS REST on {sim.rest_url}, WebSocket on {sim.ws_url}; {len(sim.market.symbols)} symbols, "
        f"seed {config.seed}, start {config.start.astimezone(KST):%Y-%m-%d %H:%M:%S} KST at {config.speed:g}x; "
        f"app keys: {creds}; ground truth: GET {sim.rest_url}/sim/ledger"
    )
    last = time.monotonic()
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            except TimeoutError:
                sim.check_driver()
            if until_kst is not None and sim.clock.now_us() >= int(until_kst.timestamp() * 1e6):
                break
            if time.monotonic() - last >= progress_every_s:
                last = time.monotonic()
                t = sim.ledger.totals()
                echo(
                    f"sim {sim.clock.now_kst():%H:%M:%S} KST: {len(sim.ws.active)} sessions, "
                    f"{t['records_sent']} records in {t['frames_sent']} frames sent, "
                    f"{t['bad_frames_total']} bad frames, {t['drops']} drops"
                )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await sim.stop()
    t = sim.ledger.totals()
    echo(
        f"sim: stopped at {sim.clock.now_kst():%H:%M:%S} KST; {t['trades_generated']} trades generated, "
        f"{t['records_sent']} records sent in {t['frames_sent']} frames, bad frames {t['bad_frames']}, "
        f"{t['drops']} drops, {t['missed_while_unregistered']} missed while unregistered"
    )
    return sim
