"""Interrupt lines from devices to the guest: the IrqLine protocol and its implementations."""

from __future__ import annotations

from typing import Protocol


class IrqLine(Protocol):
    """A level-triggered interrupt line into the guest's interrupt controller.

    Devices call ``set_level(True)`` whenever an interrupt event happens (also when the line is
    already high, so that an edge-programmed IOAPIC pin still sees each event) and
    ``set_level(False)`` when the condition clears.
    """

    def set_level(self, level: bool) -> None: ...


class RecordingIrqLine:
    """An IrqLine for tests: remembers the current level and every change."""

    def __init__(self) -> None:
        self.level = False
        self.history: list[bool] = []

    def set_level(self, level: bool) -> None:
        self.level = bool(level)
        self.history.append(self.level)

    @property
    def raised(self) -> int:
        return sum(1 for x in self.history if x)
