"""A virtio-mmio driver in Python that plays the guest on a GuestMemory, through register accesses only.

It does what Linux's virtio_mmio.c and virtio_ring.c do (probe, reset, negotiate, queue set-up in the
version 2 and legacy version 1 layouts, post chains, kick, reap, acknowledge interrupts), so device
tests need no KVM and no guest.  Low-level helpers (write_desc, push_avail) let hostile tests build
rings that break the rules.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from pyvmm.memory import GuestMemory, MemoryRegion
from pyvmm.virtio.abi import (
    VIRTIO_MMIO_CONFIG,
    VIRTIO_MMIO_MAGIC_VALUE,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    BalloonFeature,
    Reg,
    Status,
    TransportFeature,
    VirtqDescFlag,
    legacy_ring_layout,
    legacy_ring_size,
    split_ring_sizes,
)

NEXT = int(VirtqDescFlag.VIRTQ_DESC_F_NEXT)
WRITE = int(VirtqDescFlag.VIRTQ_DESC_F_WRITE)
INDIRECT = int(VirtqDescFlag.VIRTQ_DESC_F_INDIRECT)
_DESC = struct.Struct("<QIHH")
EVENT_IDX = int(TransportFeature.VIRTIO_F_EVENT_IDX)
INDIRECT_DESC = int(TransportFeature.VIRTIO_F_INDIRECT_DESC)
VERSION_1 = int(TransportFeature.VIRTIO_F_VERSION_1)


class DriverError(AssertionError):
    """The device did not behave as a driver expects."""


class Arena:
    """A bump allocator over a range of guest RAM the driver owns."""

    def __init__(self, gpa: int, size: int) -> None:
        self.start = gpa
        self.end = gpa + size
        self.next = gpa

    def alloc(self, size: int, align: int = 16) -> int:
        gpa = (self.next + align - 1) & ~(align - 1)
        if gpa + size > self.end:
            raise MemoryError(f"driver arena exhausted ({size} bytes wanted)")
        self.next = gpa + size
        return gpa


class VirtioDriver:
    """The transport half of a guest driver."""

    def __init__(self, dev, mem: GuestMemory, arena: tuple[int, int] | None = None) -> None:
        self.dev = dev
        self.mem = mem
        if arena is None:
            r = mem.regions[0]
            size = min(4 << 20, r.size // 2)
            arena = (r.end - size, size)
        self.arena = Arena(*arena)
        self.version = 0
        self.features = 0
        self.queues: dict[int, DriverQueue] = {}

    # --- registers ---------------------------------------------------------------------------------------

    def r(self, reg: int) -> int:
        return self.dev.read(int(reg), 4)

    def w(self, reg: int, value: int) -> None:
        self.dev.write(int(reg), 4, value)

    @property
    def status(self) -> int:
        return self.r(Reg.Status)

    def add_status(self, bit: int) -> None:
        self.w(Reg.Status, self.status | bit)   # as Linux's virtio_add_status does

    # --- probe, reset, negotiation --------------------------------------------------------------------

    def probe(self) -> int:
        """Check magic and version; returns DeviceID.  Legacy: writes GuestPageSize as Linux does."""
        if self.r(Reg.MagicValue) != VIRTIO_MMIO_MAGIC_VALUE:
            raise DriverError("bad magic")
        self.version = self.r(Reg.Version)
        if self.version not in (1, 2):
            raise DriverError(f"version {self.version}")
        if self.version == 1:
            self.w(Reg.GuestPageSize, 4096)
        return self.r(Reg.DeviceID)

    def reset(self) -> None:
        self.w(Reg.Status, 0)
        if self.status != 0:
            raise DriverError("status did not read 0 after reset")
        self.queues.clear()

    def device_features(self) -> int:
        self.w(Reg.DeviceFeaturesSel, 1)
        hi = self.r(Reg.DeviceFeatures)
        self.w(Reg.DeviceFeaturesSel, 0)
        return (hi << 32) | self.r(Reg.DeviceFeatures)

    def negotiate(self, accept: int | None = None, accept_transport: int | None = None) -> int:
        """ACKNOWLEDGE, DRIVER, write the accepted features (high word first), FEATURES_OK (v2).

        accept masks the device-type bits (0-23), accept_transport the others; None takes all offered.
        """
        self.add_status(Status.ACKNOWLEDGE)
        self.add_status(Status.DRIVER)
        offered = self.device_features()
        if self.version == 2 and not offered & VERSION_1:
            raise DriverError("version 2 device without VIRTIO_F_VERSION_1")
        device_mask = 0xFF_FFFF if accept is None else accept & 0xFF_FFFF
        transport_mask = ~0xFF_FFFF if accept_transport is None else accept_transport & ~0xFF_FFFF
        self.features = offered & (device_mask | transport_mask)
        if self.version == 2:
            self.features |= VERSION_1
        self.w(Reg.DriverFeaturesSel, 1)
        self.w(Reg.DriverFeatures, self.features >> 32)
        self.w(Reg.DriverFeaturesSel, 0)
        self.w(Reg.DriverFeatures, self.features & 0xFFFF_FFFF)
        if self.version == 2:
            self.add_status(Status.FEATURES_OK)
            if not self.status & Status.FEATURES_OK:
                raise DriverError("FEATURES_OK refused")
        return self.features

    def driver_ok(self) -> None:
        self.add_status(Status.DRIVER_OK)

    # --- queues -----------------------------------------------------------------------------------------

    def setup_queue(self, index: int, size: int | None = None) -> DriverQueue:
        self.w(Reg.QueueSel, index)
        if self.version == 2 and self.r(Reg.QueueReady):
            raise DriverError(f"queue {index} already ready")
        if self.version == 1 and self.r(Reg.QueuePFN):
            raise DriverError(f"queue {index} already in use")
        qmax = self.r(Reg.QueueSizeMax)
        if qmax == 0:
            raise DriverError(f"queue {index} not available")
        size = size or qmax
        self.w(Reg.QueueSize, size)
        if self.version == 2:
            desc_len, avail_len, used_len = split_ring_sizes(size)
            desc = self.arena.alloc(desc_len, 16)
            avail = self.arena.alloc(avail_len, 2)
            used = self.arena.alloc(used_len, 4)
            for gpa, n in ((desc, desc_len), (avail, avail_len), (used, used_len)):
                self.mem.write(gpa, bytes(n))
            self.w(Reg.QueueDescLow, desc & 0xFFFF_FFFF)
            self.w(Reg.QueueDescHigh, desc >> 32)
            self.w(Reg.QueueDriverLow, avail & 0xFFFF_FFFF)
            self.w(Reg.QueueDriverHigh, avail >> 32)
            self.w(Reg.QueueDeviceLow, used & 0xFFFF_FFFF)
            self.w(Reg.QueueDeviceHigh, used >> 32)
            self.w(Reg.QueueReady, 1)
        else:
            align = 4096
            base = self.arena.alloc(legacy_ring_size(size, align), 4096)
            self.mem.write(base, bytes(legacy_ring_size(size, align)))
            self.w(Reg.QueueAlign, align)
            self.w(Reg.QueuePFN, base >> 12)
            desc, avail, used = legacy_ring_layout(base >> 12, 4096, align, size)
        q = DriverQueue(self, index, size, desc, avail, used)
        self.queues[index] = q
        return q

    def init(self, accept: int | None = None, nqueues: int = 2) -> list[DriverQueue]:
        """The whole handshake: reset, negotiate, set up nqueues queues, DRIVER_OK."""
        self.probe()
        self.reset()
        self.negotiate(accept)
        qs = [self.setup_queue(i) for i in range(nqueues)]
        self.driver_ok()
        return qs

    # --- config and interrupts -----------------------------------------------------------------------------

    def config_read(self, offset: int, size: int = 4) -> int:
        if self.version == 1:   # Linux's legacy vm_get reads byte by byte
            return int.from_bytes(bytes(self.dev.read(VIRTIO_MMIO_CONFIG + offset + i, 1)
                                        for i in range(size)), "little")
        return self.dev.read(VIRTIO_MMIO_CONFIG + offset, size)

    def config_write(self, offset: int, size: int, value: int, bytewise: bool | None = None) -> None:
        if bytewise is None:
            bytewise = self.version == 1
        if bytewise:
            for i, b in enumerate(value.to_bytes(size, "little")):
                self.dev.write(VIRTIO_MMIO_CONFIG + offset + i, 1, b)
        else:
            self.dev.write(VIRTIO_MMIO_CONFIG + offset, size, value)

    def ack_interrupt(self) -> int:
        """What Linux's vm_interrupt does first: read InterruptStatus, write it back to InterruptACK."""
        status = self.r(Reg.InterruptStatus)
        if status:
            self.w(Reg.InterruptACK, status)
        return status


