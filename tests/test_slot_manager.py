"""The slot manager's clock: bootstrap before the open, release at the close, nothing on a KRX holiday."""

from __future__ import annotations

import datetime as dt
import random

from app.krx import KST
from app.records import default_codec
from app.slots.check import check_decisions
from app.slots.manager import Refusal, SlotManager, restore_state, state_to_record
from app.slots.policy import ASSIGN, RELEASE, Candidate, Decision, Overflow, SlotPolicy

US = 1_000_000
SOURCES = frozenset({"ticks/0", "ticks/1"})


def at(day: dt.date, hh: int, mm: int, ss: int = 0) -> int:
    return int(dt.datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=KST).timestamp()) * US


def decisions(out: list) -> list[tuple[str, str, int]]:
    return [(d.action, d.symbol, d.decided_at_us) for d in out if isinstance(d, Decision)]


def run_day(day: dt.date, seed: int = 0) -> tuple[SlotManager, list]:
    """Progress every 30 s from 08:50 to 15:35 on both sources, a surge at 10:00, a refusal at 11:00."""
    manager = SlotManager(SlotPolicy(capacity=41), SOURCES)
    events: dict[str, list] = {s: [] for s in SOURCES}
    t = at(day, 8, 50)
    while t <= at(day, 15, 35):
        for s in SOURCES:
            events[s].append(("advance", t, None))
        t += 30 * US
    events["ticks/0"].append(("add", at(day, 10, 0), Candidate("005380", 0.8, "surge", at(day, 10, 0))))
    events["ticks/1"].append(("add", at(day, 11, 0), Refusal("main", "005380", "max_subscribe_over", "OPSP0008")))
    for s in SOURCES:
        events[s].sort(key=lambda e: e[1])
    rng = random.Random(seed)
    cursors = dict.fromkeys(SOURCES, 0)
    out: list = []
    while any(cursors[s] < len(events[s]) for s in SOURCES):
        s = rng.choice(sorted(x for x in SOURCES if cursors[x] < len(events[x])))
        kind, t, item = events[s][cursors[s]]
        cursors[s] += 1
        if kind == "add":
            manager.add(s, t, item)
        else:
            manager.advance(s, t)
        out.extend(manager.step())
    return manager, out


def test_a_trading_day_bootstraps_before_the_open_and_releases_at_the_close() -> None:
    day = dt.date(2026, 11, 20)
    manager, out = run_day(day)
    got = decisions(out)
    boot = [(a, s) for a, s, t in got if t == at(day, 8, 59)]
    assert boot == [(ASSIGN, s) for s in SlotPolicy().bootstrap], "bootstrap 60 s before 09:00 KST"
    assert (ASSIGN, "005380", at(day, 10, 0)) in got
    assert (RELEASE, "005380", at(day, 11, 0)) in got, "a refused subscription frees its slot"
    refusal = [o for o in out if isinstance(o, Overflow)]
    assert [o.reason for o in refusal] == ["refused_by_kis:OPSP0008"]
    closing = [(a, s) for a, s, t in got if t == at(day, 15, 30)]
    assert sorted(closing) == sorted((RELEASE, s) for s in SlotPolicy().bootstrap)
    assert manager.book.held() == 0


def test_the_same_day_in_another_interleaving_gives_the_same_decisions() -> None:
    day = dt.date(2026, 11, 20)
    assert run_day(day, seed=1)[1] == run_day(day, seed=2)[1]


def test_a_krx_holiday_gives_no_bootstrap_and_no_decisions() -> None:
    christmas = dt.date(2026, 12, 25)
    manager, out = run_day(christmas)
    assert decisions(out) == []
    assert manager.ignored_outside_session == 1


