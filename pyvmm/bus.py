"""An address bus of non-overlapping ranges that routes (address, size, value) accesses to devices."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Protocol


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

    @property
    def end(self) -> int:
        return self.base + self.size


class Bus:
    """A set of address ranges, each served by one device (kvmtool's mmio.c / ioport.c, in one class)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ranges: list[BusRange] = []
        self._bases: list[int] = []
        # 4 KiB page -> the range on it, for ranges of a few pages (device windows): the vCPU loop's
        # first lookup.  A page shared by two ranges, or a large range, is left to find().
        self.pages: dict[int, BusRange | None] = {}

    def insert(self, device: BusDevice, base: int, size: int, name: str) -> None:
        if size <= 0:
            raise ValueError(f"{self.name} bus: empty range for {name}")
        for r in self.ranges:
            if base < r.end and r.base < base + size:
                raise ValueError(f"{self.name} bus: {name} at {base:#x}+{size:#x} overlaps {r.name}")
        i = bisect.bisect_left(self._bases, base)
        r = BusRange(base, size, device, name)
        self.ranges.insert(i, r)
        self._bases.insert(i, base)
        first, last = base >> 12, (base + size - 1) >> 12
        if last - first < 16:
            for page in range(first, last + 1):
                if page in self.pages:
                    self.pages[page] = None          # shared page: fall back to find()
                else:
                    self.pages[page] = r

    def find(self, addr: int) -> BusRange | None:
        i = bisect.bisect_right(self._bases, addr) - 1
        if i >= 0:
            r = self.ranges[i]
            if addr < r.base + r.size:
                return r
        return None

    def read(self, addr: int, size: int) -> int | None:
        """The device's value, or None when nothing is mapped at addr."""
        r = self.find(addr)
        if r is None:
            return None
        return r.device.read(addr - r.base, size)

    def write(self, addr: int, size: int, value: int) -> bool:
        """True if a device took the write."""
        r = self.find(addr)
        if r is None:
            return False
        r.device.write(addr - r.base, size, value)
        return True
