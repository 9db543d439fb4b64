"""Decoding a capture of raw KIS WebSocket messages (one per line) into named trade records.

Control replies in the capture are not trades, but a SUBSCRIBE SUCCESS carries the key/iv that later
encrypted frames of its TR need, so they are remembered, as a live client would.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from app.kis.protocol import H0STCNT0_FIELDS, ControlReply, DataFrame, FrameError, PingPong, classify
from app.kis.ticks import frame_to_ticks


@dataclass
class DecodeStats:
    frames: int = 0
    records: int = 0
    control: int = 0
    pingpong: int = 0
    bad: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.bad_by_reason.items()))
        return (
            f"{self.records} records from {self.frames} data frames; {self.control} control replies, "
            f"{self.pingpong} PINGPONG; {self.bad} bad frames" + (f" ({reasons})" if reasons else "")
        )


@dataclass(frozen=True)
class BadLine:
    line_no: int
    reason: str
    detail: str


def named_record(tick: dict[str, Any], line_no: int) -> dict[str, Any]:
    """A tick with every raw field under its documented name; fields beyond the layout under ``extra``."""
    raw = tick["fields"]
    named = dict(zip(H0STCNT0_FIELDS, raw, strict=False))
    out = {k: v for k, v in tick.items() if k != "fields"}
    out["line"] = line_no
    out["fields"] = named
    if len(raw) > len(H0STCNT0_FIELDS):
        out["extra_fields"] = raw[len(H0STCNT0_FIELDS) :]
    return out


def decode_lines(lines: Iterable[str], stats: DecodeStats) -> Iterator[dict[str, Any] | BadLine]:
    ciphers: dict[str, tuple[str, str]] = {}
    for line_no, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            msg = classify(text)
            if isinstance(msg, PingPong):
                stats.pingpong += 1
                continue
            if isinstance(msg, ControlReply):
                stats.control += 1
                if msg.key and msg.iv:
                    ciphers[msg.tr_id] = (msg.key, msg.iv)
                continue
            assert isinstance(msg, DataFrame)
            stats.frames += 1
            ticks = frame_to_ticks(
                msg, received_at_us=0, app_key_id="", session_id="", frame_seq=line_no, cipher=ciphers.get(msg.tr_id)
            )
        except FrameError as exc:
            stats.bad += 1
            stats.bad_by_reason[exc.reason] = stats.bad_by_reason.get(exc.reason, 0) + 1
            yield BadLine(line_no, exc.reason, exc.detail)
            continue
        stats.records += len(ticks)
        for tick in ticks:
            yield named_record(tick, line_no)
