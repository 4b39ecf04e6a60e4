"""The virtio ABI pyvmm speaks: split-ring and balloon structures, virtio-mmio registers, and their bits.

Names are the specification's and the kernel headers' on purpose (a deliberate exception to PEP 8):
``virtq_desc`` is what the spec's "Split Virtqueues" section and ``include/uapi/linux/virtio_ring.h``
call it, ``Reg.QueueNotify`` is the register table of "Virtio Over MMIO".
"""

from __future__ import annotations

import ctypes
from enum import IntEnum, IntFlag

from ..cstruct import struct_of

# --- virtio-mmio registers (spec "MMIO Device Register Layout") ----------------------------------

VIRTIO_MMIO_MAGIC_VALUE = 0x74726976  # "virt" read as a little-endian word
VIRTIO_MMIO_CONFIG = 0x100            # device-specific configuration space starts here


class Reg(IntEnum):
    """virtio-mmio register offsets; version 1 (legacy) names are aliases where the offset is shared."""

    MagicValue = 0x000
    Version = 0x004
    DeviceID = 0x008
    VendorID = 0x00C
    DeviceFeatures = 0x010        # legacy: HostFeatures
    DeviceFeaturesSel = 0x014     # legacy: HostFeaturesSel
    DriverFeatures = 0x020        # legacy: GuestFeatures
    DriverFeaturesSel = 0x024     # legacy: GuestFeaturesSel
    GuestPageSize = 0x028         # legacy only
    QueueSel = 0x030
    QueueSizeMax = 0x034          # legacy: QueueNumMax
    QueueSize = 0x038             # legacy: QueueNum
    QueueAlign = 0x03C            # legacy only
    QueuePFN = 0x040              # legacy only
    QueueReady = 0x044
    QueueNotify = 0x050
    InterruptStatus = 0x060
    InterruptACK = 0x064
    Status = 0x070
    QueueDescLow = 0x080
    QueueDescHigh = 0x084
    QueueDriverLow = 0x090
    QueueDriverHigh = 0x094
    QueueDeviceLow = 0x0A0
    QueueDeviceHigh = 0x0A4
    SHMSel = 0x0AC
    SHMLenLow = 0x0B0
    SHMLenHigh = 0x0B4
    SHMBaseLow = 0x0B8
    SHMBaseHigh = 0x0BC
    QueueReset = 0x0C0
    ConfigGeneration = 0x0FC
    Config = 0x100


class Status(IntFlag):
    """Device status bits (spec "Device Status Field")."""

    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    SUSPEND = 16
    DEVICE_NEEDS_RESET = 64
    FAILED = 128


class InterruptBit(IntFlag):
    """InterruptStatus / InterruptACK bits (spec "Notifications From The Device")."""

    USED_BUFFER = 1       # Linux: VIRTIO_MMIO_INT_VRING
    CONFIG_CHANGE = 2     # Linux: VIRTIO_MMIO_INT_CONFIG


class TransportFeature(IntFlag):
    """Feature bits reserved for the transport and the rings (spec "Reserved Feature Bits")."""

    VIRTIO_F_NOTIFY_ON_EMPTY = 1 << 24
    VIRTIO_F_ANY_LAYOUT = 1 << 27
    VIRTIO_F_INDIRECT_DESC = 1 << 28
    VIRTIO_F_EVENT_IDX = 1 << 29
    VIRTIO_F_VERSION_1 = 1 << 32
    VIRTIO_F_ACCESS_PLATFORM = 1 << 33
    VIRTIO_F_RING_PACKED = 1 << 34
    VIRTIO_F_IN_ORDER = 1 << 35
    VIRTIO_F_ORDER_PLATFORM = 1 << 36
    VIRTIO_F_SR_IOV = 1 << 37
    VIRTIO_F_NOTIFICATION_DATA = 1 << 38
    VIRTIO_F_NOTIF_CONFIG_DATA = 1 << 39
    VIRTIO_F_RING_RESET = 1 << 40
    VIRTIO_F_SUSPEND = 1 << 43


class VirtioDeviceID(IntEnum):
    """The device types pyvmm knows (spec "Device Types")."""

    RESERVED = 0
    RNG = 4                  # the spec's "Entropy Device"
    BALLOON = 5


# --- split virtqueues (spec "Split Virtqueues") ---------------------------------------------------

class VirtqDescFlag(IntFlag):
    VIRTQ_DESC_F_NEXT = 1
    VIRTQ_DESC_F_WRITE = 2
    VIRTQ_DESC_F_INDIRECT = 4


VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1
VIRTQ_MAX_SIZE = 32768


class virtq_desc(ctypes.LittleEndianStructure):
    _fields_ = [
        ("addr", ctypes.c_uint64),
        ("len", ctypes.c_uint32),
        ("flags", ctypes.c_uint16),
        ("next", ctypes.c_uint16),
    ]


class virtq_avail(ctypes.LittleEndianStructure):
    """The fixed head of the driver area; ``ring[size]`` and ``used_event`` follow it."""

    _fields_ = [("flags", ctypes.c_uint16), ("idx", ctypes.c_uint16)]


