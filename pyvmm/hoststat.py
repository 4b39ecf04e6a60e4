"""The host's view of what a VM costs: resident bytes of guest RAM (mincore) and of the whole process."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE")
_libc = ctypes.CDLL(None, use_errno=True)   # the process's own symbols: libc, without ldconfig
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
_libc.mincore.restype = ctypes.c_int
_LOW_BIT = bytes(b & 1 for b in range(256))


def _buffer_rss(buffer: Any, size: int) -> int:
    """Resident bytes of the pages under a host buffer (mmap or bytearray), by mincore(2)."""
    if size == 0:
        return 0
    anchor = ctypes.c_char.from_buffer(buffer)  # an export: keeps the buffer alive while we look
    try:
        hva = ctypes.addressof(anchor)
        start = hva & ~(_PAGE - 1)
        end = (hva + size + _PAGE - 1) & ~(_PAGE - 1)
        pages = (end - start) // _PAGE
        vec = (ctypes.c_ubyte * pages)()
        if _libc.mincore(ctypes.c_void_p(start), end - start, vec) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mincore: {os.strerror(err)}")
        # Only bit 0 means "resident"; the other bits are reserved, so mask them before counting.
        resident = pages - bytes(vec).translate(_LOW_BIT).count(0)
        return resident * _PAGE
    finally:
        del anchor


def mapping_rss(mem_or_region: Any) -> int:
    """Bytes of guest RAM resident in host memory: a GuestMemory (all regions) or one MemoryRegion.

    Uses mincore(2) on each region's host mapping, which counts exactly the pages of that mapping
    (a bytearray region is measured over the pages it spans).
    """
    regions = getattr(mem_or_region, "regions", None)
    if regions is None:
        regions = [mem_or_region]
    return sum(_buffer_rss(r.buffer, r.size) for r in regions)


def process_rss() -> int:
    """Resident set size of this process in bytes (/proc/self/statm)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def is_mmap_backed(mem: Any) -> bool:
    return all(isinstance(r.buffer, mmap.mmap) for r in getattr(mem, "regions", []))
