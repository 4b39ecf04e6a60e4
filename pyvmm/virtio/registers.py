"""The virtio-mmio register file: each register's handler and the tables of version 2 and version 1.

Spec "MMIO Device Register Layout".  A handler is a function of the transport (a read returns the
register's value, a write takes it); the transport (mmio.py) owns the state they read and write, the
status machine and the notifications.  The registers only version 1 has are in legacy.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .abi import VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_MAGIC_VALUE, Reg, Status, TransportFeature
from .hooks import VirtioEvent
from .names import describe_config, status_names

if TYPE_CHECKING:
    from .mmio import VirtioMmio
    from .queue import SplitQueue

Reader = Callable[["VirtioMmio"], int]
Writer = Callable[["VirtioMmio", int], None]

VENDOR_ID = int.from_bytes(b"pyvm", "little")
_A, _D = int(Status.ACKNOWLEDGE), int(Status.DRIVER)
_FOK, _DOK = int(Status.FEATURES_OK), int(Status.DRIVER_OK)
_EVENT_IDX = int(TransportFeature.VIRTIO_F_EVENT_IDX)
_INDIRECT = int(TransportFeature.VIRTIO_F_INDIRECT_DESC)


@dataclass(frozen=True)
class VersionRules:
    """What differs between virtio-mmio version 2 and the legacy version 1."""

    version: int
    # Spec "Device Initialization": the only forward steps a driver may take.  Writing 0 (reset) and
    # ORing in FAILED are allowed from anywhere and handled apart; anything else is refused and logged,
    # as Firecracker does.  Rewriting the current value is a no-op.
    transitions: frozenset[tuple[int, int]]
    reads: tuple[Reader | None, ...]     # indexed by offset >> 2, for offsets below the config space
    writes: tuple[Writer | None, ...]
    # DriverFeatures[sel] <- value is filtered through this (legacy: bits never offered are dropped).
    accept_features: Callable[[VirtioMmio, int, int], int] | None = None

    def known(self, offset: int) -> bool:
        return bool(self.reads[offset >> 2] or self.writes[offset >> 2])


# --- queue set-up, shared by both versions ------------------------------------------------------------

def selected_queue(t: VirtioMmio) -> SplitQueue | None:
    """The selected queue, if it exists for the features the driver accepted so far."""
    sel = t.queue_sel
    if sel < len(t.queues) and sel < len(t.device.queue_names(t.driver_features)):
        return t.queues[sel]
    return None


def queue_for_setup(t: VirtioMmio, reg: str) -> SplitQueue | None:
    """The selected queue if its set-up registers may be written now, else a guest error and None."""
    q = selected_queue(t)
    if q is None:
        t.guest_error(f"{reg} written for queue {t.queue_sel}, which does not exist")
        return None
    if t.status & _DOK:
        t.guest_error(f"{reg} written after DRIVER_OK")
        return None
    if q.ready:
        t.guest_error(f"{reg} written while {t.queue_name(q.index)} is enabled")
        return None
    return q


def enable_queue(t: VirtioMmio, q: SplitQueue) -> None:
    """The driver has programmed the queue: check its layout (DEVICE_NEEDS_RESET if unusable), enable it."""
    problem = q.check_layout()
    if problem is not None:
        t.guest_error(f"{t.queue_name(q.index)}: {problem}", fatal=True)
        return
    q.enable(bool(t.driver_features & _EVENT_IDX), bool(t.driver_features & _INDIRECT))


# --- registers both versions have ---------------------------------------------------------------------

def read_device_features(t: VirtioMmio) -> int:
    sel = t.device_features_sel
    return (t.offered >> (32 * sel)) & 0xFFFF_FFFF if sel < 2 else 0


def write_driver_features(t: VirtioMmio, value: int) -> None:
    # Spec "Device Initialization" step 4; Firecracker likewise takes features only in DRIVER.
    if t.status & (_D | _FOK | _DOK) != _D:
        t.guest_error(f"DriverFeatures written in status {status_names(t.status)}, not in the DRIVER state")
        return
    sel = t.driver_features_sel
    if sel >= 2:
        if value:
            t.guest_error(f"DriverFeatures[{sel}] <- {value:#x}: no such feature bits offered")
        return
    if t.rules.accept_features is not None:
        value = t.rules.accept_features(t, sel, value)
    shift = 32 * sel
    t.driver_features = (t.driver_features & ~(0xFFFF_FFFF << shift)) | (value << shift)


def read_queue_size_max(t: VirtioMmio) -> int:
    q = selected_queue(t)
    return q.max_size if q is not None else 0


def write_queue_size(t: VirtioMmio, value: int) -> None:
    q = queue_for_setup(t, "QueueSize")
    if q is None:
        return
    if value > q.max_size:
        t.guest_error(f"QueueSize {value} > QueueSizeMax {q.max_size}")
    elif value == 0 or value & (value - 1):
        t.guest_error(f"QueueSize {value} is not a power of 2")
    else:
        q.size = value


def _set(attr: str) -> Writer:
    def write(t: VirtioMmio, value: int) -> None:
        setattr(t, attr, value)

    write.__name__ = f"write_{attr}"
    return write


COMMON_READS: dict[Reg, Reader] = {
    Reg.MagicValue: lambda t: VIRTIO_MMIO_MAGIC_VALUE,
    Reg.Version: lambda t: t.version,
    Reg.DeviceID: lambda t: t.device.device_id,
    Reg.VendorID: lambda t: VENDOR_ID,
    Reg.DeviceFeatures: read_device_features,
    Reg.QueueSizeMax: read_queue_size_max,
    Reg.InterruptStatus: lambda t: t.interrupt_status,
    Reg.Status: lambda t: t.status,
}
COMMON_WRITES: dict[Reg, Writer] = {
    Reg.DeviceFeaturesSel: _set("device_features_sel"),
    Reg.DriverFeatures: write_driver_features,
    Reg.DriverFeaturesSel: _set("driver_features_sel"),
    Reg.QueueSel: _set("queue_sel"),
    Reg.QueueSize: write_queue_size,
    # QueueNotify is served by the transport's write() itself (outside the lock between rounds); the
    # entry makes the register writable.
    Reg.QueueNotify: lambda t, v: t.notify_register(v),
    Reg.InterruptACK: lambda t, v: t.interrupt_ack(v),
    Reg.Status: lambda t, v: t.write_status(v),
}


# --- version 2's own registers ------------------------------------------------------------------------

def read_queue_ready(t: VirtioMmio) -> int:
    q = selected_queue(t)
    return int(q.ready) if q is not None else 0


def write_queue_ready(t: VirtioMmio, value: int) -> None:
    if value == 0:
        q = selected_queue(t)
        if q is not None:
            q.ready = False  # stopping a queue is always allowed (Linux's vm_del_vq)
        return
    if value != 1:
        t.guest_error(f"QueueReady <- {value}: only 0 and 1 are defined")
        return
    q = queue_for_setup(t, "QueueReady")
    if q is None:
        return
    if not t.status & _FOK:
        t.guest_error("QueueReady <- 1 before FEATURES_OK")
        return
    enable_queue(t, q)


def _queue_address(reg: Reg, field: str, shift: int) -> Writer:
    """QueueDesc/QueueDriver/QueueDevice Low or High: half of a 64-bit ring address."""

    def write(t: VirtioMmio, value: int) -> None:
        q = queue_for_setup(t, reg.name)
        if q is not None:
            old = getattr(q, field)
            setattr(q, field, (old & ~(0xFFFF_FFFF << shift)) | (value << shift))

    write.__name__ = f"write_{reg.name}"
    return write


def _no_region(t: VirtioMmio) -> int:
    return 0xFFFF_FFFF          # SHMLen/SHMBase: "-1 if the region doesn't exist"


MODERN_READS: dict[Reg, Reader] = {
    Reg.QueueReady: read_queue_ready,
    Reg.SHMLenLow: _no_region,
    Reg.SHMLenHigh: _no_region,
    Reg.SHMBaseLow: _no_region,
    Reg.SHMBaseHigh: _no_region,
    Reg.QueueReset: lambda t: 0,
    Reg.ConfigGeneration: lambda t: t.config_generation,
}
MODERN_WRITES: dict[Reg, Writer] = {
    Reg.QueueReady: write_queue_ready,
    Reg.QueueDescLow: _queue_address(Reg.QueueDescLow, "desc", 0),
    Reg.QueueDescHigh: _queue_address(Reg.QueueDescHigh, "desc", 32),
    Reg.QueueDriverLow: _queue_address(Reg.QueueDriverLow, "avail", 0),
    Reg.QueueDriverHigh: _queue_address(Reg.QueueDriverHigh, "avail", 32),
    Reg.QueueDeviceLow: _queue_address(Reg.QueueDeviceLow, "used", 0),
    Reg.QueueDeviceHigh: _queue_address(Reg.QueueDeviceHigh, "used", 32),
    Reg.SHMSel: _set("shm_sel"),
    Reg.QueueReset: lambda t, v: t.guest_error(f"QueueReset <- {v} without VIRTIO_F_RING_RESET"),
}


# --- the device's configuration space (offset 0x100 on) ------------------------------------------------

def _config_access(t: VirtioMmio, rel: int, size: int, direction: str) -> bool:
    """Whether a config access of size bytes at rel may go to the device (a guest error if not)."""
    if size not in (1, 2, 4) or rel % size or rel + size > t.CONFIG_SIZE:
        with t.lock:
            t.guest_error(f"{size}-byte config {direction} at +{rel:#x}: bad width, alignment or offset")
        return False
    field = t.config_fields.get(rel)
    if t.version == 2 and field is not None and size != min(field[2], 4):
        # Spec MMIO register table, "Config": 32-bit accesses for 32-bit fields.  Served anyway.
        with t.lock:
            t.guest_error(f"{size}-byte config {direction} of {field[0]}, a {field[2]}-byte field")
    return True


def read_config(t: VirtioMmio, rel: int, size: int) -> int:
    if not _config_access(t, rel, size, "read"):
        return 0
    with t.lock:
        value = t.run_device(t.device.config_read, rel, size, default=0)
        value = value if isinstance(value, int) else 0
        if t.tracing:
            t.trace_access("read", describe_config(t.config_fields, rel, size), value, VIRTIO_MMIO_CONFIG + rel, size)
        if t.hook is not None:
            t.hook(t, VirtioEvent("config-read", rel, value, size))
    return value


def write_config(t: VirtioMmio, rel: int, size: int, value: int) -> None:
    if not _config_access(t, rel, size, "write"):
        return
    value &= (1 << (8 * size)) - 1
    with t.lock:
        if t.tracing:
            t.trace_access("write", describe_config(t.config_fields, rel, size), value, VIRTIO_MMIO_CONFIG + rel, size)
        if t.hook is not None:
            t.hook(t, VirtioEvent("config-write", rel, value, size))
        if t.version == 2 and not t.status & _FOK:
            # Spec "Device Initialization" step 4: the config "MUST NOT be written" before it.
            t.guest_error("config write before FEATURES_OK")
            return
        t.run_device(t.device.config_write, rel, size, value)


def table(*parts: dict) -> tuple:
    """Handlers by register, as a tuple indexed by offset >> 2."""
    table: list[Callable | None] = [None] * (VIRTIO_MMIO_CONFIG // 4)
    for part in parts:
        for reg, fn in part.items():
            table[int(reg) >> 2] = fn
    return tuple(table)


MODERN = VersionRules(
    version=2,
    transitions=frozenset({(0, _A), (_A, _A | _D), (_A | _D, _A | _D | _FOK), (_A | _D | _FOK, _A | _D | _FOK | _DOK)}),
    reads=table(COMMON_READS, MODERN_READS),
    writes=table(COMMON_WRITES, MODERN_WRITES),
)
