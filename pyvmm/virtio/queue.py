"""Split virtqueues over GuestMemory: descriptor chains, avail/used rings, notification suppression.

Everything here is read from guest memory the guest controls, so every index, length and address is
checked before use (spec "Split Virtqueues", device-normative parts of "The Virtqueue Descriptor
Table" and "Indirect Descriptors").  A ring that breaks a rule raises VirtqueueError, which the
transport turns into a guest-error line and DEVICE_NEEDS_RESET; it never reaches the VMM.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Any

from ..errors import GuestMemoryError
from ..memory import GuestMemory
from .abi import (
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC,
    VIRTQ_USED_ELEM,
    VIRTQ_USED_F_NO_NOTIFY,
    VirtqDescFlag,
    split_ring_sizes,
)

_DESC = VIRTQ_DESC
_USED_ELEM = VIRTQ_USED_ELEM
_NEXT = int(VirtqDescFlag.VIRTQ_DESC_F_NEXT)
_WRITE = int(VirtqDescFlag.VIRTQ_DESC_F_WRITE)
_INDIRECT = int(VirtqDescFlag.VIRTQ_DESC_F_INDIRECT)


class VirtqueueError(Exception):
    """The guest's ring breaks a rule of the spec; the device cannot go on until it is reset."""


class DescChain:
    """One available buffer: the head index and its (gpa, length) pieces, device-readable first."""

    __slots__ = ("head", "readable", "writable")

    def __init__(self, head: int, readable: list[tuple[int, int]], writable: list[tuple[int, int]]) -> None:
        self.head = head
        self.readable = readable
        self.writable = writable

    def read_all(self, mem: GuestMemory) -> bytes:
        """The device-readable bytes of the chain, concatenated."""
        if len(self.readable) == 1:
            gpa, length = self.readable[0]
            return mem.read(gpa, length)
        return b"".join(mem.read(gpa, length) for gpa, length in self.readable)

    def read_prefix(self, mem: GuestMemory, limit: int) -> bytes:
        """At most limit device-readable bytes from the start of the chain.

        The lengths are the guest's: a chain of a few huge descriptors must not make the device copy
        gigabytes just to use the first few kilobytes of them.
        """
        parts = []
        left = limit
        for gpa, length in self.readable:
            if left <= 0:
                break
            n = min(length, left)
            parts.append(mem.read(gpa, n))
            left -= n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @property
    def readable_len(self) -> int:
        return sum(length for _, length in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(length for _, length in self.writable)


@dataclass(frozen=True)
class QueueSnapshot:
    """One split virtqueue at one moment: the driver's rings as guest memory holds them, and the
    device's own indices.  What `info virtqueue` prints and the virtqueue picture draws."""

    index: int
    size: int                     # QueueSize the driver chose
    max_size: int                 # QueueSizeMax the device offers
    ready: bool
    desc_gpa: int                 # descriptor table
    avail_gpa: int                # driver area (available ring)
    used_gpa: int                 # device area (used ring)
    event_idx: bool
    last_avail: int               # the next available entry the device will take
    next_used: int                # the next used entry the device will write
    descriptors: tuple[tuple[int, int, int, int], ...] = ()   # (addr, len, flags, next) per entry
    avail_flags: int | None = None
    avail_idx: int | None = None  # avail->idx as the driver last wrote it (None: not readable)
    avail_ring: tuple[int, ...] = ()
    used_event: int | None = None
    used_flags: int | None = None
    used_idx: int | None = None   # used->idx as guest memory holds it
    used_ring: tuple[tuple[int, int], ...] = ()   # (id, len) per entry
    avail_event: int | None = None
    error: str = ""               # why the rings could not be read, if they could not
    device: str = ""              # whose queue (for pictures and notebooks)
    name: str = ""

    def labelled(self, device: str, name: str) -> QueueSnapshot:
        return replace(self, device=device, name=name)

    def plot(self, path: str | None = None) -> Any:
        """The picture of this queue (pyvmm.plot.plot_virtqueue): a matplotlib Figure, also written to
        path (PNG or SVG by its suffix) if given."""
        from ..plot import plot_virtqueue

        return plot_virtqueue(self, path, device=self.device, name=self.name)

    def _repr_html_(self) -> str:
        from ..plot import figure_html

        return figure_html(self.plot())

    @property
    def pending(self) -> int:
        """Available buffers the device has not taken yet."""
        return 0 if self.avail_idx is None else (self.avail_idx - self.last_avail) & 0xFFFF

    @property
    def in_flight(self) -> int:
        """Chains the device took and has not returned yet (every chain is returned exactly once)."""
        return (self.last_avail - self.next_used) & 0xFFFF

    def in_flight_heads(self) -> list[int]:
        """Head descriptors of the chains in flight: the last ones taken, as long as chains are
        returned in the order taken (pyvmm's devices do; the balloon holds at most its stats buffer)."""
        if not self.avail_ring:
            return []
        return sorted({self.avail_ring[(self.last_avail - 1 - k) % self.size] for k in range(self.in_flight)})

    def pending_heads(self) -> list[int]:
        if not self.avail_ring:
            return []
        return [self.avail_ring[(self.last_avail + k) % self.size] for k in range(min(self.pending, self.size))]

    def chain(self, head: int) -> list[int]:
        """The descriptor indices of the chain from head in the table (no indirect tables; at most size)."""
        out: list[int] = []
        i = head
        while 0 <= i < len(self.descriptors) and len(out) < self.size:
            out.append(i)
            _, _, flags, nxt = self.descriptors[i]
            if not flags & _NEXT:
                break
            i = nxt
        return out


class SplitQueue:
    """A split virtqueue: its driver-programmed layout and the device's indices into it."""

    def __init__(self, mem: GuestMemory, index: int, max_size: int) -> None:
        self.mem = mem
        self.index = index
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        """Back to the state after a device reset (spec "Device Reset"): not ready, nothing seen."""
        self.size = self.max_size
        self.ready = False
        self.desc = 0
        self.avail = 0
        self.used = 0
        self.pfn = 0                  # legacy QueuePFN, kept for read-back
        self.event_idx = False
        self.indirect = False
        self.last_avail = 0           # next avail ring slot the device will read
        self.next_used = 0            # next used ring slot the device will write
        self._signalled_used = 0
        self._signalled_valid = False

    # --- set-up ---------------------------------------------------------------------------------------

    def check_layout(self) -> str | None:
        """Why this queue cannot be enabled as programmed, or None if it can.

        Spec "Virtqueue Configuration": the size is a power of 2 no larger than QueueSizeMax, and the
        three areas are aligned (16/2/4) and, here, must lie wholly in guest RAM.
        """
        q = self.size
        if q == 0 or q & (q - 1) or q > self.max_size:
            return f"queue size {q} is not a power of 2 up to {self.max_size}"
        desc_len, avail_len, used_len = split_ring_sizes(q)
        for name, gpa, length, align in (
            ("descriptor table", self.desc, desc_len, 16),
            ("driver area", self.avail, avail_len, 2),
            ("device area", self.used, used_len, 4),
        ):
            if gpa % align:
                return f"{name} at {gpa:#x} is not {align}-byte aligned"
            if not self.mem.contains(gpa, length):
                return f"{name} at {gpa:#x}+{length:#x} is outside guest RAM"
        return None

    def enable(self, features_event_idx: bool, features_indirect: bool) -> None:
        self.event_idx = features_event_idx
        self.indirect = features_indirect
        self.last_avail = 0
        self.next_used = 0
        self._signalled_valid = False
        self.ready = True

    # --- the available ring -----------------------------------------------------------------------

    def avail_idx(self) -> int:
        return self.mem.read_u16(self.avail + 2)

    def has_available(self) -> bool:
        return self.avail_idx() != self.last_avail

    def pop(self) -> DescChain | None:
        """The next available chain, or None; VirtqueueError if the ring is broken."""
        try:
            idx = self.mem.read_u16(self.avail + 2)
            pending = (idx - self.last_avail) & 0xFFFF
            if pending == 0:
                if self.event_idx:
                    # Ask for a notification at the very next buffer (spec "Used Buffer Notification
                    # Suppression": avail_event), then look again in case one raced in.
                    self.mem.write_u16(self.used + 4 + 8 * self.size, self.last_avail)
                    idx = self.mem.read_u16(self.avail + 2)
                    pending = (idx - self.last_avail) & 0xFFFF
                if pending == 0:
                    return None
            if pending > self.size:
                raise VirtqueueError(
                    f"avail idx {idx} is {pending} ahead of the device, more than queue size {self.size}"
                )
            head = self.mem.read_u16(self.avail + 4 + 2 * (self.last_avail % self.size))
            chain = self._walk(head)
            self.last_avail = (self.last_avail + 1) & 0xFFFF
            return chain
        except GuestMemoryError as e:  # only if guest RAM changed under a validated ring
            raise VirtqueueError(str(e)) from None

    def unpop(self) -> None:
        """Give the chain pop() returned last back to the available ring (the device cannot use it yet)."""
        self.last_avail = (self.last_avail - 1) & 0xFFFF

    def _walk(self, head: int) -> DescChain:
        """Follow a descriptor chain from head, checking every field (spec "The Virtqueue Descriptor
        Table" and "Indirect Descriptors")."""
        size = self.size
        if head >= size:
            raise VirtqueueError(f"head descriptor index {head} >= queue size {size}")
        mem = self.mem
        table, table_len = self.desc, size
        i = head
        total = 0
        in_indirect = False
        readable: list[tuple[int, int]] = []
        writable: list[tuple[int, int]] = []
        while True:
            if i >= table_len:
                raise VirtqueueError(f"descriptor next {i} is beyond its table of {table_len}")
            total += 1
            # "A driver MUST NOT create a descriptor chain longer than the Queue Size of the device";
            # this bound also ends any loop.
            if total > size:
                raise VirtqueueError(f"descriptor chain from head {head} is longer than the queue "
                                     f"({size}) or loops")
            addr, length, flags, nxt = _DESC.unpack(mem.read(table + 16 * i, 16))
            if flags & _INDIRECT:
                if in_indirect:
                    raise VirtqueueError("indirect descriptor inside an indirect table")
                if not self.indirect:
                    raise VirtqueueError("indirect descriptor without VIRTIO_F_INDIRECT_DESC")
                if flags & _NEXT:
                    raise VirtqueueError("descriptor has both INDIRECT and NEXT")
                if length == 0 or length % 16:
                    raise VirtqueueError(f"indirect table length {length} is not a multiple of 16")
                if not mem.contains(addr, length):
                    raise VirtqueueError(f"indirect table {addr:#x}+{length:#x} is outside guest RAM")
                table, table_len, i, in_indirect = addr, length // 16, 0, True
                total -= 1  # the indirect descriptor itself carries no buffer
                continue
            if not mem.contains(addr, length):
                raise VirtqueueError(f"buffer {addr:#x}+{length:#x} is outside guest RAM")
            if flags & _WRITE:
                writable.append((addr, length))
            elif writable:
                raise VirtqueueError("device-readable descriptor after a device-writable one")
            else:
                readable.append((addr, length))
            if not flags & _NEXT:
                return DescChain(head, readable, writable)
            i = nxt

    # --- the used ring ------------------------------------------------------------------------------

    def add_used(self, head: int, length: int) -> None:
        """Return chain head with length bytes written; the element goes in before the index moves."""
        slot = self.used + 4 + 8 * (self.next_used % self.size)
        try:
            self.mem.write(slot, _USED_ELEM.pack(head, length))
            self.next_used = (self.next_used + 1) & 0xFFFF
            self.mem.write_u16(self.used + 2, self.next_used)
        except GuestMemoryError as e:
            raise VirtqueueError(str(e)) from None

    def should_notify(self) -> bool:
        """Whether the driver wants a used-buffer notification for what was added since the last one.

        Spec "Used Buffer Notification Suppression": with VIRTIO_F_EVENT_IDX, notify when used_event
        lies in [old, new); without it, unless the driver set VIRTQ_AVAIL_F_NO_INTERRUPT.
        """
        new = self.next_used
        try:
            if self.event_idx:
                old = self._signalled_used
                valid = self._signalled_valid
                self._signalled_used = new
                self._signalled_valid = True
                if not valid:
                    return True
                used_event = self.mem.read_u16(self.avail + 4 + 2 * self.size)
                return ((new - used_event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
            return not self.mem.read_u16(self.avail) & VIRTQ_AVAIL_F_NO_INTERRUPT
        except GuestMemoryError:
            return True

    def snapshot(self) -> QueueSnapshot:
        """The queue as it is now (take it under the transport's lock); a ring outside guest RAM is
        reported in ``error``, never raised."""
        base = QueueSnapshot(self.index, self.size, self.max_size, self.ready, self.desc, self.avail, self.used,
                             self.event_idx, self.last_avail, self.next_used)
        if not self.ready or not self.size:
            return base
        mem, q = self.mem, self.size
        try:
            table = mem.read(self.desc, 16 * q)
            avail = mem.read(self.avail, 6 + 2 * q)
            used = mem.read(self.used, 6 + 8 * q)
        except GuestMemoryError as e:
            return replace(base, error=str(e))
        u16 = struct.Struct("<H").unpack_from
        return replace(
            base,
            descriptors=tuple(_DESC.unpack_from(table, 16 * i) for i in range(q)),
            avail_flags=u16(avail, 0)[0], avail_idx=u16(avail, 2)[0],
            avail_ring=tuple(u16(avail, 4 + 2 * i)[0] for i in range(q)), used_event=u16(avail, 4 + 2 * q)[0],
            used_flags=u16(used, 0)[0], used_idx=u16(used, 2)[0],
            used_ring=tuple(_USED_ELEM.unpack_from(used, 4 + 8 * i) for i in range(q)),
            avail_event=u16(used, 4 + 8 * q)[0],
        )

    def set_no_notify(self, suppress: bool) -> None:
        """Tell the driver whether to skip notifications (VIRTQ_USED_F_NO_NOTIFY; without EVENT_IDX)."""
        if not self.event_idx:
            self.mem.write_u16(self.used, VIRTQ_USED_F_NO_NOTIFY if suppress else 0)
