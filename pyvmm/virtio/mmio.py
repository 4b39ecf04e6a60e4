"""The virtio-mmio transport (spec "Virtio Over MMIO") as a bus device: state, status machine, notifications.

Guest accesses arrive as ``read(offset, size)`` / ``write(offset, size, value)`` from the vCPU exit
path, and ``queue_notify(index)`` from the ioeventfd thread.  One re-entrant lock serialises them with
each other and with the device's control API (the monitor thread).  A guest that breaks the rules
gets a rate-limited line on the "pyvmm.guest" logger and, if the device cannot go on,
DEVICE_NEEDS_RESET; nothing a guest writes raises out of here.  An injected ``hook`` (the virtio
breakpoints of pyvmm.debug) sees each access and device event while it is set; unset, it costs one
attribute check per access.

The registers of each version are a class-level table (offset -> handler), built once: those both
versions share and version 2's in registers.py, version 1's in legacy.py.
"""

from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Callable

from ..errors import GuestMemoryError
from ..guestlog import GuestErrorLog
from ..irq import IrqLine
from ..memory import GuestMemory
from ..trace import Tracer
from .abi import VIRTIO_MMIO_CONFIG, InterruptBit, Reg, Status, TransportFeature
from .device import VirtioDevice
from .hooks import VirtioEvent, VirtioHook
from .legacy import LEGACY
from .names import describe_bad_access, describe_config, describe_register, interrupt_names, status_names
from .notify import _NOTIFY, QueueNotifications, on_a_thread
from .queue import SplitQueue, VirtqueueError
from .registers import MODERN, read_config, write_config

_D = int(Status.DRIVER)
_FOK = int(Status.FEATURES_OK)
_DOK = int(Status.DRIVER_OK)
_NEEDS_RESET = int(Status.DEVICE_NEEDS_RESET)
_FAILED = int(Status.FAILED)
_USED = int(InterruptBit.USED_BUFFER)
_CONFIG = int(InterruptBit.CONFIG_CHANGE)
_VERSION_1 = int(TransportFeature.VIRTIO_F_VERSION_1)
_EVENT_IDX = int(TransportFeature.VIRTIO_F_EVENT_IDX)
_INDIRECT = int(TransportFeature.VIRTIO_F_INDIRECT_DESC)
_NOTIFICATION_DATA = int(TransportFeature.VIRTIO_F_NOTIFICATION_DATA)

_MASK_EVENTS = frozenset({"Interrupt", "GuestError"})   # events whose value is a register's bits


