"""The two buses of a PC: port I/O and MMIO ranges, each routing a vCPU's exit from kvm_run to a device.

kvmtool's ioport.c and mmio.c in two small classes.  The vCPU loop hands each port-I/O or MMIO exit
to ``dispatch(run)`` with the shared kvm_run page; the bus reads the exit's fields straight out of the
page (no decoding into objects, no allocation), calls the device's ``read(offset, size)`` or
``write(offset, size, value)`` and puts a read's value back into the page for KVM to complete the
instruction.  Both are unit-tested on a kvm_run laid out in a bytearray.
"""

from __future__ import annotations

import bisect
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .kvm import runlayout

Buffer = mmap.mmap | bytearray | memoryview   # kvm_run: the vCPU's shared mapping, or a test's bytearray


class BusDevice(Protocol):
    """What a bus calls: offsets are relative to the device's base; reads return an int."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


@dataclass(frozen=True, slots=True)
class BusRange:
    base: int
    size: int
    device: BusDevice
    name: str
    # Accesses served, by offset >> hit_shift (a register of 4 bytes each in a window up to 4 KiB; a
    # larger range in up to 1024 slices), once the bus counts (count_accesses(): `pyvmm top`).
    hits: list[int] = field(default_factory=list, compare=False, repr=False)
    hit_shift: int = 2

    def hit_counts(self) -> dict[int, int]:
        """Non-zero access counts by offset into the range (each slice's first offset)."""
        return {i << self.hit_shift: n for i, n in enumerate(self.hits) if n}

    @property
    def end(self) -> int:
        return self.base + self.size


class _Ranges:
    """Non-overlapping ranges kept sorted by base, with a bisect lookup."""

    kind = "bus"
    hit_shift = 2           # MMIO counts accesses per 4-byte register

    def __init__(self) -> None:
        self.ranges: list[BusRange] = []
        self._bases: list[int] = []
        self.unhandled = 0          # accesses that found no device (reads float high, writes are dropped)

    counting = False

    def count_accesses(self) -> None:
        """From now on count every access by device and port or register (BusRange.hits): `pyvmm top`
        asks for it.  Until then dispatch does no counting at all; the vCPU loop picks the counting
        dispatch up the next time it is held (Machine.counters() holds it to start counting)."""
        self.counting = True
        self.dispatch = self._dispatch_counted    # type: ignore[method-assign]

    def _dispatch_counted(self, run: Buffer) -> None:
        raise NotImplementedError

    def dispatch(self, run: Buffer) -> None:
        raise NotImplementedError

    def insert(self, device: BusDevice, base: int, size: int, name: str) -> BusRange:
        if size <= 0:
            raise ValueError(f"{self.kind} bus: empty range for {name}")
        for r in self.ranges:
            if base < r.end and r.base < base + size:
                raise ValueError(f"{self.kind} bus: {name} at {base:#x}+{size:#x} overlaps {r.name}")
        i = bisect.bisect_left(self._bases, base)
        shift = self.hit_shift
        while (size - 1) >> shift >= 1024:
            shift += 1
        r = BusRange(base, size, device, name, [0] * (((size - 1) >> shift) + 1), shift)
        self.ranges.insert(i, r)
        self._bases.insert(i, base)
        return r

    def remove(self, r: BusRange) -> None:
        """Take a range off the bus (the gdbstub's watchpoint pages come and go)."""
        i = self.ranges.index(r)
        del self.ranges[i]
        del self._bases[i]

    def find(self, addr: int) -> BusRange | None:
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            r = self.ranges[i]
            if addr < r.base + r.size:
                return r
        return None


_IO = runlayout.IO.unpack_from
# kvm_run.mmio with its data[8] read as one little-endian u64 (x86 is little-endian, and so is the layout's
# struct), so that a write's value is a mask away and no bytes object is sliced on every exit.
assert runlayout.MMIO.format.startswith("<Q8s")
_MMIO = struct.Struct(runlayout.MMIO.format.replace("8s", "Q", 1)).unpack_from
# A read's value goes back into mmio.data with one pack_into: (pack_into, mask) by access length.
_PUT = {n: (struct.Struct(f).pack_into, (1 << (8 * n)) - 1) for n, f in ((1, "<B"), (2, "<H"), (4, "<I"), (8, "<Q"))}
_UNION = runlayout.EXIT_UNION_OFFSET
_MMIO_DATA = runlayout.MMIO_DATA_OFFSET
_IN = runlayout.KVM_EXIT_IO_IN
_OUT = runlayout.KVM_EXIT_IO_OUT


class PioBus(_Ranges):
    """The 64 KiB port space.  Ports are few: a dict from every port to (device, base) is the lookup."""

    kind = "pio"
    hit_shift = 0           # ports are counted one by one

    def __init__(self) -> None:
        super().__init__()
        self._ports: dict[int, tuple[BusDevice, int, list[int]]] = {}

    def insert(self, device: BusDevice, base: int, size: int, name: str) -> BusRange:
        if base < 0 or base + size > 0x1_0000:
            raise ValueError(f"pio bus: {name} at {base:#x}+{size:#x} is outside the 64 KiB port space")
        r = super().insert(device, base, size, name)
        for port in range(base, base + size):
            self._ports[port] = (device, base, r.hits)
        return r

    def remove(self, r: BusRange) -> None:
        super().remove(r)
        for port in range(r.base, r.end):
            self._ports.pop(port, None)

    def dispatch(self, run: Buffer) -> None:
        """Serve the KVM_EXIT_IO in ``run``: ``in``/``out`` of 1, 2 or 4 bytes, ``count`` times (rep ins/outs)."""
        direction, size, port, count, off = _IO(run, _UNION)
        entry = self._ports.get(port)
        if entry is None:
            self.unhandled += 1
            if direction == _IN:
                run[off : off + size * count] = b"\xff" * (size * count)
            return
        dev, base, _ = entry
        if count == 1:                       # the common case: one in/out, no string I/O
            if direction == _OUT:
                dev.write(port - base, size, run[off] if size == 1 else int.from_bytes(run[off : off + size], "little"))
            elif size == 1:
                run[off] = dev.read(port - base, 1) & 0xFF
            else:
                run[off : off + size] = (dev.read(port - base, size) & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            return
        mask = (1 << (8 * size)) - 1
        for p in range(off, off + size * count, size):
            if direction == _OUT:
                dev.write(port - base, size, int.from_bytes(run[p : p + size], "little"))
            else:
                run[p : p + size] = (dev.read(port - base, size) & mask).to_bytes(size, "little")


    def _dispatch_counted(self, run: Buffer) -> None:
        """dispatch(), counting the access by port (once count_accesses() was called)."""
        port = _IO(run, _UNION)[2]
        entry = self._ports.get(port)
        if entry is not None:
            entry[2][port - entry[1]] += 1
        PioBus.dispatch(self, run)


class MmioBus(_Ranges):
    """The guest-physical MMIO ranges.  A 4 KiB page -> range dict catches device windows in one probe;
    a large range, or a page two ranges share, falls back to the bisect lookup."""

    kind = "mmio"

    def __init__(self, on_unmapped: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self._pages: dict[int, BusRange | None] = {}
        self.on_unmapped = on_unmapped or (lambda what: None)

    def insert(self, device: BusDevice, base: int, size: int, name: str) -> BusRange:
        r = super().insert(device, base, size, name)
        first, last = base >> 12, (base + size - 1) >> 12
        if last - first < 16:
            for page in range(first, last + 1):
                self._pages[page] = None if page in self._pages else r   # shared page: find()
        return r

    def remove(self, r: BusRange) -> None:
        super().remove(r)
        first, last = r.base >> 12, (r.base + r.size - 1) >> 12
        for page in range(first, last + 1):
            if page in self._pages:
                shared = any(x.base >> 12 <= page <= (x.end - 1) >> 12 for x in self.ranges)
                if shared:
                    self._pages[page] = None          # find() decides
                else:
                    del self._pages[page]

    def dispatch(self, run: Buffer) -> None:
        """Serve the KVM_EXIT_MMIO in ``run``: a read or write of 1, 2, 4 or 8 bytes at a gpa."""
        gpa, data, length, is_write = _MMIO(run, _UNION)
        r = self._pages.get(gpa >> 12)
        if r is None or not r.base <= gpa < r.base + r.size:
            r = self.find(gpa)
            if r is None:
                # Nothing there: reads float high as on a PC bus, writes are dropped; both are guest
                # errors worth a (rate-limited) line.
                self.unhandled += 1
                if not is_write:
                    run[_MMIO_DATA : _MMIO_DATA + length] = b"\xff" * length
                self.on_unmapped(f"{'write to' if is_write else 'read of'} unmapped gpa {gpa:#x} ({length} bytes)")
                return
        put = _PUT.get(length)
        if is_write:
            r.device.write(gpa - r.base, length, data & (put[1] if put else (1 << (8 * length)) - 1))
        elif put is not None:
            put[0](run, _MMIO_DATA, r.device.read(gpa - r.base, length) & put[1])
        else:                                # KVM splits accesses into 1..8 bytes; 3, 5, 6, 7 are rare
            value = r.device.read(gpa - r.base, length) & ((1 << (8 * length)) - 1)
            run[_MMIO_DATA : _MMIO_DATA + length] = value.to_bytes(length, "little")

    def _dispatch_counted(self, run: Buffer) -> None:
        """dispatch(), counting the access by 4-byte register (once count_accesses() was called)."""
        gpa = _MMIO(run, _UNION)[0]
        r = self._pages.get(gpa >> 12)
        if r is None or not r.base <= gpa < r.base + r.size:
            r = self.find(gpa)
        if r is not None:
            r.hits[(gpa - r.base) >> r.hit_shift] += 1
        MmioBus.dispatch(self, run)
