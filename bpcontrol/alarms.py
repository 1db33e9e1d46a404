"""Alarms: the events an operator must acknowledge, and who acknowledged them.

The loop (:class:`bpcontrol.loop.ControlLoop`) owns one :class:`AlarmBook`: every event it
writes whose kind is in :data:`ALARM_KINDS` raises an alarm, numbered 1, 2, ... in the
order raised, and an operator's :class:`bpcontrol.commands.AcknowledgeAlarm` is carried out
at the loop's next tick like any other operator command, answered with its
:class:`AuditRecord`. An alarm is acknowledged once; an acknowledgement is never undone and
an alarm never removed, so an alarm id, once given, always names the same alarm.

Like :class:`bpcontrol.supervisor.SupervisorState`, the book is a frozen value replaced by
pure functions (:meth:`AlarmBook.raised`, :meth:`AlarmBook.acknowledge`), so another thread
(the live API) reads a consistent book from the loop's snapshot without a lock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Final

from bpcontrol.commands import AcknowledgeAlarm, describe
from bpcontrol.records import AuditRecord, EventKind, EventRecord, Mode, storable_text

__all__ = ["ALARM_KINDS", "Alarm", "AlarmBook"]

ALARM_KINDS: Final = frozenset(
    {
        EventKind.FALLBACK,
        EventKind.FALLBACK_RECIPE_INVALID,
        EventKind.STOPPED,
        EventKind.PLANT_READ_FAILED,
        EventKind.SETPOINT_WRITE_FAILED,
        EventKind.SETPOINT_NOT_HELD,
        EventKind.ESTIMATOR_FAILED,
        EventKind.ESTIMATOR_RESET,
        EventKind.ESTIMATE_INCONSISTENT,
        EventKind.INTERLOCK,
    }
)
"""Event kinds an operator must acknowledge: the loop left AUTO, could not read or write the
plant, the estimator failed or lost consistency, or an interlock tripped or released."""


@dataclass(frozen=True)
class Alarm:
    """One alarm: the event that raised it and its acknowledgement (empty until then).

    Attributes:
        id: its number in the loop (1, 2, ... in the order raised).
        event: the event that raised it (as the loop wrote it, with the run's identity).
        acked_by: who acknowledged it ("" until then).
        acked_why: their reason.
        acked_t_h: process time (h) of the tick that carried out the acknowledgement.
        acked_utc: the wall time the acknowledgement was asked (ISO-8601 UTC; "" when the
            sender did not say).
    """

    id: int
    event: EventRecord
    acked_by: str = ""
    acked_why: str = ""
    acked_t_h: float | None = None
    acked_utc: str = ""

    @property
    def acknowledged(self) -> bool:
        """Whether an operator acknowledged it."""
        return bool(self.acked_by)


@dataclass(frozen=True)
class AlarmBook:
    """Every alarm of one loop, in the order raised (``alarms[k]`` has id ``k + 1``)."""

    alarms: tuple[Alarm, ...] = ()

    def raised(self, event: EventRecord) -> AlarmBook:
        """The book with ``event`` added as the next alarm when its kind is an alarm
        kind; this book itself otherwise."""
        if event.kind not in ALARM_KINDS:
            return self
        return AlarmBook((*self.alarms, Alarm(len(self.alarms) + 1, event)))

    def get(self, alarm_id: object) -> Alarm | None:
        """The alarm numbered ``alarm_id``, or None when there is none."""
        if isinstance(alarm_id, bool) or not isinstance(alarm_id, int):
            return None
        return self.alarms[alarm_id - 1] if 1 <= alarm_id <= len(self.alarms) else None

    def unacknowledged(self) -> tuple[Alarm, ...]:
        """The alarms nobody acknowledged yet, oldest first."""
        return tuple(a for a in self.alarms if not a.acknowledged)

    def acknowledge(
        self, command: AcknowledgeAlarm, *, t_h: float
    ) -> tuple[AuditRecord, AlarmBook]:
        """Carry out ``command`` at process time ``t_h`` (h): the audit record and the next
        book. Refused (this book returned unchanged, the reason in the audit) without a
        ``who`` or ``why``, for an alarm id that names no alarm, and for an alarm
        acknowledged already. Never raises, whatever ``command`` holds."""
        action = storable_text(describe(command, Mode.AUTO))
        who, why = getattr(command, "who", ""), getattr(command, "why", "")
        wall = getattr(command, "wall_utc", "")
        alarm = self.get(getattr(command, "alarm_id", None))
        ok_time = isinstance(t_h, int | float) and math.isfinite(t_h)
        t = float(t_h) if ok_time else 0.0

        def refuse(reason: str, old: str = "") -> tuple[AuditRecord, AlarmBook]:
            audit = AuditRecord(
                t,
                storable_text(who),
                storable_text(why),
                action,
                False,
                storable_text(reason),
                old_value=old,
            )
            return audit, self

        if not (isinstance(who, str) and who.strip()):
            return refuse("who is required (the person or system acknowledging)")
        if not (isinstance(why, str) and why.strip()):
            return refuse("why is required (the reason for acknowledging)")
        if not ok_time:
            return refuse(f"t_h must be a finite process time in hours, got {t_h}")
        if alarm is None:
            known = f"alarms are 1..{len(self.alarms)}" if self.alarms else "there is no alarm yet"
            return refuse(f"no alarm {getattr(command, 'alarm_id', None)!r}; {known}")
        if alarm.acknowledged:
            when = f"{alarm.acked_t_h:.3f} h" if alarm.acked_t_h is not None else "?"
            reason = f"alarm {alarm.id} was acknowledged by {alarm.acked_by} at {when} already"
            return refuse(reason, f"acknowledged by {alarm.acked_by}")
        done = replace(
            alarm,
            acked_by=who,
            acked_why=why,
            acked_t_h=t,
            acked_utc=wall if isinstance(wall, str) else "",
        )
        alarms = (*self.alarms[: alarm.id - 1], done, *self.alarms[alarm.id :])
        audit = AuditRecord(
            t,
            storable_text(who),
            storable_text(why),
            action,
            True,
            old_value="unacknowledged",
            new_value=f"acknowledged ({alarm.event.kind.value})",
        )
        return audit, AlarmBook(alarms)