class VirtioMmio(QueueNotifications):
    """One virtio-mmio window with a virtio device behind it (QueueNotify served as notify.py says)."""

    # The state the registers read and write (registers.py, legacy.py); set in __init__ and _reset.
    version: int
    device: VirtioDevice
    status: int
    interrupt_status: int
    config_generation: int
    driver_features: int
    device_features_sel: int
    driver_features_sel: int
    queue_sel: int
    shm_sel: int
    queues: list[SplitQueue]

    QUEUE_NOTIFY_OFFSET = int(Reg.QueueNotify)
    WINDOW_SIZE = 0x200
    CONFIG_SIZE = WINDOW_SIZE - VIRTIO_MMIO_CONFIG
    RULES = {2: MODERN, 1: LEGACY}               # the register tables of each version

    def __init__(
        self,
        device: VirtioDevice,
        mem: GuestMemory,
        irq: IrqLine,
        version: int = 2,
        name: str = "virtio0",
        tracer: Tracer | None = None,
        transport_features: int | None = None,
        *,
        base: int = 0,
        irq_gsi: int = 0,
        defer: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        if version not in (1, 2):
            raise ValueError(f"virtio-mmio version must be 1 (legacy) or 2, not {version}")
        self.device = device
        self.mem = mem
        self.irq = irq
        self.version = version
        self.name = name
        self.base = base                  # where the window sits, and its interrupt line (for the
        self.irq_gsi = irq_gsi            # monitor, ACPI and the command line)
        self.rules = self.RULES[version]
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
        size_of = getattr(device, "queue_size", None)      # per-queue sizes (VirtioDeviceBase)
        self.queues = [SplitQueue(mem, i, size_of(i) if size_of else device.queue_max_size)
                       for i in range(nqueues)]
        self.queue_align = [4096] * nqueues    # legacy QueueAlign, per queue
        self.notify_counts = [0] * nqueues     # QueueNotify per queue (a register write or an ioeventfd)
        self.guest_page_size = 4096            # legacy GuestPageSize: Linux writes it once at probe
        self.config_generation = 0
        self.status = 0
        self.interrupt_status = 0
        self.activated = False               # the device has its queues (DRIVER_OK, or legacy's first use)
        self._deferred: set[int] = set()     # queues whose remaining work is scheduled
        self._defer = defer or on_a_thread
        self._reset_registers()
        self.config_fields = {off + i: (fname, off, size)
                              for off, size, fname in device.config_fields() for i in range(size)}
        self.hook: VirtioHook | None = None
        self._held: list[int] = []             # QueueNotify indices a hook held back
        device.attach(self)

    # --- the bus interface ---------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        """A guest read of size bytes at offset in the window; never raises on guest input."""
        if offset >= VIRTIO_MMIO_CONFIG:
            return read_config(self, offset - VIRTIO_MMIO_CONFIG, size)
        if size != 4 or offset & 3 or offset < 0:
            self._bad_access(offset, size, "read")
            return 0
        handler = self.rules.reads[offset >> 2]
        if handler is None:
            self._bad_access(offset, size, "read")
            return 0
        with self.lock:
            value = handler(self)
            if self._tracer.virtio:
                self._trace_register("read", offset, value)
            if self.hook is not None:
                self.hook(self, VirtioEvent("read", offset, value))
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write of size bytes at offset in the window; never raises on guest input."""
        if offset >= VIRTIO_MMIO_CONFIG:
            write_config(self, offset - VIRTIO_MMIO_CONFIG, size, value)
            return
        if size != 4 or offset & 3 or offset < 0:
            self._bad_access(offset, size, "write")
            return
        if offset == _NOTIFY:
            self._serve_notify(value & 0xFFFF_FFFF, "")
            return
        handler = self.rules.writes[offset >> 2]
        if handler is None:
            self._bad_access(offset, size, "write")
            return
        value &= 0xFFFF_FFFF
        with self.lock:
            if self._tracer.virtio:
                self._trace_register("write", offset, value)
            if self.hook is not None:          # before the handler: the hook sees the old state
                self.hook(self, VirtioEvent("write", offset, value))
            handler(self, value)

    # --- the Transport interface, for the device -----------------------------------------------------

    @property
    def live(self) -> bool:
        """The device may use its queues: activated (at DRIVER_OK; legacy: at the driver's first use)
        and neither DEVICE_NEEDS_RESET nor FAILED."""
        return self.activated and not self.status & (_NEEDS_RESET | _FAILED)

    @property
    def tracing(self) -> bool:
        return self._tracer.virtio

    def signal_used_queue(self, index: int) -> None:
        """Spec "Notifications From The Device": set InterruptStatus bit 0 unless the driver suppressed it."""
        if not self.live:
            return
        if self.hook is not None:
            self.hook(self, VirtioEvent("used", -1, self.queues[index].next_used, queue=index))
        if not self.queues[index].should_notify():
            if self._tracer.virtio:
                self.trace_event("Interrupt", self.interrupt_status,
                                 f"suppressed by the driver ({self.queue_name(index)})")
            return
        self._raise(_USED, self.queue_name(index), queue=index)

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
        """A device event: its value is a count (PFNs, pages, a queue index) in decimal, except the
        bit masks of Interrupt (InterruptStatus) and GuestError (Status), in hex (docs/trace.md)."""
        if self._tracer.virtio:
            shown = f"{value:#x}" if what in _MASK_EVENTS else str(value)
            self._tracer.access(self.name, "event", what, value, meaning, shown=shown)

    def config_field(self, rel: int) -> tuple[str, int, int] | None:
        """(name, offset, size) of the device configuration field holding byte rel, if any."""
        return self.config_fields.get(rel)

    def config_label(self, rel: int, size: int) -> str:
        """How the trace names a config access: ``num_pages``, ``actual[+2]``, ``Config[0x10]``."""
        return describe_config(self.config_fields, rel, size)

    def trace_access(self, direction: str, label: str, value: int, offset: int, size: int) -> None:
        """A config-space access, shown in decimal (counts and sizes live there)."""
        self._tracer.access(self.name, direction, label, value, "", shown=str(value), offset=offset, size=size)

    # --- internals: interrupts, reset, errors ----------------------------------------------------------

    def _raise(self, bit: int, why: str, queue: int = -1) -> None:
        self.interrupt_status |= bit
        if self._tracer.virtio:
            self._tracer.access(self.name, "event", "Interrupt", self.interrupt_status,
                                f"{interrupt_names(bit)} raised ({why})", shown=f"{self.interrupt_status:#x}")
        if self.hook is not None:
            self.hook(self, VirtioEvent("irq", Reg.InterruptStatus, self.interrupt_status, queue=queue,
                                        note=f"{interrupt_names(bit)} raised ({why})"))
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

    def reset(self) -> None:
        """A machine reset: the device as after the driver writes Status 0."""
        with self.lock:
            self._reset()

    def _reset(self) -> None:
        """Spec "Device Reset": status 0, no interrupts, every queue not ready (legacy: QueuePFN 0)."""
        self.status = 0
        self.activated = False
        self._held.clear()                     # notifications of the old driver die with its queues
        self._reset_registers()
        for q in self.queues:
            q.reset()
        self.queue_align = [4096] * len(self.queues)
        if self.interrupt_status:
            self.interrupt_status = 0
            self.irq.set_level(False)
        self.run_device(self.device.reset)

    def _bad_access(self, offset: int, size: int, direction: str) -> None:
        with self.lock:
            self.guest_error(describe_bad_access(offset, size, direction, self.version, self.WINDOW_SIZE,
                                                 self.rules.known(offset) if 0 <= offset < VIRTIO_MMIO_CONFIG
                                                 and not offset & 3 else False))

    def run_device(self, action: Callable[..., object], *args: object, default: object = None) -> object:
        """Run device code: a broken ring is the guest's error, not the VMM's; any other exception is the
        device's bug (a user device's, say), contained the same way: DEVICE_NEEDS_RESET and one line."""
        try:
            return action(*args)
        except (VirtqueueError, GuestMemoryError) as e:
            where = f"{self.queue_name(args[0])}: " if args and isinstance(args[0], int) else ""
            self.guest_error(f"{where}{e}", fatal=True)
        except Exception as e:
            frames = traceback.extract_tb(e.__traceback__)
            last = frames[-1] if frames else None
            at = f" at {os.path.basename(last.filename)}:{last.lineno} in {last.name}" if last else ""
            self.guest_error(f"device {type(self.device).__name__} raised {type(e).__name__}: {e}{at}; "
                             "DEVICE_NEEDS_RESET", fatal=True)
        return default

    # --- the status machine and interrupt acknowledgement ------------------------------------------

    def interrupt_ack(self, value: int) -> None:
        if value & ~(_USED | _CONFIG):
            self.guest_error(f"InterruptACK <- {value:#x} sets undefined bits")
        was = self.interrupt_status
        self.interrupt_status &= ~value
        if was and not self.interrupt_status:
            if self._tracer.virtio:
                self._tracer.access(self.name, "event", "Interrupt", 0, "line lowered", shown="0x0")
            self.irq.set_level(False)

    def write_status(self, value: int) -> None:
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
        if (cur, new) not in self.rules.transitions:
            self.guest_error(f"invalid status transition {status_names(cur)} -> {status_names(new)}")
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
        if not self.driver_features & _VERSION_1:
            # Spec "Reserved Feature Bits": "A driver MUST accept VIRTIO_F_VERSION_1 if it is offered".
            self.guest_error("FEATURES_OK refused: VIRTIO_F_VERSION_1 not accepted")
            return False
        if not self.run_device(self.device.features_ok, self.driver_features, default=False):
            self.guest_error(f"FEATURES_OK refused by the device for features {self.driver_features:#x}")
            return False
        return True

    def _activate(self) -> None:
        """The device gets its queues (once per reset), and the buffers made available before are served."""
        names = self.active_queue_names
        if not self.activated:
            self.activated = True
            self.run_device(self.device.activate, self.driver_features, self.queues[: len(names)])
        for q in self.queues[: len(names)]:
            if self.live and q.ready:
                try:
                    pending = q.has_available()
                except GuestMemoryError:
                    pending = False
                if pending and self._process(q.index):
                    self._continue_later(q.index)

    # --- names, for the trace and the monitor ------------------------------------------------------------

    @property
    def active_queue_names(self) -> list[str]:
        return self.device.queue_names(self.driver_features)

    def queue_name(self, index: int) -> str:
        names = self.active_queue_names
        return names[index] if 0 <= index < len(names) else f"queue {index}: no such queue"

    def _trace_register(self, direction: str, offset: int, value: int, note: str = "") -> None:
        label, shown, meaning = describe_register(self, direction, offset, value, note)
        self._tracer.access(self.name, direction, label, value, meaning, shown=shown, offset=offset, size=4)