class DriverQueue:
    """The driver's side of one split virtqueue."""

    def __init__(self, drv: VirtioDriver, index: int, size: int, desc: int, avail: int, used: int) -> None:
        self.drv = drv
        self.mem = drv.mem
        self.index = index
        self.size = size
        self.desc = desc
        self.avail = avail
        self.used = used
        self.free = list(range(size - 1, -1, -1))   # a stack: the last freed is reused first, as in Linux
        self.avail_idx = 0
        self.last_used = 0
        self.chains: dict[int, list[int]] = {}
        self.event_idx = bool(drv.features & EVENT_IDX)
        self._buffers: dict[int, tuple[int, int]] = {}
        self.kicks = 0

    # --- low level (also for hostile tests) -------------------------------------------------------------

    def write_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0,
                   table: int | None = None) -> None:
        base = self.desc if table is None else table
        self.mem.write(base + 16 * i, _DESC.pack(addr, length, flags, nxt))

    def push_avail(self, head: int) -> None:
        self.mem.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.write_u16(self.avail + 2, self.avail_idx)

    def set_avail_idx(self, idx: int) -> None:
        self.avail_idx = idx & 0xFFFF
        self.mem.write_u16(self.avail + 2, self.avail_idx)

    def buffer(self, slot: int, size: int) -> int:
        """A data buffer for descriptor slot, reused across chains."""
        gpa, cap = self._buffers.get(slot, (0, 0))
        if cap < size:
            cap = max(size, 64)
            gpa = self.drv.arena.alloc(cap, 16)
            self._buffers[slot] = (gpa, cap)
        return gpa

    # --- posting and reaping ------------------------------------------------------------------------------

    def add(self, out: Iterable[bytes] = (), in_lens: Iterable[int] = (), indirect: bool = False) -> int:
        """Post a chain: device-readable buffers with these bytes, then writable buffers of these sizes."""
        out = list(out)
        in_lens = list(in_lens)
        n = len(out) + len(in_lens)
        if n == 0:
            raise ValueError("empty chain")
        pieces: list[tuple[int, int, int]] = []
        head = self.free.pop()
        taken = [head]
        if indirect:
            table = self.buffer(self.size + head, 16 * n)
            for k, data in enumerate(out):
                gpa = self.buffer(2 * self.size + head * 64 + k, len(data))
                self.mem.write(gpa, data)
                pieces.append((gpa, len(data), 0))
            for k, ln in enumerate(in_lens):
                gpa = self.buffer(2 * self.size + head * 64 + len(out) + k, ln)
                pieces.append((gpa, ln, WRITE))
            for k, (gpa, ln, fl) in enumerate(pieces):
                self.write_desc(k, gpa, ln, fl | (NEXT if k + 1 < n else 0), k + 1, table=table)
            self.write_desc(head, table, 16 * n, INDIRECT)
        else:
            if len(self.free) < n - 1:
                self.free.append(head)
                raise MemoryError("queue full")
            taken += [self.free.pop() for _ in range(n - 1)]
            for k, data in enumerate(out):
                gpa = self.buffer(taken[k], len(data))
                self.mem.write(gpa, data)
                pieces.append((gpa, len(data), 0))
            for k, ln in enumerate(in_lens):
                gpa = self.buffer(taken[len(out) + k], ln)
                pieces.append((gpa, ln, WRITE))
            for k, (gpa, ln, fl) in enumerate(pieces):
                nxt = taken[k + 1] if k + 1 < n else 0
                self.write_desc(taken[k], gpa, ln, fl | (NEXT if k + 1 < n else 0), nxt)
        self.chains[head] = taken
        self.push_avail(head)
        return head

    def kick(self, force: bool = False) -> bool:
        """Notify the device unless it asked not to be (VIRTQ_USED_F_NO_NOTIFY or avail_event)."""
        if not force:
            if self.event_idx:
                avail_event = self.mem.read_u16(self.used + 4 + 8 * self.size)
                # Notify if avail_event lies among the entries added since the last kick.
                new, old = self.avail_idx, getattr(self, "_kicked_idx", 0)
                if not ((new - avail_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF):
                    self._kicked_idx = new
                    return False
            elif self.mem.read_u16(self.used) & 1:
                return False
        self._kicked_idx = self.avail_idx
        self.kicks += 1
        self.drv.w(Reg.QueueNotify, self.index)
        return True

    def used_idx(self) -> int:
        return self.mem.read_u16(self.used + 2)

    def reap(self) -> list[tuple[int, int]]:
        """The (id, len) of every used element since the last reap; their descriptors are freed."""
        out = []
        idx = self.used_idx()
        while self.last_used != idx:
            slot = self.used + 4 + 8 * (self.last_used % self.size)
            elem_id, length = struct.unpack("<II", self.mem.read(slot, 8))
            out.append((elem_id, length))
            self.free.extend(reversed(self.chains.pop(elem_id, [])))
            self.last_used = (self.last_used + 1) & 0xFFFF
        if self.event_idx:
            self.mem.write_u16(self.avail + 4 + 2 * self.size, self.last_used)  # used_event
        return out

    def no_interrupt(self, on: bool) -> None:
        """VIRTQ_AVAIL_F_NO_INTERRUPT (without event idx): ask the device not to interrupt."""
        self.mem.write_u16(self.avail, VIRTQ_AVAIL_F_NO_INTERRUPT if on else 0)

    def set_used_event(self, idx: int) -> None:
        self.mem.write_u16(self.avail + 4 + 2 * self.size, idx & 0xFFFF)


# --- the balloon half of the driver ------------------------------------------------------------------------

MTH = int(BalloonFeature.VIRTIO_BALLOON_F_MUST_TELL_HOST)
STATS_VQ = int(BalloonFeature.VIRTIO_BALLOON_F_STATS_VQ)
DEFLATE_ON_OOM = int(BalloonFeature.VIRTIO_BALLOON_F_DEFLATE_ON_OOM)
PAGE_POISON = int(BalloonFeature.VIRTIO_BALLOON_F_PAGE_POISON)
PAGE_REPORTING = int(BalloonFeature.VIRTIO_BALLOON_F_PAGE_REPORTING)


class BalloonDriver:
    """What Linux's virtio_balloon.c does, at the register level: queues named densely, PFN batches."""

    def __init__(self, dev, mem: GuestMemory, arena: tuple[int, int] | None = None) -> None:
        self.drv = VirtioDriver(dev, mem, arena)
        self.mem = mem
        self.q: dict[str, DriverQueue] = {}
        self.stats_head: int | None = None

    def start(self, accept: int | None = None, stats: list[tuple[int, int]] | None = None,
              poison_val: int | None = None, accept_transport: int | None = None) -> int:
        drv = self.drv
        if drv.probe() != 5:
            raise DriverError("not a balloon")
        drv.reset()
        features = drv.negotiate(accept, accept_transport)
        names = ["inflateq", "deflateq"]
        if features & STATS_VQ:
            names.append("statsq")
        if features & PAGE_REPORTING:
            names.append("reporting_vq")
        for i, name in enumerate(names):   # densely, as vm_find_vqs numbers them
            self.q[name] = drv.setup_queue(i)
        if poison_val is not None and features & PAGE_POISON:
            drv.config_write(12, 4, poison_val)
        drv.driver_ok()
        if features & STATS_VQ:
            self.stats_head = self.q["statsq"].add([encode_stats(stats or [])])
            self.q["statsq"].kick()
        return features

    def _post(self, name: str, pfns: Iterable[int]) -> list[tuple[int, int]]:
        q = self.q[name]
        pfns = list(pfns)
        q.add([struct.pack(f"<{len(pfns)}I", *pfns)])
        q.kick()
        used = q.reap()
        self.drv.ack_interrupt()
        return used

    def inflate(self, pfns: list[int]) -> list[tuple[int, int]]:
        return self._post("inflateq", pfns)

    def deflate(self, pfns: list[int]) -> list[tuple[int, int]]:
        return self._post("deflateq", pfns)

    def num_pages(self) -> int:
        return self.drv.config_read(0, 4)

    def actual(self) -> int:
        return self.drv.config_read(4, 4)

    def set_actual(self, pages: int, bytewise: bool | None = None) -> None:
        self.drv.config_write(4, 4, pages, bytewise)

    def answer_stats(self, stats: list[tuple[int, int]] | bytes) -> bool:
        """If the device returned the stats buffer, refill it and kick (stats_handle_request)."""
        q = self.q["statsq"]
        if not q.reap():
            return False
        data = stats if isinstance(stats, bytes) else encode_stats(stats)
        self.stats_head = q.add([data])
        q.kick()
        return True

    def report(self, ranges: list[tuple[int, int]], indirect: bool = False) -> list[tuple[int, int]]:
        """Free page reporting: a scatter-gather list of (gpa, length), device-writable as Linux posts it."""
        q = self.q["reporting_vq"]
        head = q.free.pop()
        taken = [head]
        n = len(ranges)
        if indirect:
            table = q.buffer(q.size + head, 16 * n)
            for k, (gpa, ln) in enumerate(ranges):
                q.write_desc(k, gpa, ln, WRITE | (NEXT if k + 1 < n else 0), k + 1, table=table)
            q.write_desc(head, table, 16 * n, INDIRECT)
        else:
            taken += [q.free.pop() for _ in range(n - 1)]
            for k, (gpa, ln) in enumerate(ranges):
                q.write_desc(taken[k], gpa, ln, WRITE | (NEXT if k + 1 < n else 0),
                             taken[k + 1] if k + 1 < n else 0)
        q.chains[head] = taken
        q.push_avail(head)
        q.kick()
        used = q.reap()
        self.drv.ack_interrupt()
        return used


def encode_stats(entries: list[tuple[int, int]]) -> bytes:
    """Packed 10-byte {le16 tag, le64 val} entries."""
    return b"".join(struct.pack("<HQ", tag, val) for tag, val in entries)


class Rig:
    """A balloon behind a virtio-mmio window on test memory, with a recording IRQ line and the driver."""

    def __init__(self, version: int = 2, ram: int = 16 << 20, options=None, anonymous: bool = False,
                 tracer=None, discard=None, host_page_size: int = 4096, layout=None) -> None:
        from pyvmm.irq import RecordingIrqLine
        from pyvmm.virtio.balloon import VirtioBalloon
        from pyvmm.virtio.mmio import VirtioMmio

        if layout is not None:
            self.mem = GuestMemory.anonymous(layout) if anonymous else GuestMemory(
                [MemoryRegion(gpa, size, bytearray(size)) for gpa, size in layout])
        else:
            self.mem = GuestMemory.anonymous([(0, ram)]) if anonymous else GuestMemory.from_bytearray(ram)
        self.discards: list[tuple[int, int]] = []

        def recording_discard(gpa: int, length: int) -> None:
            self.discards.append((gpa, length))
            (discard or self.mem.discard)(gpa, length)

        self.irq = RecordingIrqLine()
        self.balloon = VirtioBalloon(self.mem, options, discard=recording_discard, host_page_size=host_page_size)
        self.dev = VirtioMmio(self.balloon, self.mem, self.irq, version=version, name="balloon0", tracer=tracer)
        self.driver = BalloonDriver(self.dev, self.mem)
        self.drv = self.driver.drv

    def close(self) -> None:
        self.balloon.close()
