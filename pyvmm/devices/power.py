"""Power and reset: the ACPI sleep control register (power-off) and the i8042's reset line."""

from __future__ import annotations

from collections.abc import Callable

from ..arch.x86.acpi import RESET_VALUE, is_poweroff


class SleepControl:
    """The hardware-reduced ACPI SLEEP_CONTROL_REG (and SLEEP_STATUS_REG after it): S5 powers off."""

    def __init__(self, on_poweroff: Callable[[], None]) -> None:
        self.on_poweroff = on_poweroff

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and is_poweroff(value & 0xFF):
            self.on_poweroff()


class I8042:
    """Just enough of the PC keyboard controller for a guest to reboot: command 0xFE on port 0x64
    pulses the CPU reset line.  No keyboard: the status register reads 0 (nothing to read, input
    buffer empty), so a driver's probe finds no device and carries on."""

    DATA = 0
    COMMAND = 4

    def __init__(self, on_reset: Callable[[], None]) -> None:
        self.on_reset = on_reset

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == self.COMMAND and value & 0xFF == RESET_VALUE:
            self.on_reset()
