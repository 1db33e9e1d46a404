"""The loop owns its alarms: raised by its alarm events, acknowledged through an operator
command carried out at the next tick (audited like any other), read from its snapshot.

Uses the in-process fakes of ``test_loop_ticks`` (fixed readings, a list historian, a
clock that jumps); times are binary fractions so that they compare exactly.
"""

from __future__ import annotations

from concurrent.futures import Future

import pytest

from bpcontrol.alarms import ALARM_KINDS, AlarmBook
from bpcontrol.commands import AcknowledgeAlarm, SetMode
from bpcontrol.records import AuditRecord, EventKind, EventRecord, Mode, RunIdentity
from bpcontrol.supervisor import SetpointLimits
from tests.loop.test_loop_ticks import FakePlant, JumpClock, make_loop, of


def _fallback(t_h: float) -> EventRecord:
    return EventRecord(t_h, EventKind.FALLBACK, "AUTO -> FALLBACK (test)", "supervisor")


def test_the_book_numbers_alarm_events_and_ignores_the_others() -> None:
    book = AlarmBook()
    assert book.raised(EventRecord(0.0, EventKind.PHASE, "phase", "loop")) is book
    book = book.raised(_fallback(0.5)).raised(_fallback(1.0))
    assert [a.id for a in book.alarms] == [1, 2]
    assert book.get(2) is book.alarms[1] and book.get(3) is None and book.get(0) is None
    assert book.get(True) is None and book.get("1") is None  # only an int names an alarm
    assert EventKind.PHASE not in ALARM_KINDS and EventKind.PLANT_READ_FAILED in ALARM_KINDS


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (AcknowledgeAlarm(1, "", "seen"), "who is required"),
        (AcknowledgeAlarm(1, "ana", " "), "why is required"),
        (AcknowledgeAlarm(7, "ana", "seen"), "no alarm 7; alarms are 1..1"),
        (AcknowledgeAlarm("1", "ana", "seen"), "no alarm '1'"),  # type: ignore[arg-type]
    ],
)
def test_a_refused_acknowledgement_changes_nothing(command: AcknowledgeAlarm, reason: str) -> None:
    book = AlarmBook().raised(_fallback(0.5))
    audit, after = book.acknowledge(command, t_h=0.75)
    assert after is book and not audit.accepted and reason in audit.reason
    assert audit.t_h == 0.75 and audit.action == f"acknowledge alarm {command.alarm_id}"


def test_the_loop_raises_alarms_and_carries_out_acknowledgements_at_the_next_tick() -> None:
    identity = RunIdentity.start(site="s", reactor="R1", batch_id="B1")
    answers: dict[str, Future[AuditRecord]] = {}

    def operator() -> None:  # the loop waits for 0.375 h: alarm 1 exists (0.125 h)
        answers["ack"] = loop.submit_ack(1, who="ana", why="probe reseated", wall_utc="W1")
        answers["again"] = loop.submit(AcknowledgeAlarm(1, "bob", "seen too"))
        answers["unknown"] = loop.submit_ack(5, who="ana", why="x")
        answers["hold"] = loop.submit(SetMode(Mode.HOLD, "ana", "look"))

    plant = FakePlant(fail_read_at=[0.125, 0.25])
    clock = JumpClock({0.375: operator})
    loop, historian, _ = make_loop(plant=plant, clock=clock, identity=identity)
    loop.run(duration_h=0.5)
    got = {k: f.result(timeout=1.0) for k, f in answers.items()}
    # two failed reads: two alarms, numbered in the order raised
    book = loop.snapshot().alarms
    assert [(a.id, a.event.kind, a.event.t_h) for a in book.alarms] == [
        (1, EventKind.PLANT_READ_FAILED, 0.125),
        (2, EventKind.PLANT_READ_FAILED, 0.25),
    ]
    assert book.alarms[0].event.run == identity  # the event as written, with the identity
    # carried out at the next tick (0.375 h), in submission order, each audited
    ack = got["ack"]
    assert ack.accepted and ack.t_h == 0.375 and ack.action == "acknowledge alarm 1"
    assert ack.old_value == "unacknowledged" and ack.new_value == "acknowledged (plant-read-failed)"
    assert ack.run == identity
    again = got["again"]
    assert not again.accepted and again.reason == (
        "alarm 1 was acknowledged by ana at 0.375 h already"
    )
    assert not got["unknown"].accepted and "no alarm 5" in got["unknown"].reason
    assert got["hold"].accepted  # the supervisor's commands still go to the supervisor
    first = book.alarms[0]
    assert (first.acked_by, first.acked_why, first.acked_t_h, first.acked_utc) == (
        "ana",
        "probe reseated",
        0.375,
        "W1",
    )
    assert not book.alarms[1].acknowledged and book.unacknowledged() == (book.alarms[1],)
    audits = [a for a in of(historian.records, AuditRecord) if a.t_h == 0.375]
    assert [(a.action, a.accepted) for a in audits] == [
        ("acknowledge alarm 1", True),
        ("acknowledge alarm 1", False),
        ("acknowledge alarm 5", False),
        ("mode AUTO -> HOLD", True),
    ]


def test_the_snapshot_shows_limits_operator_setpoints_and_the_supervised_setpoint() -> None:
    loop, _, _ = make_loop()
    before = loop.snapshot()
    assert before.limits == {
        "F": SetpointLimits(0.0, 1.0, 100.0),
        "T": SetpointLimits(20.0, 40.0, 100.0),
    }
    assert before.setpoint is None and before.alarms.alarms == ()
    answers: list[Future[AuditRecord]] = []

    def engineer() -> None:
        answers.append(
            loop.submit_limits("F", lower=0.0, upper=0.5, rate_per_h=0.4, who="eng", why="x")
        )

    loop.clock = JumpClock({0.125: engineer})
    loop.run(duration_h=0.5)  # control steps at 0 and 0.25 h
    assert answers[0].result(timeout=1.0).accepted
    snap = loop.snapshot()
    assert snap.limits["F"] == SetpointLimits(0.0, 0.5, 0.4)
    assert set(snap.operator) == {"F", "T"}
    assert snap.setpoint is not None and snap.setpoint.t_h == 0.25
    assert snap.setpoint.source.value == "nmpc"  # the fake controller's plan, in AUTO
    # the plan's F = 0.3 L/h, moved from 0.1 L/h at the new rate 0.4 L/h per h over 0.25 h
    assert snap.setpoint.values["F"] == pytest.approx(0.1 + 0.4 * 0.25)
    assert snap.applied["F"] == snap.setpoint.values["F"]
    assert snap.done


def test_after_the_run_an_acknowledgement_is_carried_out_and_other_commands_refused() -> None:
    plant = FakePlant(fail_read_at=[0.25])
    loop, historian, _ = make_loop(plant=plant)
    loop.run(duration_h=0.25)
    ack = loop.submit(AcknowledgeAlarm(1, "ana", "seen after the batch")).result(timeout=1.0)
    assert ack.accepted and ack.t_h == 0.25  # the last tick's time
    assert loop.snapshot().alarms.alarms[0].acked_by == "ana"
    mode = loop.submit_mode("hold", who="ana", why="too late").result(timeout=1.0)
    assert (
        not mode.accepted and mode.reason == "the run has ended (at 0.250 h); nothing was changed"
    )
    assert loop.snapshot().mode is Mode.AUTO
    assert of(historian.records, AuditRecord)[-2:] == [ack, mode]  # both recorded
