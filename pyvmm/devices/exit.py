"""The guest-requested exit device on port 0xf4, where QEMU's isa-debug-exit sits."""

from __future__ import annotations

from collections.abc import Callable


class DebugExit:
    """A write of value v ends the VM with exit code v (QEMU's isa-debug-exit exits with (v << 1) | 1)."""

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self.on_exit = on_exit

    def read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.on_exit(value & 0xFF)
