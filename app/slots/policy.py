"""The slot policy: which symbols hold the WebSocket slots of each app key. Pure: no I/O, no clock.

Every method takes the event time of what triggered it and returns the decisions it made, so the same
inputs in the same order give the same decisions, live or replayed (the slot-manager agent feeds it,
one partition, and publishes what it returns).

- Pools: ``capacity`` slots per app key (41 is the KIS limit), filled in the order the app keys are given.
- Bootstrap: at session open, the configured symbols at their priority (0.95 by default).
- Minimum dwell: a holder keeps its slot at least ``min_dwell_us`` (120 s).
- Priority decays with a half-life since the holder's last surge, so a fading surge loses its slot.
- A candidate takes the slot of the lowest effective-priority holder past its dwell if its own priority is
  higher; otherwise an overflow record says why. Ties go to the holder that came first, then slot id.
- A subscription KIS refused (MAX SUBSCRIBE OVER, an error) frees the slot and is reported as overflow.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

LN2 = math.log(2)
ASSIGN = "assign"
RELEASE = "release"


@dataclass(frozen=True)
class SlotPolicy:
    app_key_ids: tuple[str, ...] = ("main",)
    capacity: int = 41
    min_dwell_us: int = 120_000_000
    half_life_us: int = 600_000_000  # a holder's priority halves every 10 min without a new surge
    bootstrap: tuple[str, ...] = ("005930", "000660", "373220", "051910", "068270", "035720")
    bootstrap_priority: float = 0.95

    def __post_init__(self) -> None:
        if not self.app_key_ids or len(set(self.app_key_ids)) != len(self.app_key_ids):
            raise ValueError("app_key_ids must be distinct and at least one")
        if self.capacity < 1 or self.min_dwell_us < 0 or self.half_life_us <= 0:
            raise ValueError("capacity >= 1, min_dwell_us >= 0 and half_life_us > 0 are required")
        if not 0 <= self.bootstrap_priority < 1:
            raise ValueError("bootstrap_priority must be in [0, 1)")


@dataclass(frozen=True)
class Candidate:
    """A symbol that asks for a slot, with the surge (or bootstrap) that makes it ask."""

    symbol: str
    priority: float
    trigger_type: str  # "surge", "snapshot_surge", "bootstrap"
    detected_at_us: int
    current_volume: int = 0
    avg_volume_10m: float = 0.0
    surge_ratio: float = 0.0


@dataclass
class Holder:
    symbol: str
    since_us: int
    priority: float  # at ``scored_at_us``
    scored_at_us: int
    decision_id: str


@dataclass(frozen=True)
class Decision:
    decision_id: str
    app_key_id: str
    slot_id: int
    symbol: str
    action: str
    trigger_type: str
    priority_score: float
    decided_at_us: int
    detected_at_us: int
    current_volume: int
    avg_volume_10m: float
    surge_ratio: float
    replaced_symbol: str | None
    reason: str

    def to_record(self) -> dict[str, object]:
        return dict(self.__dict__)

    @classmethod
    def manual(cls, app_key_id: str, slot_id: int, symbol: str, action: str, source: str, at_us: int = 0) -> Decision:
        """A decision made by hand (an operator, a test, a benchmark), not by the policy."""
        return cls(
            decision_id=f"{source}-{action}-{symbol}",
            app_key_id=app_key_id,
            slot_id=slot_id,
            symbol=symbol,
            action=action,
            trigger_type=source,
            priority_score=0.5,
            decided_at_us=at_us,
            detected_at_us=at_us,
            current_volume=0,
            avg_volume_10m=0.0,
            surge_ratio=0.0,
            replaced_symbol=None,
            reason=source,
        )


@dataclass(frozen=True)
class Overflow:
    symbol: str
    app_key_id: str | None
    trigger_type: str
    priority_score: float
    detected_at_us: int
    decided_at_us: int
    reason: str
    current_volume: int
    avg_volume_10m: float
    surge_ratio: float

    def to_record(self) -> dict[str, object]:
        return dict(self.__dict__)


Outcome = Decision | Overflow


@dataclass
class SlotBook:
    """All pools' state. ``slots[app_key_id][slot_id]`` is the holder or None."""

    policy: SlotPolicy
    slots: dict[str, list[Holder | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in self.policy.app_key_ids:
            self.slots.setdefault(key, [None] * self.policy.capacity)

    # ----------------------------------------------------------------------------------- queries

    def holder_of(self, symbol: str) -> tuple[str, int] | None:
        for key, pool in self.slots.items():
            for slot_id, holder in enumerate(pool):
                if holder is not None and holder.symbol == symbol:
                    return key, slot_id
        return None

    def effective_priority(self, holder: Holder, now_us: int) -> float:
        age = max(0, now_us - holder.scored_at_us)
        return holder.priority * math.exp(-LN2 * age / self.policy.half_life_us)

    def held(self) -> int:
        return sum(h is not None for pool in self.slots.values() for h in pool)

    # ------------------------------------------------------------------------------------ events

    def open_session(self, now_us: int) -> list[Outcome]:
        """Bootstrap symbols at session open (a no-op for those already holding a slot)."""
        out: list[Outcome] = []
        for symbol in self.policy.bootstrap:
            out.extend(self.offer(Candidate(symbol, self.policy.bootstrap_priority, "bootstrap", now_us), now_us))
        return out

    def close_session(self, now_us: int) -> list[Outcome]:
        """Release every slot (the market is closed; KIS sends nothing more)."""
        out: list[Outcome] = []
        for key, pool in self.slots.items():
            for slot_id, holder in enumerate(pool):
                if holder is not None:
                    out.append(self._release(key, slot_id, holder, now_us, "session_close", "session closed"))
        return out

    def offer(self, cand: Candidate, now_us: int) -> list[Outcome]:
        """A candidate asks for a slot: refresh, assign a free slot, replace a weaker holder, or overflow."""
        where = self.holder_of(cand.symbol)
        if where is not None:
            key, slot_id = where
            holder = self.slots[key][slot_id]
            assert holder is not None
            if cand.priority >= self.effective_priority(holder, now_us):
                holder.priority, holder.scored_at_us = cand.priority, now_us
            return []
        for key, pool in self.slots.items():
            for slot_id, holder in enumerate(pool):
                if holder is None:
                    return [self._assign(key, slot_id, cand, now_us, None, "free slot")]
        victim = self._weakest_evictable(now_us)
        if victim is not None:
            key, slot_id, holder, priority = victim
            if cand.priority > priority:
                reason = f"priority {cand.priority:.4f} > {holder.symbol} at {priority:.4f}"
                release = self._release(key, slot_id, holder, now_us, cand.trigger_type, f"replaced by {cand.symbol}")
                return [release, self._assign(key, slot_id, cand, now_us, holder.symbol, reason)]
        return [self._overflow(cand, now_us, self._overflow_reason(cand, now_us), None)]

    def refused(self, app_key_id: str, symbol: str, outcome: str, msg_cd: str, now_us: int) -> list[Outcome]:
        """KIS refused the subscription of a symbol we assigned: free the slot and report it."""
        pool = self.slots.get(app_key_id)
        if pool is None:
            return []
        for slot_id, holder in enumerate(pool):
            if holder is not None and holder.symbol == symbol:
                release = self._release(
                    app_key_id, slot_id, holder, now_us, "refusal", f"KIS refused: {outcome} {msg_cd}"
                )
                cand = Candidate(symbol, holder.priority, "refusal", now_us)
                return [release, self._overflow(cand, now_us, f"refused_by_kis:{msg_cd}", app_key_id)]
        return []

    # ---------------------------------------------------------------------------------- internals

    def _weakest_evictable(self, now_us: int) -> tuple[str, int, Holder, float] | None:
        best: tuple[float, int, str, int, Holder] | None = None
        for key, pool in self.slots.items():
            for slot_id, holder in enumerate(pool):
                if holder is None or now_us - holder.since_us < self.policy.min_dwell_us:
                    continue
                rank = (self.effective_priority(holder, now_us), holder.since_us, key, slot_id, holder)
                if best is None or rank[:4] < best[:4]:
                    best = rank
        if best is None:
            return None
        priority, _since, key, slot_id, holder = best
        return key, slot_id, holder, priority

    def _overflow_reason(self, cand: Candidate, now_us: int) -> str:
        weaker_in_dwell = any(
            holder is not None and self.effective_priority(holder, now_us) < cand.priority
            for pool in self.slots.values()
            for holder in pool
        )
        return "weaker_holders_within_min_dwell" if weaker_in_dwell else "all_slots_occupied"

    def _assign(
        self, key: str, slot_id: int, cand: Candidate, now_us: int, replaced: str | None, reason: str
    ) -> Decision:
        decision_id = _decision_id(key, slot_id, ASSIGN, cand.symbol, now_us)
        self.slots[key][slot_id] = Holder(cand.symbol, now_us, cand.priority, now_us, decision_id)
        return Decision(
            decision_id=decision_id,
            app_key_id=key,
            slot_id=slot_id,
            symbol=cand.symbol,
            action=ASSIGN,
            trigger_type=cand.trigger_type,
            priority_score=cand.priority,
            decided_at_us=now_us,
            detected_at_us=cand.detected_at_us,
            current_volume=cand.current_volume,
            avg_volume_10m=cand.avg_volume_10m,
            surge_ratio=cand.surge_ratio,
            replaced_symbol=replaced,
            reason=reason,
        )

    def _release(self, key: str, slot_id: int, holder: Holder, now_us: int, trigger: str, reason: str) -> Decision:
        self.slots[key][slot_id] = None
        return Decision(
            decision_id=_decision_id(key, slot_id, RELEASE, holder.symbol, now_us),
            app_key_id=key,
            slot_id=slot_id,
            symbol=holder.symbol,
            action=RELEASE,
            trigger_type=trigger,
            priority_score=self.effective_priority(holder, now_us),
            decided_at_us=now_us,
            detected_at_us=now_us,
            current_volume=0,
            avg_volume_10m=0.0,
            surge_ratio=0.0,
            replaced_symbol=None,
            reason=reason,
        )

    def _overflow(self, cand: Candidate, now_us: int, reason: str, app_key_id: str | None) -> Overflow:
        return Overflow(
            symbol=cand.symbol,
            app_key_id=app_key_id,
            trigger_type=cand.trigger_type,
            priority_score=cand.priority,
            detected_at_us=cand.detected_at_us,
            decided_at_us=now_us,
            reason=reason,
            current_volume=cand.current_volume,
            avg_volume_10m=cand.avg_volume_10m,
            surge_ratio=cand.surge_ratio,
        )


def _decision_id(key: str, slot_id: int, action: str, symbol: str, now_us: int) -> str:
    """Derived from the inputs only, so a replay names its decisions as live did."""
    digest = hashlib.blake2b(f"{key}|{slot_id}|{action}|{symbol}|{now_us}".encode(), digest_size=8).hexdigest()
    return f"{key}-{now_us}-{digest}"


def apply_all(book: SlotBook, candidates: Sequence[Candidate]) -> list[Outcome]:
    """Offer candidates in order, each at its own detection time (tests and replays)."""
    out: list[Outcome] = []
    for cand in candidates:
        out.extend(book.offer(cand, cand.detected_at_us))
    return out
