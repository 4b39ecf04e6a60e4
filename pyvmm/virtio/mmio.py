"""The virtio-mmio transport (spec "Virtio Over MMIO"), version 2 and legacy version 1, as a bus device.

Guest accesses arrive as ``read(offset, size)`` / ``write(offset, size, value)`` from the vCPU exit
path, and ``queue_notify(index)`` from the ioeventfd thread.  One re-entrant lock serialises them with
each other and with the device's control API (the monitor thread).  A guest that breaks the rules
gets a rate-limited line on the "pyvmm.guest" logger and, if the device cannot go on,
DEVICE_NEEDS_RESET; nothing a guest writes raises out of here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..errors import GuestMemoryError
from ..guestlog import GuestErrorLog
from ..irq import IrqLine
from ..memory import GuestMemory
from ..trace import Tracer
from .abi import (
    VIRTIO_MMIO_CONFIG,
    VIRTIO_MMIO_MAGIC_VALUE,
    InterruptBit,
    Reg,
    Status,
    TransportFeature,
    VirtioDeviceID,
    flag_names,
    legacy_ring_layout,
)
from .device import VirtioDevice
from .queue import SplitQueue, VirtqueueError


_A = Status.ACKNOWLEDGE
_D = Status.DRIVER
_FOK = Status.FEATURES_OK
_DOK = Status.DRIVER_OK
_NEEDS_RESET = int(Status.DEVICE_NEEDS_RESET)
_FAILED = int(Status.FAILED)

# Spec "Device Initialization": the only forward steps a driver may take.  Writing 0 (reset) and
# ORing in FAILED are allowed from anywhere and handled apart; anything else is refused and logged,
# as Firecracker does.  Rewriting the current value is a no-op.
STATUS_TRANSITIONS_V2: frozenset[tuple[int, int]] = frozenset({
    (0, _A),
    (_A, _A | _D),
    (_A | _D, _A | _D | _FOK),
    (_A | _D | _FOK, _A | _D | _FOK | _DOK),
})
# Spec "Legacy Interface: Device Initialization": no FEATURES_OK step.
STATUS_TRANSITIONS_V1: frozenset[tuple[int, int]] = frozenset({
    (0, _A),
    (_A, _A | _D),
    (_A | _D, _A | _D | _DOK),
})

_USED = int(InterruptBit.USED_BUFFER)
_CONFIG = int(InterruptBit.CONFIG_CHANGE)
_VERSION_1 = int(TransportFeature.VIRTIO_F_VERSION_1)
_EVENT_IDX = int(TransportFeature.VIRTIO_F_EVENT_IDX)
_INDIRECT = int(TransportFeature.VIRTIO_F_INDIRECT_DESC)
_NOTIFICATION_DATA = int(TransportFeature.VIRTIO_F_NOTIFICATION_DATA)
_QUEUE_REGS = frozenset({
    Reg.QueueSizeMax, Reg.QueueSize, Reg.QueueReady, Reg.QueueAlign, Reg.QueuePFN,
    Reg.QueueDescLow, Reg.QueueDescHigh, Reg.QueueDriverLow, Reg.QueueDriverHigh,
    Reg.QueueDeviceLow, Reg.QueueDeviceHigh,
})
VENDOR_ID = int.from_bytes(b"pyvm", "little")
# A device bounds the work of one process_queue call; a notification is served in rounds of such calls
# with the lock released in between (so the monitor waits one round at most), up to this many.  What a
# guest that keeps refilling the ring leaves after that is served on its next notification.
MAX_NOTIFY_ROUNDS = 64


class VirtioMmio:
    """One virtio-mmio window with a virtio device behind it."""

    QUEUE_NOTIFY_OFFSET = int(Reg.QueueNotify)
    WINDOW_SIZE = 0x200
    CONFIG_SIZE = WINDOW_SIZE - VIRTIO_MMIO_CONFIG

    def __init__(
        self,
        device: VirtioDevice,
        mem: GuestMemory,
        irq: IrqLine,
        version: int = 2,
        name: str = "virtio0",
        tracer: Tracer | None = None,
        transport_features: int | None = None,
    ) -> None:
        if version not in (1, 2):
            raise ValueError(f"virtio-mmio version must be 1 (legacy) or 2, not {version}")
        self.device = device
        self.mem = mem
        self.irq = irq
        self.version = version
        self.name = name
        self._tracer = tracer if tracer is not None else Tracer.off()
        self.lock = threading.RLock()
        self.guest_errors = 0
        self._log = GuestErrorLog(name)
        # Ring features are offered because the balloon's reporting queue uses multi-element
        # buffers (Linux then uses indirect tables) and event-idx saves interrupts.
        if transport_features is None:
            transport_features = _INDIRECT | _EVENT_IDX
        if version == 2:
            transport_features |= _VERSION_1  # "A device MUST offer VIRTIO_F_VERSION_1"
        else:
            transport_features &= ~_VERSION_1
        self.offered = device.device_features() | transport_features
        nqueues = len(device.queue_names(self.offered))
        self.queues = [SplitQueue(mem, i, device.queue_max_size) for i in range(nqueues)]
        self._queue_align = [4096] * nqueues   # legacy QueueAlign, per queue
        self.guest_page_size = 4096            # legacy GuestPageSize: Linux writes it once at probe
        self.config_generation = 0
        self.status = 0
        self.interrupt_status = 0
        self._reset_registers()
        self._rd, self._wr = self._dispatch_tables()
        self._transitions = STATUS_TRANSITIONS_V2 if version == 2 else STATUS_TRANSITIONS_V1
        self._config_fields = {off + i: (name, off, size)
                               for off, size, name in device.config_fields() for i in range(size)}
        device.attach(self)

    # --- the bus interface ---------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A guest read of size bytes at offset in the window; never raises on guest input."""
        if offset >= VIRTIO_MMIO_CONFIG:
            return self._config_read(offset, size)
        if size != 4 or offset & 3 or offset < 0:
            self._bad_access(offset, size, "read")
            return 0
        handler = self._rd[offset >> 2]
        if handler is None:
            self._bad_access(offset, size, "read")
            return 0
        with self.lock:
            value = handler()
            if self._tracer.virtio:
                self._trace_register("read", offset, value)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write of size bytes at offset in the window; never raises on guest input."""
        if offset >= VIRTIO_MMIO_CONFIG:
            self._config_write(offset, size, value)
            return
        if size != 4 or offset & 3 or offset < 0:
            self._bad_access(offset, size, "write")
            return
        if offset == _NOTIFY:
            self._serve_notify(value & 0xFFFF_FFFF, "")
            return
        handler = self._wr[offset >> 2]
        if handler is None:
            self._bad_access(offset, size, "write")
            return
        value &= 0xFFFF_FFFF
        with self.lock:
            if self._tracer.virtio:
                self._trace_register("write", offset, value)
            handler(value)

    def queue_notify(self, index: int) -> None:
        """A QueueNotify that did not go through write(): the ioeventfd thread's entry point."""
        self._serve_notify(index, "[ioeventfd]")

    def _serve_notify(self, value: int, note: str) -> None:
        """A QueueNotify write, served in rounds of bounded device work with the lock released between."""
        with self.lock:
            if self._tracer.virtio:
                self._trace_register("write", Reg.QueueNotify, value, note=note)
            index = self._notify_index(value)
            if index is None or not self._notify(index):
                return
        for _ in range(MAX_NOTIFY_ROUNDS - 1):
            with self.lock:
                if not self._notify(index):
                    return

    # --- the Transport interface, for the device -----------------------------------------------------

    @property
    def live(self) -> bool:
        return self.status & (_DOK | _NEEDS_RESET | _FAILED) == _DOK

    @property
    def tracing(self) -> bool:
        return self._tracer.virtio

    def signal_used_queue(self, index: int) -> None:
        """Spec "Notifications From The Device": set InterruptStatus bit 0 unless the driver suppressed it."""
        if not self.live:
            return
        if not self.queues[index].should_notify():
            if self._tracer.virtio:
                self.trace_event("Interrupt", self.interrupt_status,
                                 f"suppressed by the driver ({self._queue_name(index)})")
            return
        self._raise(_USED, self._queue_name(index))

    def signal_config_change(self) -> None:
        """The config changed: a new ConfigGeneration and, once the driver is up, a config interrupt."""
        self.config_generation = (self.config_generation + 1) & 0xFFFF_FFFF
        if self.status & _DOK and not self.status & _FAILED:
            self._raise(_CONFIG, "config change")

    def guest_error(self, what: str, *, fatal: bool = False) -> None:
        self.guest_errors += 1
        self._log(what)
        if self._tracer.virtio:
            self.trace_event("GuestError", self.status, what)
        if fatal:
            self._needs_reset()

    def trace_event(self, what: str, value: int, meaning: str = "") -> None:
        if self._tracer.virtio:
            self._tracer.access(self.name, "event", what, value, meaning)

    # --- internals: interrupts, reset, errors ----------------------------------------------------------

    def _raise(self, bit: int, why: str) -> None:
        self.interrupt_status |= bit
        if self._tracer.virtio:
            self._tracer.access(self.name, "event", "Interrupt", self.interrupt_status,
                                f"{flag_names(InterruptBit, bit)} raised ({why})",
                                shown=f"{self.interrupt_status:#x}")
        # Level = InterruptStatus != 0; set_level(True) on every event so that an edge sees each one.
        self.irq.set_level(True)

    def _needs_reset(self) -> None:
        """Spec "Device Status Field": DEVICE_NEEDS_RESET, and a config interrupt if DRIVER_OK is set."""
        if self.status & _NEEDS_RESET:
            return
        self.status |= _NEEDS_RESET
        if self.status & _DOK:
            self._raise(_CONFIG, "device needs reset")

    def _reset_registers(self) -> None:
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.shm_sel = 0

    def _reset(self) -> None:
        """Spec "Device Reset": status 0, no interrupts, every queue not ready (legacy: QueuePFN 0)."""
        self.status = 0
        self._reset_registers()
        for q in self.queues:
            q.reset()
        self._queue_align = [4096] * len(self.queues)
        if self.interrupt_status:
            self.interrupt_status = 0
            self.irq.set_level(False)
        self.device.reset()

    def _bad_access(self, offset: int, size: int, direction: str) -> None:
        name = _REG_NAMES.get(offset & ~3, f"offset {offset:#x}")
        if offset >= self.WINDOW_SIZE or offset < 0:
            what = f"{direction} of {size} bytes at {offset:#x}, outside the {self.WINDOW_SIZE:#x} window"
        elif size != 4:
            what = f"{size}-byte {direction} of {name}: registers are 32 bits wide"
        elif offset & 3:
            what = f"unaligned {direction} at {offset:#x} ({name})"
        elif offset in _REG_NAMES and self._known(offset):
            what = f"{direction} of {'write-only' if direction == 'read' else 'read-only'} register {name}"
        else:
            what = f"{direction} of {name}, which is not a version {self.version} register"
        with self.lock:
            self.guest_error(what)

    def _known(self, offset: int) -> bool:
        return self._rd[offset >> 2] is not None or self._wr[offset >> 2] is not None

    def _run_device(self, action: Callable[..., None], *args: int) -> None:
        """Run device code that reads guest rings: a broken ring is the device's error, not the VMM's."""
        try:
            action(*args)
        except (VirtqueueError, GuestMemoryError) as e:
            where = f"{self._queue_name(args[0])}: " if args else ""
            self.guest_error(f"{where}{e}", fatal=True)

    # --- register handlers --------------------------------------------------------------------------

    def _dispatch_tables(self) -> tuple[list[Callable[[], int] | None], list[Callable[[int], None] | None]]:
        rd: dict[int, Callable[[], int]] = {
            Reg.MagicValue: lambda: VIRTIO_MMIO_MAGIC_VALUE,
            Reg.Version: lambda: self.version,
            Reg.DeviceID: lambda: self.device.device_id,
            Reg.VendorID: lambda: VENDOR_ID,
            Reg.DeviceFeatures: self._r_device_features,
            Reg.QueueSizeMax: self._r_queue_size_max,
            Reg.InterruptStatus: lambda: self.interrupt_status,
            Reg.Status: lambda: self.status,
        }
        wr: dict[int, Callable[[int], None]] = {
            Reg.DeviceFeaturesSel: self._w_device_features_sel,
            Reg.DriverFeatures: self._w_driver_features,
            Reg.DriverFeaturesSel: self._w_driver_features_sel,
            Reg.QueueSel: self._w_queue_sel,
            Reg.QueueSize: self._w_queue_size,
            Reg.QueueNotify: self._w_queue_notify,
            Reg.InterruptACK: self._w_interrupt_ack,
            Reg.Status: self._w_status,
        }
        if self.version == 2:
            rd.update({
                Reg.QueueReady: self._r_queue_ready,
                Reg.SHMLenLow: lambda: 0xFFFF_FFFF,    # "-1 if the region doesn't exist"
                Reg.SHMLenHigh: lambda: 0xFFFF_FFFF,
                Reg.SHMBaseLow: lambda: 0xFFFF_FFFF,
                Reg.SHMBaseHigh: lambda: 0xFFFF_FFFF,
                Reg.QueueReset: lambda: 0,
                Reg.ConfigGeneration: lambda: self.config_generation,
            })
            wr.update({
                Reg.QueueReady: self._w_queue_ready,
                Reg.QueueDescLow: lambda v: self._w_queue_addr("desc", 0, v),
                Reg.QueueDescHigh: lambda v: self._w_queue_addr("desc", 32, v),
                Reg.QueueDriverLow: lambda v: self._w_queue_addr("avail", 0, v),
                Reg.QueueDriverHigh: lambda v: self._w_queue_addr("avail", 32, v),
                Reg.QueueDeviceLow: lambda v: self._w_queue_addr("used", 0, v),
                Reg.QueueDeviceHigh: lambda v: self._w_queue_addr("used", 32, v),
                Reg.SHMSel: self._w_shm_sel,
                Reg.QueueReset: self._w_queue_reset,
            })
        else:
            rd[Reg.QueuePFN] = self._r_queue_pfn
            wr.update({
                Reg.GuestPageSize: self._w_guest_page_size,
                Reg.QueueAlign: self._w_queue_align,
                Reg.QueuePFN: self._w_queue_pfn,
            })
        rtab: list[Callable[[], int] | None] = [None] * (VIRTIO_MMIO_CONFIG // 4)
        wtab: list[Callable[[int], None] | None] = [None] * (VIRTIO_MMIO_CONFIG // 4)
        for off, fn in rd.items():
            rtab[off >> 2] = fn
        for off, fn in wr.items():
            wtab[off >> 2] = fn
        return rtab, wtab

    def _r_device_features(self) -> int:
        sel = self.device_features_sel
        return (self.offered >> (32 * sel)) & 0xFFFF_FFFF if sel < 2 else 0

    def _w_device_features_sel(self, value: int) -> None:
        self.device_features_sel = value

    def _w_driver_features_sel(self, value: int) -> None:
        self.driver_features_sel = value

    def _w_driver_features(self, value: int) -> None:
        # Spec "Device Initialization" step 4; Firecracker likewise takes features only in DRIVER.
        if self.status & (_D | _FOK | _DOK) != _D:
            self.guest_error(f"DriverFeatures written in status {flag_names(Status, self.status)}, "
                             "not in the DRIVER state")
            return
        sel = self.driver_features_sel
        if sel >= 2:
            if value:
                self.guest_error(f"DriverFeatures[{sel}] <- {value:#x}: no such feature bits offered")
            return
        shift = 32 * sel
        if self.version == 1:
            # Spec "Legacy Interface: Device Initialization" has no FEATURES_OK step, so nothing else
            # would refuse bits the device never offered (PAGE_REPORTING when off, VERSION_1):
            # they are dropped here, as if the driver had not written them.
            offered = (self.offered >> shift) & 0xFFFF_FFFF
            extra = value & ~offered
            if extra:
                self.guest_error(f"DriverFeatures[{sel}] <- {value:#x} accepts bits never offered "
                                 f"{extra:#x}: ignored")
                value &= offered
        self.driver_features = (self.driver_features & ~(0xFFFF_FFFF << shift)) | (value << shift)

    def _w_guest_page_size(self, value: int) -> None:
        if value == 0 or value & (value - 1):
            self.guest_error(f"GuestPageSize {value} is not a power of 2")
            return
        self.guest_page_size = value

    def _w_queue_sel(self, value: int) -> None:
        self.queue_sel = value

    def _selected(self) -> SplitQueue | None:
        """The selected queue, if it exists for the features the driver accepted so far."""
        sel = self.queue_sel
        if sel < len(self.queues) and sel < len(self.device.queue_names(self.driver_features)):
            return self.queues[sel]
        return None

    def _queue_for_setup(self, reg: str) -> SplitQueue | None:
        """The selected queue if its set-up registers may be written now, else a guest error and None."""
        q = self._selected()
        if q is None:
            self.guest_error(f"{reg} written for queue {self.queue_sel}, which does not exist")
            return None
        if self.status & _DOK:
            self.guest_error(f"{reg} written after DRIVER_OK")
            return None
        if q.ready:
            self.guest_error(f"{reg} written while {self._queue_name(q.index)} is enabled")
            return None
        return q

    def _r_queue_size_max(self) -> int:
        q = self._selected()
        return q.max_size if q is not None else 0

    def _w_queue_size(self, value: int) -> None:
        q = self._queue_for_setup("QueueSize")
        if q is None:
            return
        if value > q.max_size:
            self.guest_error(f"QueueSize {value} > QueueSizeMax {q.max_size}")
        elif value == 0 or value & (value - 1):
            self.guest_error(f"QueueSize {value} is not a power of 2")
        else:
            q.size = value

    def _r_queue_ready(self) -> int:
        q = self._selected()
        return int(q.ready) if q is not None else 0

    def _w_queue_ready(self, value: int) -> None:
        if value == 0:
            q = self._selected()
            if q is not None:
                q.ready = False  # stopping a queue is always allowed (Linux's vm_del_vq)
            return
        if value != 1:
            self.guest_error(f"QueueReady <- {value}: only 0 and 1 are defined")
            return
        q = self._queue_for_setup("QueueReady")
        if q is None:
            return
        if not self.status & _FOK:
            self.guest_error("QueueReady <- 1 before FEATURES_OK")
            return
        self._enable_queue(q)

    def _enable_queue(self, q: SplitQueue) -> None:
        problem = q.check_layout()
        if problem is not None:
            self.guest_error(f"{self._queue_name(q.index)}: {problem}", fatal=True)
            return
        q.enable(bool(self.driver_features & _EVENT_IDX), bool(self.driver_features & _INDIRECT))

    def _w_queue_addr(self, field: str, shift: int, value: int) -> None:
        reg = {"desc": "QueueDesc", "avail": "QueueDriver", "used": "QueueDevice"}[field]
        q = self._queue_for_setup(reg + ("High" if shift else "Low"))
        if q is None:
            return
        old = getattr(q, field)
        setattr(q, field, (old & ~(0xFFFF_FFFF << shift)) | (value << shift))

    def _w_queue_align(self, value: int) -> None:
        q = self._queue_for_setup("QueueAlign")
        if q is None:
            return
        if value == 0 or value & (value - 1):
            self.guest_error(f"QueueAlign {value} is not a power of 2")
            return
        self._queue_align[q.index] = value

    def _r_queue_pfn(self) -> int:
        q = self._selected()
        return q.pfn if q is not None else 0

    def _w_queue_pfn(self, value: int) -> None:
        if value == 0:
            # Legacy: "writing 0 ... stops the queue"; always allowed, like QueueReady = 0.
            q = self._selected()
            if q is not None:
                q.ready = False
                q.pfn = 0
            return
        q = self._selected()
        if q is not None and q.ready:
            self.guest_error(f"QueuePFN written while {self._queue_name(q.index)} is in use")
            return
        q = self._queue_for_setup("QueuePFN")
        if q is None:
            return
        q.pfn = value
        q.desc, q.avail, q.used = legacy_ring_layout(value, self.guest_page_size,
                                                     self._queue_align[q.index], q.size)
        self._enable_queue(q)
        if not q.ready:
            q.pfn = 0

    def _w_queue_notify(self, value: int) -> None:
        # write() serves QueueNotify itself (outside the lock between rounds); this entry is for the
        # register table, so that the register counts as writable.
        index = self._notify_index(value)
        if index is not None:
            self._notify(index)

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
        if not self.live:
            # Spec "Device Initialization": no buffers are used before DRIVER_OK.  Drivers that kick
            # before it (older Linux primes and kicks the stats queue first) are served at DRIVER_OK.
            if self._tracer.virtio:
                self.trace_event("QueueNotify", index, f"deferred: status is {flag_names(Status, self.status)}")
            return False
        if index >= len(self.active_queue_names) or not self.queues[index].ready:
            self.guest_error(f"QueueNotify <- {index}: no such queue is enabled")
            return False
        return self._process(index)

    def _process(self, index: int) -> bool:
        """process_queue(index) once; True if it took buffers and more are available."""
        q = self.queues[index]
        before = q.last_avail
        self._run_device(self.device.process_queue, index)
        if not self.live or not q.ready or q.last_avail == before:
            return False
        try:
            return q.has_available()
        except GuestMemoryError:
            return False

    def _w_interrupt_ack(self, value: int) -> None:
        if value & ~(_USED | _CONFIG):
            self.guest_error(f"InterruptACK <- {value:#x} sets undefined bits")
        was = self.interrupt_status
        self.interrupt_status &= ~value
        if was and not self.interrupt_status:
            if self._tracer.virtio:
                self._tracer.access(self.name, "event", "Interrupt", 0, "line lowered", shown="0x0")
            self.irq.set_level(False)

    def _w_status(self, value: int) -> None:
        if value == 0:
            self._reset()
            return
        if value & ~0xFF:
            self.guest_error(f"Status <- {value:#x} sets bits beyond 8")
        # Drivers write back what they read plus a bit (Linux's virtio_add_status), so a
        # DEVICE_NEEDS_RESET we set may come back: it is the device's bit, not the driver's.
        new = value & 0xFF & ~_NEEDS_RESET
        cur = self.status & ~_NEEDS_RESET
        if new == cur:
            return
        if new & _FAILED:
            self.status |= _FAILED   # "any FAILED bit is ORed in"; the driver must now reset
            return
        if cur & _FAILED:
            self.guest_error(f"Status <- {value:#x} after FAILED without a reset")
            return
        if (cur, new) not in self._transitions:
            self.guest_error(f"invalid status transition {flag_names(Status, cur)} -> {flag_names(Status, new)}")
            return
        if new & _FOK and not cur & _FOK and not self._features_acceptable():
            return  # FEATURES_OK stays clear: the driver sees it on read-back
        self.status = new | (self.status & _NEEDS_RESET)
        if new & _DOK and not cur & _DOK:
            self._activate()

    def _features_acceptable(self) -> bool:
        extra = self.driver_features & ~self.offered
        if extra:
            self.guest_error(f"FEATURES_OK refused: driver accepted bits never offered {extra:#x}")
            return False
        if self.version == 2 and not self.driver_features & _VERSION_1:
            # Spec "Reserved Feature Bits": "A driver MUST accept VIRTIO_F_VERSION_1 if it is offered".
            self.guest_error("FEATURES_OK refused: VIRTIO_F_VERSION_1 not accepted")
            return False
        if not self.device.features_ok(self.driver_features):
            self.guest_error(f"FEATURES_OK refused by the device for features {self.driver_features:#x}")
            return False
        return True

    def _activate(self) -> None:
        names = self.active_queue_names
        self._run_device(self.device.activate, self.driver_features, self.queues[: len(names)])
        # Serve buffers the driver made available (and maybe kicked) before DRIVER_OK.
        for q in self.queues[: len(names)]:
            if self.live and q.ready:
                try:
                    pending = q.has_available()
                except GuestMemoryError:
                    pending = False
                # At DRIVER_OK the lock is held through every round: only a driver that queued
                # buffers before DRIVER_OK gets here, and it cannot have queued more than a ring.
                rounds = 0
                while pending and rounds < MAX_NOTIFY_ROUNDS:
                    pending = self._process(q.index)
                    rounds += 1

    def _w_shm_sel(self, value: int) -> None:
        self.shm_sel = value

    def _w_queue_reset(self, value: int) -> None:
        self.guest_error(f"QueueReset <- {value} without VIRTIO_F_RING_RESET")

    # --- config space ---------------------------------------------------------------------------------

    def _config_check(self, offset: int, size: int, direction: str) -> int | None:
        rel = offset - VIRTIO_MMIO_CONFIG
        if size not in (1, 2, 4) or rel % size or rel + size > self.CONFIG_SIZE:
            with self.lock:
                self.guest_error(f"{size}-byte config {direction} at +{rel:#x}: bad width, alignment or offset")
            return None
        field = self._config_fields.get(rel)
        if self.version == 2 and field is not None and size != min(field[2], 4):
            # Spec MMIO register table, "Config": 32-bit accesses for 32-bit fields.  Served anyway.
            with self.lock:
                self.guest_error(f"{size}-byte config {direction} of {field[0]}, a {field[2]}-byte field")
        return rel

    def _config_read(self, offset: int, size: int) -> int:
        rel = self._config_check(offset, size, "read")
        if rel is None:
            return 0
        with self.lock:
            value = self.device.config_read(rel, size)
            if self._tracer.virtio:
                self._trace_config("read", rel, size, value)
        return value

    def _config_write(self, offset: int, size: int, value: int) -> None:
        rel = self._config_check(offset, size, "write")
        if rel is None:
            return
        value &= (1 << (8 * size)) - 1
        with self.lock:
            if self._tracer.virtio:
                self._trace_config("write", rel, size, value)
            if self.version == 2 and not self.status & _FOK:
                # Spec "Device Initialization" step 4: the config "MUST NOT be written" before it.
                self.guest_error("config write before FEATURES_OK")
                return
            self.device.config_write(rel, size, value)

    # --- trace decoding (only runs when tracing is on) ----------------------------------------------------

    @property
    def active_queue_names(self) -> list[str]:
        return self.device.queue_names(self.driver_features)

    def _queue_name(self, index: int) -> str:
        names = self.active_queue_names
        return names[index] if 0 <= index < len(names) else f"queue {index}: no such queue"

    def _feature_names(self, window: int, value: int) -> str:
        names = []
        full = value << (32 * window) if window < 2 else 0
        for flags in (TransportFeature, self.device.feature_flags):
            for member in flags:
                if full & member.value:
                    names.append((member.name or "").removeprefix("VIRTIO_F_").split("_F_")[-1])
                    full &= ~member.value
        if full:
            names.append(f"{full >> (32 * window):#x}")
        return "|".join(names)

    def _trace_register(self, direction: str, offset: int, value: int, note: str = "") -> None:
        reg = Reg(offset)
        label = reg.name
        shown: str | None = None
        meaning = ""
        if reg in (Reg.DeviceFeatures, Reg.DriverFeatures):
            window = self.device_features_sel if reg == Reg.DeviceFeatures else self.driver_features_sel
            label = f"{reg.name}[{window}]"
            shown = f"{value:#010x}"
            meaning = self._feature_names(window, value)
        elif reg == Reg.Status:
            shown = f"{value:#04x}"
            meaning = flag_names(Status, value) if value else "(reset)" if direction == "write" else ""
        elif reg in (Reg.InterruptStatus, Reg.InterruptACK):
            meaning = flag_names(InterruptBit, value) if value else ""
        elif reg == Reg.QueueSel or reg == Reg.QueueNotify:
            meaning = f"({self._queue_name(value)})"
        elif reg in _QUEUE_REGS:
            meaning = f"({self._queue_name(self.queue_sel)})"
        elif reg == Reg.MagicValue:
            meaning = '"virt"' if value == VIRTIO_MMIO_MAGIC_VALUE else "(bad magic)"
        elif reg == Reg.Version:
            meaning = "(virtio 1.x)" if value == 2 else "(legacy)"
        elif reg == Reg.DeviceID:
            try:
                meaning = f"({VirtioDeviceID(value).name.lower()})"
            except ValueError:
                pass
        elif reg in (Reg.SHMLenLow, Reg.SHMLenHigh, Reg.SHMBaseLow, Reg.SHMBaseHigh):
            meaning = "(no such region)"
        if note:
            meaning = f"{meaning} {note}".strip()
        if reg in _DECIMAL_REGS:
            shown = str(value)
        self._tracer.access(self.name, direction, label, value, meaning, shown=shown,
                            offset=offset, size=4)

    def _trace_config(self, direction: str, rel: int, size: int, value: int) -> None:
        field = self._config_fields.get(rel)
        if field is None:
            label = f"Config[{rel:#x}]"
        elif rel == field[1] and size == field[2]:
            label = field[0]
        else:
            label = f"{field[0]}[+{rel - field[1]}]"
        self._tracer.access(self.name, direction, label, value, "", shown=str(value),
                            offset=VIRTIO_MMIO_CONFIG + rel, size=size)


_NOTIFY = int(Reg.QueueNotify)
_REG_NAMES = {int(r): r.name for r in Reg}
_DECIMAL_REGS = frozenset({Reg.QueueSel, Reg.QueueSizeMax, Reg.QueueSize, Reg.QueueNotify, Reg.QueueReady,
                           Reg.DeviceFeaturesSel, Reg.DriverFeaturesSel, Reg.ConfigGeneration, Reg.SHMSel,
                           Reg.Version, Reg.DeviceID})
