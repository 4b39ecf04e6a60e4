"""Interrupt lines from devices to the guest: the IrqLine protocol and its implementations."""

from __future__ import annotations

from collections.abc import Callable
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


class KvmIrqLine:
    """A GSI of the in-kernel IOAPIC driven with KVM_IRQ_LINE.

    The line is level-triggered as virtio-mmio asks; a new event while the line is already high
    lowers and raises it again, so that a pin the guest programmed edge-triggered still sees it.
    """

    def __init__(self, vm, gsi: int) -> None:
        self.vm = vm
        self.gsi = gsi
        self.level = False
        self.raised = 0           # interrupts raised (the monitor's `info irq`)

    def set_level(self, level: bool) -> None:
        if level and self.level:
            self.vm.irq_line(self.gsi, 0)
        if level or self.level:
            self.vm.irq_line(self.gsi, 1 if level else 0)
        if level:
            self.raised += 1
        self.level = bool(level)


class IrqfdLine:
    """A GSI driven through KVM_IRQFD with a resample eventfd: raising is one eventfd write, and the
    kernel lowers the line at the guest's EOI; if the device still has an interrupt pending then
    (``pending()``), the event loop raises it again."""

    def __init__(self, vm, gsi: int, pending: Callable[[], bool] = lambda: False) -> None:
        import os

        self.vm = vm
        self.gsi = gsi
        self.pending = pending
        self.efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.resample_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        vm.irqfd(self.efd, gsi, resamplefd=self.resample_fd)
        self._write = os.eventfd_write
        self.raised = 0

    def set_level(self, level: bool) -> None:
        if level:
            self.raised += 1
            self._write(self.efd, 1)

    def close(self) -> None:
        import os

        for fd in (self.efd, self.resample_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def on_resample(self) -> None:
        import os

        try:
            os.eventfd_read(self.resample_fd)
        except BlockingIOError:
            return
        if self.pending():
            self._write(self.efd, 1)
