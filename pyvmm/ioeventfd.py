"""QueueNotify through KVM_IOEVENTFD: an eventfd per queue index, served by the event loop, and removable.

With the eventfds assigned a QueueNotify write never returns to the vCPU thread: KVM signals the
eventfd and the event loop calls ``VirtioMmio.queue_notify(i)``.  A virtio breakpoint on QueueNotify
needs the write to exit (so the vCPU can stop right after it): ``deassign()`` takes the eventfds out of
KVM while such a breakpoint is set, ``assign()`` puts them back.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING

from .errors import PyvmmError

if TYPE_CHECKING:
    from .eventloop import EventLoop
    from .kvm.vmfd import VmFd
    from .virtio.mmio import VirtioMmio

log = logging.getLogger("pyvmm")


class NotifyEventfds:
    """The ioeventfds of one virtio-mmio transport's QueueNotify register (datamatch = queue index)."""

    def __init__(self, vm: VmFd, transport: VirtioMmio, event_loop: EventLoop) -> None:
        self.vm = vm
        self.transport = transport
        self.addr = transport.base + transport.QUEUE_NOTIFY_OFFSET
        self.fds: list[int] = []
        self.assigned = False
        for index in range(len(transport.queues)):
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self.fds.append(efd)
            event_loop.add(efd, functools.partial(self._serve, efd, index))

    def _serve(self, efd: int, index: int) -> None:
        try:
            os.eventfd_read(efd)
        except BlockingIOError:
            return
        self.transport.queue_notify(index)

    def assign(self) -> bool:
        """Hand the eventfds to KVM; False if this host refuses (the exit path then serves notifies)."""
        if self.assigned:
            return True
        done = []
        try:
            for index, efd in enumerate(self.fds):
                self.vm.ioeventfd(efd, self.addr, 4, datamatch=index)
                done.append(index)
        except PyvmmError as e:
            log.info("ioeventfd for %s refused (%s): QueueNotify exits to the vCPU thread", self.transport.name, e)
            for index in done:
                self._deassign_one(index)
            return False
        self.assigned = True
        return True

    def deassign(self) -> None:
        """Take the eventfds out of KVM: QueueNotify writes exit to the vCPU thread again."""
        if not self.assigned:
            return
        for index in range(len(self.fds)):
            self._deassign_one(index)
        self.assigned = False
        # A notify KVM signalled just before is still in its eventfd: the event loop serves it.

    def _deassign_one(self, index: int) -> None:
        try:
            self.vm.ioeventfd(self.fds[index], self.addr, 4, datamatch=index, deassign=True)
        except PyvmmError as e:
            log.warning("cannot deassign the ioeventfd of %s queue %d: %s", self.transport.name, index, e)

    def close(self) -> None:
        for efd in self.fds:
            try:
                os.close(efd)
            except OSError:
                pass
        self.fds = []
