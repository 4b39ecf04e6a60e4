"""The page-table walk a debugger needs: 4-level with 4 KiB, 2 MiB and 1 GiB pages, PAE, 32-bit, and holes."""

import struct
from types import SimpleNamespace

from pyvmm.arch.x86 import paging
from pyvmm.memory import GuestMemory

P, RW, PS = 1, 2, 0x80


def sregs(cr3=0, cr0=0x80000011, cr4=0x20, efer=0x500):
    return SimpleNamespace(cr0=cr0, cr3=cr3, cr4=cr4, efer=efer)


def long_mode_tables():
    """PML4 at 0x1000: VA 0 -> a 2 MiB page at 0; VA 0x40000000 -> a 1 GiB page at 0;
    VA 0xffffffff81000000 -> 4 KiB pages at 0x200000 and 0x201000."""
    mem = GuestMemory.from_bytearray(32 << 20)
    pml4, pdpt, pd, pdpt_hi, pd_hi, pt = 0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000
    mem.write_u64(pml4, pdpt | P | RW)
    mem.write_u64(pdpt, pd | P | RW)
    mem.write_u64(pd, 0 | P | RW | PS)                               # VA 0..2M -> 0..2M
    mem.write_u64(pdpt + 8, 0 | P | RW | PS)                         # VA 1G..2G -> 0..1G (1 GiB page)
    mem.write_u64(pml4 + 511 * 8, pdpt_hi | P | RW)
    mem.write_u64(pdpt_hi + 510 * 8, pd_hi | P | RW)                 # 0xffffffff80000000
    mem.write_u64(pd_hi + 8 * 8, pt | P | RW)                        # +16 MiB = 0xffffffff81000000
    mem.write_u64(pt, 0x200000 | P | RW)
    mem.write_u64(pt + 8, 0x201000 | P | RW)                          # the third page is not present
    return mem, sregs(cr3=pml4)


def test_four_level_walk():
    mem, s = long_mode_tables()
    assert paging.translate(mem, s, 0x1234) == 0x1234
    assert paging.translate(mem, s, 0x4000_0000 + 0x12_3456) == 0x12_3456
    assert paging.translate(mem, s, 0xFFFF_FFFF_8100_0010) == 0x200010
    assert paging.translate(mem, s, 0xFFFF_FFFF_8100_1FFF) == 0x201FFF
    assert paging.translate(mem, s, 0xFFFF_FFFF_8100_2000) is None
    assert paging.translate(mem, s, 0x0000_8000_0000_0000) is None     # not canonical
    assert paging.translate(mem, s, 0x200000) is None                  # PD entry 1 not present


def test_reads_across_pages_stop_at_the_first_hole():
    mem, s = long_mode_tables()
    mem.write(0x200FFE, b"ab")
    mem.write(0x201000, b"cd")
    assert paging.read_linear(mem, s, 0xFFFF_FFFF_8100_0FFE, 4) == b"abcd"
    assert len(paging.read_linear(mem, s, 0xFFFF_FFFF_8100_1FF0, 0x100)) == 0x10
    assert paging.read_linear(mem, s, 0xFFFF_FFFF_8100_2000, 4) == b""


def test_no_paging_is_physical_and_32_bits_wide():
    mem = GuestMemory.from_bytearray(1 << 20)
    s = sregs(cr0=0x11, cr4=0, efer=0)
    assert paging.translate(mem, s, 0xFFFF0) == 0xFFFF0
    assert paging.translate(mem, s, 0xFFFF_FFFF_8100_0000) is None


def test_32_bit_paging_with_4_mib_pages():
    mem = GuestMemory.from_bytearray(1 << 20)
    pd, pt = 0x1000, 0x2000
    mem.write(pd, struct.pack("<I", pt | P | RW))                          # 0..4M through a page table
    mem.write(pt + 4 * 5, struct.pack("<I", 0x7000 | P))
    mem.write(pd + 4 * 0x300, struct.pack("<I", 0x400000 | P | PS))       # 0xC0000000 -> 4 MiB at 4 MiB
    s = sregs(cr3=pd, cr4=0x10, efer=0)
    assert paging.translate(mem, s, 0x5123) == 0x7123
    assert paging.translate(mem, s, 0xC000_1234) == 0x401234
    assert paging.translate(mem, s, 0x6000) is None


def test_pae_paging():
    mem = GuestMemory.from_bytearray(1 << 20)
    pdpt, pd = 0x1000, 0x2000
    mem.write_u64(pdpt + 8 * 3, pd | P)                                    # 0xC0000000..
    mem.write_u64(pd, 0x200000 | P | PS)
    s = sregs(cr3=pdpt, cr4=0x20, efer=0)
    assert paging.translate(mem, s, 0xC000_0042) == 0x200042
    assert paging.translate(mem, s, 0x0000_0042) is None


def test_page_tables_outside_ram_map_nothing():
    mem = GuestMemory.from_bytearray(1 << 20)
    assert paging.translate(mem, sregs(cr3=0x4000_0000), 0x1000) is None
