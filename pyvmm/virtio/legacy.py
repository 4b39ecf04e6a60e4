"""The legacy virtio-mmio interface (version 1): GuestPageSize, QueueAlign, QueuePFN and its feature rule.

Spec "Legacy interface" of "Virtio Over MMIO": the driver gives each queue one guest page frame number,
and the rings lie in one contiguous block from there ("Legacy Interfaces: A Note on Virtqueue Layout").
There is no FEATURES_OK step, so the device itself drops feature bits it never offered.  These are the
version-1 register handlers the transport's table takes (pyvmm/virtio/mmio.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .abi import Reg, Status, legacy_ring_layout
from .registers import COMMON_READS, COMMON_WRITES, VersionRules, enable_queue, queue_for_setup, selected_queue, table

if TYPE_CHECKING:
    from .mmio import VirtioMmio


def accepted_features(t: VirtioMmio, sel: int, value: int) -> int:
    """DriverFeatures[sel] <- value, less the bits the device never offered (PAGE_REPORTING when off,
    VERSION_1): with no FEATURES_OK step nothing else would refuse them, so they are dropped here, as if
    the driver had not written them."""
    offered = (t.offered >> (32 * sel)) & 0xFFFF_FFFF
    extra = value & ~offered
    if extra:
        t.guest_error(f"DriverFeatures[{sel}] <- {value:#x} accepts bits never offered {extra:#x}: ignored")
    return value & offered


def write_guest_page_size(t: VirtioMmio, value: int) -> None:
    if value == 0 or value & (value - 1):
        t.guest_error(f"GuestPageSize {value} is not a power of 2")
        return
    t.guest_page_size = value


def write_queue_align(t: VirtioMmio, value: int) -> None:
    q = queue_for_setup(t, "QueueAlign")
    if q is None:
        return
    if value == 0 or value & (value - 1):
        t.guest_error(f"QueueAlign {value} is not a power of 2")
        return
    t.queue_align[q.index] = value


def read_queue_pfn(t: VirtioMmio) -> int:
    q = selected_queue(t)
    return q.pfn if q is not None else 0


def write_queue_pfn(t: VirtioMmio, value: int) -> None:
    q = selected_queue(t)
    if value == 0:
        # "writing 0 ... stops the queue"; always allowed, like QueueReady = 0.
        if q is not None:
            q.ready = False
            q.pfn = 0
        return
    if q is not None and q.ready:
        t.guest_error(f"QueuePFN written while {t.queue_name(q.index)} is in use")
        return
    q = queue_for_setup(t, "QueuePFN")
    if q is None:
        return
    q.pfn = value
    q.desc, q.avail, q.used = legacy_ring_layout(value, t.guest_page_size, t.queue_align[q.index], q.size)
    enable_queue(t, q)
    if not q.ready:
        q.pfn = 0


_A, _D, _DOK = int(Status.ACKNOWLEDGE), int(Status.DRIVER), int(Status.DRIVER_OK)
LEGACY = VersionRules(
    version=1,
    # Spec "Legacy Interface: Device Initialization": no FEATURES_OK step.
    transitions=frozenset({(0, _A), (_A, _A | _D), (_A | _D, _A | _D | _DOK)}),
    reads=table(COMMON_READS, {Reg.QueuePFN: read_queue_pfn}),
    writes=table(COMMON_WRITES, {
        Reg.GuestPageSize: write_guest_page_size,
        Reg.QueueAlign: write_queue_align,
        Reg.QueuePFN: write_queue_pfn,
    }),
    accept_features=accepted_features,
)
