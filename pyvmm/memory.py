"""Guest-physical memory: bounds-checked access by gpa over mmap'd RAM (or a bytearray in tests)."""

from __future__ import annotations

import bisect
import ctypes
import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import GuestMemoryError

PAGE_SIZE = 4096
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(eq=False)
class MemoryRegion:
    """One contiguous run of guest RAM: guest-physical base, size and the host buffer behind it."""

    gpa: int
    size: int
    buffer: mmap.mmap | bytearray
    name: str = "ram"

    def __post_init__(self) -> None:
        self.view = memoryview(self.buffer)
        self.end = self.gpa + self.size

    @property
    def hva(self) -> int:
        """Host virtual address of the region's first byte (what KVM_SET_USER_MEMORY_REGION takes)."""
        return ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))

    @property
    def is_mmap(self) -> bool:
        return isinstance(self.buffer, mmap.mmap)


class GuestMemory:
    """Guest RAM as a list of non-overlapping regions, addressed by guest-physical address (gpa).

    Every access is checked explicitly: Python slices clamp silently, and a guest-supplied address
    must never reach host memory outside guest RAM.  An access that crosses from one region into
    another (or into a hole) raises GuestMemoryError.
    """

    def __init__(self, regions: Iterable[MemoryRegion]) -> None:
        self.regions = sorted(regions, key=lambda r: r.gpa)
        for a, b in zip(self.regions, self.regions[1:], strict=False):
            if a.end > b.gpa:
                raise ValueError(f"memory regions overlap at {b.gpa:#x}")
        self._starts = [r.gpa for r in self.regions]
        self.ram_size = sum(r.size for r in self.regions)

    # --- construction -------------------------------------------------------------------------

    @classmethod
    def anonymous(cls, layout: Iterable[tuple[int, int]], *, prealloc: bool = False) -> GuestMemory:
        """Private anonymous mappings for (gpa, size) pairs: MADV_DONTNEED really frees them.

        ``prealloc`` (QEMU's -mem-prealloc) faults every page in up front (MAP_POPULATE), so guest
        RAM is resident from the start and what the balloon gives back shows in the host's RSS.
        """
        regions = []
        extra = getattr(mmap, "MAP_POPULATE", 0x8000) if prealloc else getattr(mmap, "MAP_NORESERVE", 0)
        for gpa, size in layout:
            buf = mmap.mmap(
                -1,
                size,
                flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | extra,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
            regions.append(MemoryRegion(gpa, size, buf))
        return cls(regions)

    @classmethod
    def from_bytearray(cls, size: int, gpa: int = 0) -> GuestMemory:
        """One region over a bytearray: the seam for device-model tests without KVM."""
        return cls([MemoryRegion(gpa, size, bytearray(size))])

    def close(self) -> None:
        for r in self.regions:
            r.view.release()
            if isinstance(r.buffer, mmap.mmap):
                try:
                    r.buffer.close()
                except BufferError:
                    pass  # a ctypes view still exists; the mapping goes with the process

    # --- lookup ---------------------------------------------------------------------------------

    def region_of(self, gpa: int, length: int = 1) -> MemoryRegion:
        """The region holding [gpa, gpa+length), or GuestMemoryError."""
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i >= 0 and length >= 0:
            r = self.regions[i]
            if gpa + length <= r.end:
                return r
        raise GuestMemoryError(gpa, length)

    def contains(self, gpa: int, length: int = 1) -> bool:
        i = bisect.bisect_right(self._starts, gpa) - 1
        return i >= 0 and length >= 0 and gpa + length <= self.regions[i].end

    @property
    def end(self) -> int:
        """One past the highest guest-physical RAM address."""
        return self.regions[-1].end if self.regions else 0

    # --- access ---------------------------------------------------------------------------------

    def view(self, gpa: int, length: int) -> memoryview:
        """A writable view of guest RAM; the range must lie inside one region."""
        r = self.region_of(gpa, length)
        off = gpa - r.gpa
        return r.view[off : off + length]

    def read(self, gpa: int, length: int) -> bytes:
        r = self.region_of(gpa, length)
        off = gpa - r.gpa
        return bytes(r.view[off : off + length])

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        length = len(data)
        r = self.region_of(gpa, length)
        off = gpa - r.gpa
        r.view[off : off + length] = data

    def read_u16(self, gpa: int) -> int:
        r = self.region_of(gpa, 2)
        return _U16.unpack_from(r.buffer, gpa - r.gpa)[0]

    def read_u32(self, gpa: int) -> int:
        r = self.region_of(gpa, 4)
        return _U32.unpack_from(r.buffer, gpa - r.gpa)[0]

    def read_u64(self, gpa: int) -> int:
        r = self.region_of(gpa, 8)
        return _U64.unpack_from(r.buffer, gpa - r.gpa)[0]

    def write_u16(self, gpa: int, value: int) -> None:
        r = self.region_of(gpa, 2)
        _U16.pack_into(r.buffer, gpa - r.gpa, value & 0xFFFF)

    def write_u32(self, gpa: int, value: int) -> None:
        r = self.region_of(gpa, 4)
        _U32.pack_into(r.buffer, gpa - r.gpa, value & 0xFFFFFFFF)

    def write_u64(self, gpa: int, value: int) -> None:
        r = self.region_of(gpa, 8)
        _U64.pack_into(r.buffer, gpa - r.gpa, value & 0xFFFFFFFFFFFFFFFF)

    # --- giving memory back -----------------------------------------------------------------------

    def discard(self, gpa: int, length: int) -> None:
        """Give [gpa, gpa+length) back to the host; the guest then reads zeros there.

        On a private anonymous mapping this is madvise(MADV_DONTNEED) on the whole run at once
        (one system call per run, not per page); on a bytearray it zero-fills.  The range must be
        page-aligned and inside one region.
        """
        if gpa % PAGE_SIZE or length % PAGE_SIZE:
            raise ValueError(f"discard of unaligned range {gpa:#x}+{length:#x}")
        if length == 0:
            return
        r = self.region_of(gpa, length)
        off = gpa - r.gpa
        if isinstance(r.buffer, mmap.mmap):
            r.buffer.madvise(mmap.MADV_DONTNEED, off, length)
        else:
            r.view[off : off + length] = bytes(length)
