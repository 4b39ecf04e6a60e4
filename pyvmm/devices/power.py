"""Power: the hardware-reduced ACPI sleep control register, whose S5 powers the machine off."""

from __future__ import annotations

from collections.abc import Callable

from ..arch.x86.acpi import is_poweroff


class SleepControl:
    """The hardware-reduced ACPI SLEEP_CONTROL_REG (and SLEEP_STATUS_REG after it): S5 powers off."""

    def __init__(self, on_poweroff: Callable[[], None]) -> None:
        self.on_poweroff = on_poweroff

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and is_poweroff(value & 0xFF):
            self.on_poweroff()