def test_state_round_trips_through_its_avro_record_mid_day() -> None:
    """Stop halfway through a day, restore into a fresh manager: the rest of the day decides the same."""
    day = dt.date(2026, 11, 20)
    codec = default_codec()
    whole = SlotManager(SlotPolicy(capacity=41), SOURCES)
    halves = SlotManager(SlotPolicy(capacity=41), SOURCES)
    inputs = []
    t = at(day, 8, 58)
    while t <= at(day, 10, 5):
        inputs.append(("advance", "ticks/0", t, None))
        inputs.append(("advance", "ticks/1", t, None))
        t += 20 * US
    inputs.insert(150, ("add", "ticks/0", at(day, 9, 30), Candidate("005380", 0.8, "surge", at(day, 9, 30))))
    inputs.insert(151, ("add", "ticks/1", at(day, 9, 31), Candidate("000270", 0.7, "surge", at(day, 9, 31))))
    out_whole, out_halves = [], []
    for i, (kind, source, t, item) in enumerate(inputs):
        for m, out in ((whole, out_whole), (halves, out_halves)):
            m.add(source, t, item) if kind == "add" else m.advance(source, t)
            out.extend(m.step())
        if i == 151:  # the two candidates are pending: restore a fresh manager from the record
            record = codec.decode(codec.encode("SlotManagerState", state_to_record(halves)))[1]
            assert record["pending"], "something was waiting for the watermark"
            halves = SlotManager(SlotPolicy(capacity=41), SOURCES)
            restore_state(halves, record)
    assert out_whole == out_halves and len(decisions(out_whole)) == 8
    assert state_to_record(whole) == state_to_record(halves)


def test_sessions_inside_a_gap_in_the_input_are_not_decided_on() -> None:
    """Input on Friday 11:00, then nothing until the next Thursday 09:30: Friday closes, Thursday opens;
    the three sessions in between, which nobody observed, get no bootstrap and no release."""
    friday, thursday = dt.date(2026, 11, 13), dt.date(2026, 11, 19)
    manager = SlotManager(SlotPolicy(capacity=41), SOURCES)
    out: list = []
    for t in (at(friday, 11, 0), at(thursday, 9, 30)):
        for s in SOURCES:
            manager.advance(s, t)
        out.extend(manager.step())
    days = sorted({dt.datetime.fromtimestamp(t / US, KST).date() for _, _, t in decisions(out)})
    assert days == [friday, thursday]
    boot = len(SlotPolicy().bootstrap)
    assert [a for a, _, _ in decisions(out)] == [ASSIGN] * boot + [RELEASE] * boot + [ASSIGN] * boot


def test_a_refusal_applies_at_the_merged_time_and_moves_no_watermark() -> None:
    """KIS replies carry the bridge's wall clock, which may be days ahead of a simulated or replayed market."""
    day = dt.date(2026, 11, 20)
    manager = SlotManager(SlotPolicy(capacity=41), SOURCES)
    for s in SOURCES:
        manager.advance(s, at(day, 9, 59))
    manager.add("ticks/0", at(day, 10, 0), Candidate("005380", 0.8, "surge", at(day, 10, 0)))
    for s in SOURCES:
        manager.advance(s, at(day, 10, 1))
    assert (ASSIGN, "005380", at(day, 10, 0)) in decisions(manager.step())
    clock = manager.clock_us
    manager.refuse_now(Refusal("main", "005380", "max_subscribe_over", "OPSP0008"))
    out = manager.step()
    assert decisions(out) == [(RELEASE, "005380", clock)], "freed at the manager's time, not the reply's"
    assert [o.reason for o in out if isinstance(o, Overflow)] == ["refused_by_kis:OPSP0008"]
    assert manager.merger.released_until_us == at(day, 10, 1), "the watermark did not move"
    assert manager.step() == [], "reported once"


FOLLOW_SOURCES = frozenset({"ticks/0", "ticks/1", "snapshots/0"})


