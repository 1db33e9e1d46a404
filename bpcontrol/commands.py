"""Typed operator commands: what the live API (or a test) asks the supervisor to do.

A command is a frozen value naming who asks and why. The loop queues it
(:meth:`bpcontrol.loop.ControlLoop.submit`), carries it out at its next tick through the
supervisor (:meth:`bpcontrol.supervisor.Supervisor.command`) and answers with the
:class:`bpcontrol.records.AuditRecord`, accepted or refused. A command's
:meth:`~SetMode.action` is the audit's ``action`` text (``"mode AUTO -> MANUAL"``,
``"setpoint F = 0.2"``), so the audit trail reads the same whoever sent it.

Commands are checked where they are carried out, not where they are built: an API may
hand over whatever a client sent (a mode name that does not exist, a value that is not a
number), and the supervisor refuses it with a reason; a malformed command never stops the
loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from bpcontrol.records import Mode

__all__ = ["Command", "SetLimits", "SetMode", "SetSetpoint", "describe"]


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


Command = SetMode | SetSetpoint | SetLimits
"""Any operator command the supervisor carries out."""


def describe(command: object, current: Mode) -> str:
    """The audit text of ``command``, whatever it is (never raises).

    For a command, its :meth:`~SetMode.action`; for anything else, a sentence naming its
    type, so that even a malformed submission leaves a readable audit record.
    """
    try:
        if isinstance(command, SetMode | SetSetpoint | SetLimits):
            return command.action(current)
        return f"unknown command ({type(command).__name__})"
    except Exception:  # a value whose formatting (or type check) raises
        return "unreadable command"
