"""x86 address translation: the guest's page tables walked from CR3, and linear reads across pages.

The walk follows the SDM's "Paging" chapter as a debugger needs it: which guest-physical byte a
linear address names now (none, 32-bit, PAE and 4-level paging; 4 KiB, 2/4 MiB and 1 GiB pages).
It ignores protection (a debugger reads and writes what the guest could not) and sets no
accessed or dirty bits.  Page-table entries outside guest RAM make the address unmapped.
"""

from __future__ import annotations

from collections.abc import Callable

from ...errors import GuestMemoryError

X86_CR0_PG = 1 << 31
X86_CR4_PSE = 1 << 4
X86_CR4_PAE = 1 << 5
X86_CR4_LA57 = 1 << 12
EFER_LMA = 1 << 10
PAGE_SIZE = 4096
_ADDR = 0x000F_FFFF_FFFF_F000        # the physical-address bits of a PAE/4-level entry
_PS = 0x80                           # page size: this entry maps a large page


def translate(mem, sregs, linear: int) -> int | None:
    """The gpa that ``linear`` maps to under ``sregs`` (CR0, CR3, CR4, EFER), or None if unmapped.

    Without paging a linear address is physical, and 32 bits wide: a higher one names nothing (a
    64-bit kernel's virtual address before its page tables are on, for instance)."""
    if not sregs.cr0 & X86_CR0_PG:
        return linear if 0 <= linear <= 0xFFFFFFFF else None
    try:
        if sregs.efer & EFER_LMA:
            return _walk_long(mem, sregs, linear)
        linear &= 0xFFFFFFFF
        if sregs.cr4 & X86_CR4_PAE:
            pdpte = mem.read_u64((sregs.cr3 & 0xFFFFFFE0) + ((linear >> 30) & 3) * 8)
            if not pdpte & 1:
                return None
            return _walk(mem, pdpte & _ADDR, linear, ((21, 0x1FF), (12, 0x1FF)))
        pde = mem.read_u32((sregs.cr3 & 0xFFFFF000) + ((linear >> 22) & 0x3FF) * 4)
        if not pde & 1:
            return None
        if pde & _PS and sregs.cr4 & X86_CR4_PSE:
            # PSE-36: bits 13..20 of a 4 MiB PDE are physical-address bits 32..39.
            return (pde & 0xFFC00000) | ((pde >> 13) & 0xFF) << 32 | (linear & 0x3FFFFF)
        pte = mem.read_u32((pde & 0xFFFFF000) + ((linear >> 12) & 0x3FF) * 4)
        if not pte & 1:
            return None
        return (pte & 0xFFFFF000) | (linear & 0xFFF)
    except GuestMemoryError:
        return None


def _walk_long(mem, sregs, linear: int) -> int | None:
    five = bool(sregs.cr4 & X86_CR4_LA57)
    bits = 57 if five else 48
    top = linear >> (bits - 1)
    if top not in (0, (1 << (65 - bits)) - 1):       # not canonical: no page maps it
        return None
    levels: tuple[tuple[int, int], ...] = ((48, 0x1FF),) if five else ()
    levels += ((39, 0x1FF), (30, 0x1FF), (21, 0x1FF), (12, 0x1FF))
    return _walk(mem, sregs.cr3 & _ADDR, linear & ((1 << bits) - 1), levels)


def _walk(mem, table: int, linear: int, levels: tuple[tuple[int, int], ...]) -> int | None:
    for shift, mask in levels:
        entry = mem.read_u64(table + ((linear >> shift) & mask) * 8)
        if not entry & 1:
            return None
        if shift in (30, 21) and entry & _PS:
            size = 1 << shift
            return (entry & _ADDR & ~(size - 1)) | (linear & (size - 1))
        table = entry & _ADDR
    return table | (linear & 0xFFF)


def linear_pieces(mem, sregs, linear: int, length: int) -> list[tuple[int, int]] | None:
    """[(gpa, n), ...] covering [linear, linear+length) page by page, up to the first unmapped page
    (None if the first byte is unmapped)."""
    out: list[tuple[int, int]] = []
    while length > 0:
        gpa = translate(mem, sregs, linear)
        if gpa is None:
            break
        n = min(length, PAGE_SIZE - (linear & (PAGE_SIZE - 1)))
        out.append((gpa, n))
        linear += n
        length -= n
    return out or None


def read_linear(mem, sregs, linear: int, length: int,
                read: Callable[[int, int], bytes] | None = None) -> bytes:
    """The bytes at [linear, linear+length) as far as they are mapped and readable (maybe fewer,
    maybe none).  ``read(gpa, n)`` reads guest-physical memory (default: ``mem.read``, RAM only)."""
    read = read or mem.read
    out = bytearray()
    for gpa, n in linear_pieces(mem, sregs, linear, length) or ():
        try:
            out += read(gpa, n)
        except GuestMemoryError:
            break
    return bytes(out)