def live_run_with_idleness(day: dt.date, seed: int) -> tuple[list, list[dict], list[tuple[str, Candidate]]]:
    """A live manager: three sources read in a random interleaving, with the wall-clock inputs a live worker
    has (a source declared idle at random moments, KIS refusals of held symbols at random moments), and a
    small pool so that order matters. Returns its outcomes, its merge log and the candidates it was given."""
    rng = random.Random(seed)
    manager = SlotManager(SlotPolicy(capacity=3, bootstrap=("005930",), min_dwell_us=60 * US), FOLLOW_SOURCES)
    events: dict[str, list] = {s: [] for s in FOLLOW_SOURCES}
    candidates: list[tuple[str, Candidate]] = []
    for s in FOLLOW_SOURCES:
        t = at(day, 8, 57)
        while t < at(day, 10, 0):
            t += rng.randrange(1, 40) * US
            if rng.random() < 0.3:
                c = Candidate(f"{rng.randrange(20):06d}", rng.random(), "surge", t)
                candidates.append((s, c))
                events[s].append(("add", t, c))
            else:
                events[s].append(("advance", t, None))
    cursors = dict.fromkeys(FOLLOW_SOURCES, 0)
    out: list = []
    log: list[dict] = []
    while any(cursors[s] < len(events[s]) for s in FOLLOW_SOURCES):
        s = rng.choice(sorted(x for x in FOLLOW_SOURCES if cursors[x] < len(events[x])))
        kind, t, item = events[s][cursors[s]]
        cursors[s] += 1
        if kind == "add":
            manager.add(s, t, item)
        else:
            manager.advance(s, t)
        if rng.random() < 0.05 and manager.book.held():
            held = [h.symbol for h in manager.book.slots["main"] if h is not None]
            manager.refuse_now(Refusal("main", rng.choice(held), "max_subscribe_over", "OPSP0008"))
        idle = {x for x in sorted(FOLLOW_SOURCES) if x != s and rng.random() < 0.2}  # sorted: same for any hash seed
        out.extend(manager.step(idle))
        log.extend(manager.merge_log)
        manager.merge_log.clear()
    return out, log, candidates


def test_following_a_live_merge_log_gives_the_live_decisions_in_any_interleaving() -> None:
    """Idleness and refusals are the live manager's two inputs that are not data; its merge log records
    where they put things, and a follower given the same candidates decides exactly the same."""
    day = dt.date(2026, 11, 20)
    differs_without_log = 0
    kinds: set[str] = set()
    for seed in range(8):
        live_out, log, candidates = live_run_with_idleness(day, seed)
        assert any(isinstance(o, Decision) and o.action == ASSIGN for o in live_out)
        kinds |= {step["kind"] for step in log}
        rng = random.Random(100 + seed)
        follower = SlotManager(SlotPolicy(capacity=3, bootstrap=("005930",), min_dwell_us=60 * US), FOLLOW_SOURCES)
        inputs = [("step", step) for step in log] + [("candidate", c) for c in candidates]
        # The log in its order, the candidates at any point against it (a replay computes them at its own pace).
        rng.shuffle(inputs)
        log_inputs = iter(log)
        ordered = [(kind, next(log_inputs) if kind == "step" else item) for kind, item in inputs]
        followed: list = []
        for kind, item in ordered:
            if kind == "step":
                follower.follow(item)
            else:
                follower.arrive(*item)
            followed.extend(follower.step_following())
        assert follower.waiting == 0
        assert followed == live_out
        assert follower.merge_log == log
        # The same candidates merged by event time alone (no idleness, no refusals) decide otherwise here.
        alone = SlotManager(SlotPolicy(capacity=3, bootstrap=("005930",), min_dwell_us=60 * US), FOLLOW_SOURCES)
        for source, c in sorted(candidates, key=lambda sc: sc[1].detected_at_us):
            alone.add(source, c.detected_at_us, c)
        for s in FOLLOW_SOURCES:
            alone.advance(s, at(day, 10, 1))
        differs_without_log += alone.step() != live_out
    assert differs_without_log > 0, "the scenario must exercise what the log records"
    assert kinds == {"candidate", "refusal", "clock"}, "every kind of step was followed"


def test_a_follower_applies_a_repeated_step_once_and_waits_for_a_missing_candidate() -> None:
    day = dt.date(2026, 11, 20)
    c = Candidate("005380", 0.8, "surge", at(day, 10, 0))
    step = {
        "kind": "candidate",
        "time_us": at(day, 10, 0, 2),
        "source": "ticks/0",
        "symbol": "005380",
        "detected_at_us": at(day, 10, 0),
        "app_key_id": "",
        "outcome": "",
        "msg_cd": "",
    }
    follower = SlotManager(SlotPolicy(capacity=41, bootstrap=()), FOLLOW_SOURCES)
    follower.follow(step)
    follower.follow(dict(step))  # the logging worker restarted and wrote it again
    assert follower.step_following() == [] and follower.waiting == 2, "its surge has not been computed yet"
    follower.arrive("ticks/1", c)  # another source's candidate is not this step's
    assert follower.step_following() == []
    follower.arrive("ticks/0", c)
    assert decisions(follower.step_following()) == [(ASSIGN, "005380", at(day, 10, 0, 2))]
    assert follower.waiting == 0