class virtq_used_elem(ctypes.LittleEndianStructure):
    _fields_ = [("id", ctypes.c_uint32), ("len", ctypes.c_uint32)]


class virtq_used(ctypes.LittleEndianStructure):
    """The fixed head of the device area; ``ring[size]`` of virtq_used_elem and ``avail_event`` follow."""

    _fields_ = [("flags", ctypes.c_uint16), ("idx", ctypes.c_uint16)]


# The same layouts as struct.Struct, for unpack_from on guest memory (one definition: the ctypes above).
VIRTQ_DESC = struct_of(virtq_desc)              # addr, len, flags, next
VIRTQ_USED_ELEM = struct_of(virtq_used_elem)    # id, len


def split_ring_sizes(queue_size: int) -> tuple[int, int, int]:
    """Bytes of the descriptor table, driver area and device area (with the event-idx words)."""
    return 16 * queue_size, 6 + 2 * queue_size, 6 + 8 * queue_size


def legacy_ring_layout(pfn: int, page_size: int, align: int, queue_size: int) -> tuple[int, int, int]:
    """(desc, avail, used) gpa of a legacy contiguous ring.

    Spec "Legacy Interfaces: A Note on Virtqueue Layout": the descriptor table, then the available
    ring, then padding up to ``align``, then the used ring.
    """
    desc = pfn * page_size
    avail = desc + 16 * queue_size
    used = (avail + 6 + 2 * queue_size + align - 1) & ~(align - 1)
    return desc, avail, used


def legacy_ring_size(queue_size: int, align: int) -> int:
    """Total bytes of a legacy ring: ALIGN(16*q + 2*(3+q)) + ALIGN(2*3 + 8*q)."""
    def up(x: int) -> int:
        return (x + align - 1) & ~(align - 1)
    return up(16 * queue_size + 2 * (3 + queue_size)) + up(2 * 3 + 8 * queue_size)


# --- traditional memory balloon (spec "Memory Balloon Device") -----------------------------------

VIRTIO_BALLOON_PFN_SHIFT = 12  # PFNs are always address >> 12, whatever the guest's page size


class BalloonFeature(IntFlag):
    VIRTIO_BALLOON_F_MUST_TELL_HOST = 1 << 0
    VIRTIO_BALLOON_F_STATS_VQ = 1 << 1
    VIRTIO_BALLOON_F_DEFLATE_ON_OOM = 1 << 2
    VIRTIO_BALLOON_F_FREE_PAGE_HINT = 1 << 3
    VIRTIO_BALLOON_F_PAGE_POISON = 1 << 4
    VIRTIO_BALLOON_F_PAGE_REPORTING = 1 << 5   # Linux: VIRTIO_BALLOON_F_REPORTING


class virtio_balloon_config(ctypes.LittleEndianStructure):
    """Balloon config space: little-endian also under the legacy interface (spec "Device configuration
    layout": "unlike the usual convention that legacy device fields are guest endian")."""

    _fields_ = [
        ("num_pages", ctypes.c_uint32),
        ("actual", ctypes.c_uint32),
        ("free_page_hint_cmd_id", ctypes.c_uint32),   # uapi union with free_page_report_cmd_id
        ("poison_val", ctypes.c_uint32),
    ]


class virtio_balloon_stat(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [("tag", ctypes.c_uint16), ("val", ctypes.c_uint64)]


class BalloonStat(IntEnum):
    """Stats tags: 0-9 from the spec, 10-15 added by Linux 6.12 (uapi VIRTIO_BALLOON_S_NR = 16)."""

    VIRTIO_BALLOON_S_SWAP_IN = 0
    VIRTIO_BALLOON_S_SWAP_OUT = 1
    VIRTIO_BALLOON_S_MAJFLT = 2
    VIRTIO_BALLOON_S_MINFLT = 3
    VIRTIO_BALLOON_S_MEMFREE = 4
    VIRTIO_BALLOON_S_MEMTOT = 5
    VIRTIO_BALLOON_S_AVAIL = 6
    VIRTIO_BALLOON_S_CACHES = 7
    VIRTIO_BALLOON_S_HTLB_PGALLOC = 8
    VIRTIO_BALLOON_S_HTLB_PGFAIL = 9
    VIRTIO_BALLOON_S_OOM_KILL = 10
    VIRTIO_BALLOON_S_ALLOC_STALL = 11
    VIRTIO_BALLOON_S_ASYNC_SCAN = 12
    VIRTIO_BALLOON_S_DIRECT_SCAN = 13
    VIRTIO_BALLOON_S_ASYNC_RECLAIM = 14
    VIRTIO_BALLOON_S_DIRECT_RECLAIM = 15

    @property
    def short_name(self) -> str:
        """The name without the VIRTIO_BALLOON_S_ prefix, lower case: ``memfree``."""
        return self.name.removeprefix("VIRTIO_BALLOON_S_").lower()


VIRTIO_BALLOON_STAT = struct_of(virtio_balloon_stat)      # tag, val: 10 bytes, packed
VIRTIO_BALLOON_CONFIG = struct_of(virtio_balloon_config)  # num_pages, actual, free_page_hint_cmd_id, poison_val
