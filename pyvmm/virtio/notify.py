"""QueueNotify, served in bounded rounds until the ring is drained: the notification half of the transport.

A notification arrives as a QueueNotify write (the vCPU thread, through write() or the register table)
or from the ioeventfd thread (queue_notify()).  The device's process_queue() does a bounded amount of
work per call; the transport calls it in rounds with its lock released in between, and what is left
after MAX_NOTIFY_ROUNDS is served on another thread, round by round.  A hook (a virtio breakpoint) may
hold a notification back until serve_held().  VirtioMmio (mmio.py) mixes this in; the state it reads is
the transport's, declared below for the type checker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ..errors import GuestMemoryError
from .abi import Reg, Status, TransportFeature
from .hooks import VirtioEvent, VirtioHook
from .names import status_names

if TYPE_CHECKING:
    from ..trace import Tracer
    from .device import VirtioDevice
    from .mmio import VirtioMmio
    from .queue import SplitQueue

# A device bounds the work of one process_queue call; a notification is served in rounds of such calls
# with the lock released in between (so the monitor waits one round at most), this many on the thread
# that notified.  What is left after them is served on another thread, round by round, until the ring
# is drained: with VIRTIO_F_EVENT_IDX the driver will not notify again for buffers it already made
# available (spec "Driver notifications"), so waiting for its next notification could wait forever.
MAX_NOTIFY_ROUNDS = 64

_NOTIFY = int(Reg.QueueNotify)
_D = int(Status.DRIVER)
_NEEDS_RESET = int(Status.DEVICE_NEEDS_RESET)
_FAILED = int(Status.FAILED)
_NOTIFICATION_DATA = int(TransportFeature.VIRTIO_F_NOTIFICATION_DATA)


def on_a_thread(work: Callable[[], None]) -> None:
    """The default way to continue a queue's work: a short-lived daemon thread."""
    threading.Thread(target=work, name="virtio-continue", daemon=True).start()