def live_inputs_and_states(day: dt.date, seed: int) -> dict:
    """A live manager over three sources with random idleness and KIS refusals, as above; after every input
    its merge-log steps are published (offsets counted) and its state is stored through its Avro codec, the
    way the worker does both."""
    rng = random.Random(seed)
    manager = SlotManager(SlotPolicy(capacity=3, bootstrap=("005930",), min_dwell_us=60 * US), FOLLOW_SOURCES)
    events: dict[str, list] = {s: [] for s in FOLLOW_SOURCES}
    for s in FOLLOW_SOURCES:
        t = at(day, 8, 57)
        while t < at(day, 10, 0):
            t += rng.randrange(1, 40) * US
            if rng.random() < 0.3:
                events[s].append(("add", s, t, Candidate(f"{rng.randrange(20):06d}", rng.random(), "surge", t)))
            else:
                events[s].append(("advance", s, t, None))
    codec = default_codec()
    cursors = dict.fromkeys(FOLLOW_SOURCES, 0)
    run: dict[str, list] = {"inputs": [], "outcomes": [], "log": [], "states": [], "log_ends": []}
    while any(cursors[s] < len(events[s]) for s in FOLLOW_SOURCES):
        if rng.random() < 0.05 and manager.book.held():
            held = [h.symbol for h in manager.book.slots["main"] if h is not None]
            event: tuple = ("refuse", "", 0, Refusal("main", rng.choice(held), "max_subscribe_over", "OPSP0008"))
        else:
            s = rng.choice(sorted(x for x in FOLLOW_SOURCES if cursors[x] < len(events[x])))
            event = events[s][cursors[s]]
            cursors[s] += 1
        run["inputs"].append(event)
        feed(manager, event)
        run["outcomes"].append(manager.step({x for x in sorted(FOLLOW_SOURCES) if rng.random() < 0.2}))
        for step in manager.merge_log:
            run["log"].append((len(run["log"]), step))
            manager.merge_log_offset = len(run["log"]) - 1
        manager.merge_log.clear()
        run["log_ends"].append(len(run["log"]))
        run["states"].append(codec.encode("SlotManagerState", state_to_record(manager)))
    return run


def feed(manager: SlotManager, event: tuple) -> None:
    kind, source, t, item = event
    if kind == "add":
        manager.add(source, t, item)
    elif kind == "advance":
        manager.advance(source, t)
    else:
        manager.refuse_now(item)


def restart(state: bytes, log: list[tuple[int, dict]], recover: bool = True) -> SlotManager:
    m = SlotManager(SlotPolicy(capacity=3, bootstrap=("005930",), min_dwell_us=60 * US), FOLLOW_SOURCES)
    restore_state(m, default_codec().decode(state)[1])
    if recover:
        m.recover(log)
    return m


def records(outcomes: list) -> list[dict]:
    return [o.to_record() for o in outcomes if isinstance(o, Decision)]


