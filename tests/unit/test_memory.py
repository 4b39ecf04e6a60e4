"""GuestMemory: bounds checks by gpa, regions, and discard that really frees host memory."""

import mmap

import pytest

from pyvmm.arch.x86 import layout
from pyvmm.errors import GuestMemoryError
from pyvmm.memory import GuestMemory


def test_read_write_and_bounds():
    mem = GuestMemory.from_bytearray(1 << 20)
    mem.write(0x1000, b"abc")
    assert mem.read(0x1000, 3) == b"abc"
    mem.write_u32(0x2000, 0xDEADBEEF)
    assert mem.read_u32(0x2000) == 0xDEADBEEF
    mem.write_u64(0x3000, 1 << 63)
    assert mem.read_u64(0x3000) == 1 << 63
    mem.write_u16(0x4000, 0x1_2345)   # truncated to 16 bits
    assert mem.read_u16(0x4000) == 0x2345
    for gpa, n in [((1 << 20) - 2, 4), (1 << 20, 1), (-1, 1), (0, (1 << 20) + 1)]:
        with pytest.raises(GuestMemoryError):
            mem.read(gpa, n)
    with pytest.raises(GuestMemoryError):
        mem.write((1 << 20) - 1, b"xy")
    with pytest.raises(GuestMemoryError):
        mem.read_u64((1 << 20) - 4)
    assert mem.contains(0, 1 << 20) and not mem.contains(1, 1 << 20)


def test_two_regions_and_the_hole():
    mem = GuestMemory([*GuestMemory.from_bytearray(0x10000).regions,
                       *GuestMemory.from_bytearray(0x10000, gpa=0x100000).regions])
    mem.write(0x100000, b"hi")
    assert mem.read(0x100000, 2) == b"hi"
    assert mem.ram_size == 0x20000 and mem.end == 0x110000
    with pytest.raises(GuestMemoryError):
        mem.read(0xFFFF, 2)            # crosses out of region 0 into the hole
    with pytest.raises(GuestMemoryError):
        mem.read(0x20000, 1)           # in the hole


def test_ram_layout_splits_around_the_mmio_hole():
    assert layout.ram_layout(256 << 20) == [(0, 256 << 20)]
    four = 4 << 30
    assert layout.ram_layout(four) == [(0, layout.RAM_LOW_END), (layout.HIGH_RAM_START, four - layout.RAM_LOW_END)]


def test_discard_zeroes_bytearray():
    mem = GuestMemory.from_bytearray(0x4000)
    mem.write(0x1000, b"\xaa" * 0x2000)
    mem.discard(0x1000, 0x1000)
    assert mem.read(0x1000, 0x1000) == bytes(0x1000)
    assert mem.read(0x2000, 1) == b"\xaa"
    with pytest.raises(ValueError):
        mem.discard(0x100, 0x1000)


def _resident_pages(buf: mmap.mmap) -> int:
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(None, use_errno=True)
    n = len(buf) // 4096
    vec = (ctypes.c_ubyte * n)()
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    assert libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(len(buf)), vec) == 0
    return sum(v & 1 for v in vec)


def test_discard_frees_anonymous_private_memory():
    mem = GuestMemory.anonymous([(0, 8 << 20)])
    buf = mem.regions[0].buffer
    for gpa in range(0, 8 << 20, 4096):
        mem.write(gpa, b"\x01")
    assert _resident_pages(buf) == 2048
    mem.discard(0, 4 << 20)
    assert _resident_pages(buf) == 1024
    assert mem.read(0, 1) == b"\0" and mem.read(4 << 20, 1) == b"\x01"
    mem.close()