class QueueNotifications:
    """The QueueNotify half of VirtioMmio."""

    # The transport's state this half uses (VirtioMmio sets all of it in __init__).
    lock: threading.RLock
    device: VirtioDevice
    queues: list[SplitQueue]
    notify_counts: list[int]
    version: int
    status: int
    activated: bool
    driver_features: int
    hook: VirtioHook | None
    _held: list[int]
    _deferred: set[int]
    _defer: Callable[[Callable[[], None]], None]
    _tracer: Tracer

    if TYPE_CHECKING:      # VirtioMmio's, used here
        @property
        def live(self) -> bool: ...
        @property
        def active_queue_names(self) -> list[str]: ...
        def guest_error(self, what: str, *, fatal: bool = False) -> None: ...
        def trace_event(self, what: str, value: int, meaning: str = "") -> None: ...
        def run_device(self, action: Callable[..., object], *args: object, default: object = None) -> object: ...
        def _activate(self) -> None: ...
        def _trace_register(self, direction: str, offset: int, value: int, note: str = "") -> None: ...

    def queue_notify(self, index: int) -> None:
        """A QueueNotify that did not go through write(): the ioeventfd thread's entry point."""
        self._serve_notify(index, "[ioeventfd]")

    def _serve_notify(self, value: int, note: str) -> None:
        """A QueueNotify write, served in rounds of bounded device work with the lock released between."""
        with self.lock:
            if self._tracer.virtio:
                self._trace_register("write", Reg.QueueNotify, value, note=note)
            index = self._notify_index(value)
            if index is None:
                return
            if index < len(self.notify_counts):
                self.notify_counts[index] += 1
            event = VirtioEvent("notify", _NOTIFY, value, queue=index, note=note)
            if self.hook is not None and self.hook(cast("VirtioMmio", self), event):
                self._held.append(index)
                return
            if not self._notify(index):
                return
        self._serve_rounds(index, MAX_NOTIFY_ROUNDS - 1)

    @property
    def held_notifies(self) -> tuple[int, ...]:
        """The queues whose QueueNotify a hook holds back, in order."""
        return tuple(self._held)

    def serve_held(self) -> None:
        """Serve the notifications a hook held back (a virtio breakpoint stopped the machine at one),
        as an ioeventfd thread would have served them: once the vCPUs run again."""
        with self.lock:
            held, self._held = self._held, []
        for index in dict.fromkeys(held):      # one notification per queue is as good as several
            with self.lock:
                more = self._notify(index)
            if more:
                self._serve_rounds(index, MAX_NOTIFY_ROUNDS - 1)

    def _serve_rounds(self, index: int, rounds: int) -> None:
        for _ in range(rounds):
            with self.lock:
                if not self._notify(index):
                    return
        self._continue_later(index)

    def _continue_later(self, index: int) -> None:
        """Buffers remain after this notification's rounds: serve them on another thread (as QEMU's and
        Firecracker's devices go on until the ring is drained), once per queue at a time."""
        with self.lock:
            if index in self._deferred:
                return
            self._deferred.add(index)

        def resume() -> None:
            with self.lock:
                self._deferred.discard(index)
            self._serve_rounds(index, MAX_NOTIFY_ROUNDS)

        if self._tracer.virtio:
            self.trace_event("QueueNotify", index, f"more buffers than {MAX_NOTIFY_ROUNDS} rounds: continued")
        self._defer(resume)

    def serve_queue(self, index: int) -> None:
        """Serve queue index now, as a notification would, without one (a device's timer: the rate limit
        of virtio-rng); nothing unless the device is live and the queue enabled."""
        with self.lock:
            if not self.live or index >= len(self.active_queue_names) or not self.queues[index].ready:
                return
            if not self._process(index):
                return
        self._serve_rounds(index, MAX_NOTIFY_ROUNDS - 1)

    # --- notifications -------------------------------------------------------------------------------

    def _notify_index(self, value: int) -> int | None:
        """The queue index a QueueNotify value names, or None (and a guest error) if it names none.

        Spec "MMIO Device Register Layout", QueueNotify: without VIRTIO_F_NOTIFICATION_DATA the value
        is the queue index alone; only with it do bits 16..31 carry the next available offset.  So
        0x10000 is not queue 0 with some noise, it is a value no driver may write.
        """
        if value > 0xFFFF and not self.driver_features & _NOTIFICATION_DATA:
            self.guest_error(f"QueueNotify <- {value:#x}: bits above 15 set without "
                             "VIRTIO_F_NOTIFICATION_DATA; no queue notified")
            return None
        return value & 0xFFFF

    def _notify(self, index: int) -> bool:
        """One round of the device's work on queue index; True if it made progress and buffers remain."""
        if not self.activated and self.version == 1 and self.status & (_D | _FAILED | _NEEDS_RESET) == _D:
            # Spec "Legacy Interface: Device Initialization": a transitional device must tolerate a
            # driver that uses the device before DRIVER_OK (older Linux balloon drivers fill and kick
            # the stats queue in init_vqs, before virtio_device_ready): the legacy device is activated
            # by that first use.
            self._activate()
        if not self.live:
            # Spec "Device Initialization": a modern device uses no buffer before DRIVER_OK; buffers a
            # driver kicked before it are served at DRIVER_OK.
            if self._tracer.virtio:
                self.trace_event("QueueNotify", index, f"deferred: status is {status_names(self.status)}")
            return False
        if index >= len(self.active_queue_names) or not self.queues[index].ready:
            self.guest_error(f"QueueNotify <- {index}: no such queue is enabled")
            return False
        return self._process(index)

    def _process(self, index: int) -> bool:
        """process_queue(index) once; True if it took buffers and more are available."""
        q = self.queues[index]
        before = q.last_avail
        self.run_device(self.device.process_queue, index)
        if not self.live or not q.ready or q.last_avail == before:
            return False
        try:
            return q.has_available()
        except GuestMemoryError:
            return False

    def notify_register(self, value: int) -> None:
        """QueueNotify through the register table (write() serves it itself, in rounds)."""
        index = self._notify_index(value)
        if index is not None:
            if index < len(self.notify_counts):
                self.notify_counts[index] += 1
            self._notify(index)