def test_a_restart_applies_the_steps_its_killed_run_published_and_makes_no_second_history() -> None:
    """The worker publishes a batch's merge steps and decisions before the state that reflects them, and is
    killed -9 in between: the restarted manager gets its inputs again from the stored state's offsets, with
    other idleness (a wall-clock input). It must repeat what was published (same ids) and go on from there;
    deciding again instead gave the soak two histories of the same slots."""
    day = dt.date(2026, 11, 20)
    conflicts_without_recovery = 0
    recovered_steps = 0
    for seed in range(12):
        run = live_inputs_and_states(day, seed)
        rng = random.Random(seed)
        for _ in range(6):
            stored = rng.randrange(0, len(run["inputs"]) - 40)
            killed = stored + rng.randrange(1, 40)
            published_log = run["log"][: run["log_ends"][killed]]
            published = [o for out in run["outcomes"][: killed + 1] for o in out]
            repeated = [o for out in run["outcomes"][stored + 1 : killed + 1] for o in out]
            for recover in (True, False):
                m = restart(run["states"][stored], published_log, recover)
                recovered_steps += m.recovering if recover else 0
                idle_rng = random.Random(seed * 100 + killed)
                again: list = []
                for event in run["inputs"][stored + 1 :]:
                    recovering = m.recovering
                    feed(m, event)
                    again.extend(m.step({x for x in sorted(FOLLOW_SOURCES) if idle_rng.random() < 0.5}))
                    assert not (recovering and m.recovering and m.merge_log), "steps applied again are not logged again"
                check = check_decisions(records(published + again), capacity=3, min_dwell_us=60 * US)
                if recover:
                    assert m.recovering == 0
                    assert again[: len(repeated)] == repeated, "the published outcomes again, with the same ids"
                    assert check.violations == [], (seed, stored, killed, check.violations)
                else:
                    conflicts_without_recovery += bool(check.violations)
    assert recovered_steps > 100
    assert conflicts_without_recovery > 0, "the scenario must make a restart that decides again go wrong"


def test_a_second_crash_while_recovering_resumes_from_the_state_stored_then() -> None:
    """The state stored mid-recovery holds the steps applied so far (its merge-log offset), the refusals that
    came meanwhile and those applied ahead of their input: a second restart goes on from it."""
    day = dt.date(2026, 11, 20)
    kinds: set[str] = set()
    for seed in range(12):
        run = live_inputs_and_states(day, seed)
        stored, killed = len(run["inputs"]) // 3, len(run["inputs"]) // 3 + 30
        published_log = run["log"][: run["log_ends"][killed]]
        kinds |= {step["kind"] for _, step in published_log[run["log_ends"][stored] :]}
        published = [o for out in run["outcomes"][: killed + 1] for o in out]
        once = restart(run["states"][stored], published_log)
        again: list = []
        inputs = run["inputs"][stored + 1 :]
        taken = 0
        while once.recovering and taken < 15:
            feed(once, inputs[taken])
            again.extend(once.step())
            taken += 1
        mid = default_codec().encode("SlotManagerState", state_to_record(once))
        twice = restart(mid, published_log)
        for event in inputs[taken:]:
            feed(twice, event)
            again.extend(twice.step())
        assert twice.recovering == 0
        check = check_decisions(records(published + again), capacity=3, min_dwell_us=60 * US)
        assert check.violations == [], (seed, check.violations)
    assert {"candidate", "refusal"} <= kinds, "the recovered steps included refusals"


def test_a_recovered_step_whose_input_never_comes_again_can_be_given_up() -> None:
    day = dt.date(2026, 11, 20)
    m = SlotManager(SlotPolicy(capacity=41, bootstrap=()), FOLLOW_SOURCES)
    step = {"kind": "candidate", "time_us": at(day, 10, 0, 2), "source": "ticks/0", "symbol": "005380"}
    m.recover([(0, step | {"detected_at_us": at(day, 10, 0), "app_key_id": "", "outcome": "", "msg_cd": ""})])
    for s in FOLLOW_SOURCES:
        m.advance(s, at(day, 10, 5))
    assert m.step() == [] and m.recovering == 1, "nothing is decided while a recovered step waits"
    m.refuse_now(Refusal("main", "005930", "max_subscribe_over", "OPSP0008"))
    assert m.held_refusals, "a refusal that comes meanwhile waits too"
    assert m.abandon_recovery() == 1
    assert m.recovering == 0 and m.held_refusals == []
    m.add("ticks/1", at(day, 10, 6), Candidate("000660", 0.9, "surge", at(day, 10, 6)))
    for s in FOLLOW_SOURCES:
        m.advance(s, at(day, 10, 7))
    assert (ASSIGN, "000660", at(day, 10, 6)) in decisions(m.step()), "the merge decides again"
