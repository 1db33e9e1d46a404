"""Typed operator commands: what the live API (or a test) asks the supervisor to do.

A command is a frozen value naming who asks and why. The loop queues it
(:meth:`bpcontrol.loop.ControlLoop.submit`), carries it out at its next tick through the
supervisor (:meth:`bpcontrol.supervisor.Supervisor.command`) and answers with the
:class:`bpcontrol.records.AuditRecord`, accepted or refused. A command's
:meth:`~SetMode.action` is the audit's ``action`` text (``"mode AUTO -> MANUAL"``,
``"setpoint F = 0.2"``), so the audit trail reads the same whoever sent it.

:class:`AcknowledgeAlarm` is carried out the same way, but by the loop's alarm book
(:mod:`bpcontrol.alarms`, which owns the alarms) instead of the supervisor (which owns
modes, setpoints and limits); its answer is an :class:`~bpcontrol.records.AuditRecord` too.

Commands are checked where they are carried out, not where they are built: an API may
hand over whatever a client sent (a mode name that does not exist, a value that is not a
number), and the supervisor refuses it with a reason; a malformed command never stops the
loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from bpcontrol.records import Mode

__all__ = [
    "AcknowledgeAlarm",
    "Command",
    "SetLimits",
    "SetMode",
    "SetSetpoint",
    "SupervisorCommand",
    "describe",
]


@dataclass(frozen=True)
class SetMode:
    """Switch the supervisor to ``mode``.

    Attributes:
        mode: the new mode, a :class:`Mode` or its value (``"manual"``); anything else is
            refused.
        who: the person or system asking (required, non-empty).
        why: their reason (required, non-empty).
    """

    mode: Mode | str
    who: str
    why: str

    def target(self) -> Mode | None:
        """The requested mode, or None when ``mode`` names none."""
        if isinstance(self.mode, Mode):
            return self.mode
        try:
            return Mode(self.mode)
        except (TypeError, ValueError):
            return None

    def action(self, current: Mode) -> str:
        """The audit text, e.g. ``"mode AUTO -> MANUAL"`` (from the ``current`` mode)."""
        target = self.target()
        return f"mode {current.name} -> {target.name if target else self.mode}"


@dataclass(frozen=True)
class SetSetpoint:
    """Set the MANUAL setpoint of one input (refused outside MANUAL or the limits).

    Attributes:
        name: the input (a model input name, e.g. ``"F"``).
        value: the setpoint in that input's unit (e.g. L/h for a feed).
        who: the person or system asking (required, non-empty).
        why: their reason (required, non-empty).
    """

    name: str
    value: float
    who: str
    why: str

    def action(self, current: Mode) -> str:
        """The audit text, e.g. ``"setpoint F = 0.2"`` (``current`` is not needed)."""
        return f"setpoint {self.name} = {self.value}"


@dataclass(frozen=True)
class SetLimits:
    """Change the limits of one input.

    Attributes:
        name: the input (a model input name).
        lower: lowest allowed setpoint (input unit).
        upper: highest allowed setpoint (input unit, ``>= lower``).
        rate_per_h: largest change per hour of process time (input unit per h, ``> 0``;
            ``inf`` for none).
        who: the person or system asking (required, non-empty).
        why: their reason (required, non-empty).
    """

    name: str
    lower: float
    upper: float
    rate_per_h: float
    who: str
    why: str

    def action(self, current: Mode) -> str:
        """The audit text, e.g. ``"limits F = [0.0, 0.3], rate 0.2/h"``."""
        return f"limits {self.name} = [{self.lower}, {self.upper}], rate {self.rate_per_h}/h"


@dataclass(frozen=True)
class AcknowledgeAlarm:
    """Acknowledge one alarm of the loop (refused for an unknown or acknowledged alarm).

    Attributes:
        alarm_id: the alarm's number in its loop (:attr:`bpcontrol.alarms.Alarm.id`: 1, 2,
            ... in the order the loop raised them).
        who: the person or system acknowledging (required, non-empty).
        why: their reason (required, non-empty).
        wall_utc: when it was asked, ISO-8601 UTC wall time, kept with the acknowledgement
            (the loop knows process time only; empty when the sender does not say).
    """

    alarm_id: int
    who: str
    why: str
    wall_utc: str = ""

    def action(self, current: Mode) -> str:
        """The audit text, e.g. ``"acknowledge alarm 3"`` (``current`` is not needed)."""
        return f"acknowledge alarm {self.alarm_id}"


SupervisorCommand = SetMode | SetSetpoint | SetLimits
"""The operator commands the supervisor carries out (modes, setpoints, limits)."""

Command = SetMode | SetSetpoint | SetLimits | AcknowledgeAlarm
"""Any operator command the loop carries out (:meth:`bpcontrol.loop.ControlLoop.submit`)."""


def describe(command: object, current: Mode) -> str:
    """The audit text of ``command``, whatever it is (never raises).

    For a command, its :meth:`~SetMode.action`; for anything else, a sentence naming its
    type, so that even a malformed submission leaves a readable audit record.
    """
    try:
        if isinstance(command, SetMode | SetSetpoint | SetLimits | AcknowledgeAlarm):
            return command.action(current)
        return f"unknown command ({type(command).__name__})"
    except Exception:  # a value whose formatting (or type check) raises
        return "unreadable command"
