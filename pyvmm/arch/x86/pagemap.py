"""The guest's page tables listed as a map, for the monitor's `info tlb`: every present leaf entry,
runs of them that map contiguous addresses with the same rights merged into one line.

QEMU's `info tlb` prints one line per page (a 4-level identity map of 4 GiB is 2048 lines of 2 MiB
pages); for teaching, a run "these 2048 entries of 2 MiB map 0-4 GiB to 0-4 GiB, writable, kernel
only" says more, and the entry counts say how the tables are built.  Walks 32-bit, PAE and 4-level
paging (the formats as in the SDM, volume 3, chapter "Paging"); paging.py translates one address.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ...errors import GuestMemoryError
from .paging import EFER_LMA, X86_CR0_PG, X86_CR4_LA57, X86_CR4_PAE, X86_CR4_PSE

# Page-table entry bits (SDM names).
PTE_P, PTE_RW, PTE_US, PTE_PWT, PTE_PCD, PTE_A, PTE_D, PTE_PS, PTE_G = (1 << i for i in range(9))
PTE_NX = 1 << 63
_ADDR = 0x000F_FFFF_FFFF_F000
MAX_LEAVES = 1 << 20          # entries walked before the listing stops (a guest may map 2^36 pages)


@dataclass(frozen=True)
class Mapping:
    """``count`` leaf entries of ``page_size`` bytes each: [va, va + size) -> [pa, pa + size)."""

    va: int
    pa: int
    page_size: int
    count: int
    flags: int                  # the effective rights: P, RW and US anded, NX ored over the levels

    @property
    def size(self) -> int:
        return self.page_size * self.count

    def rights(self) -> str:
        return "".join((
            "X" if not self.flags & PTE_NX else "-",
            "G" if self.flags & PTE_G else "-",
            "D" if self.flags & PTE_D else "-",
            "A" if self.flags & PTE_A else "-",
            "C" if self.flags & PTE_PCD else "-",
            "T" if self.flags & PTE_PWT else "-",
            "U" if self.flags & PTE_US else "-",
            "W" if self.flags & PTE_RW else "-",
        ))


def paging_mode(sregs) -> str:
    """"off", "32-bit", "PAE", "4-level" or "5-level"."""
    if not sregs.cr0 & X86_CR0_PG:
        return "off"
    if sregs.efer & EFER_LMA:
        return "5-level" if sregs.cr4 & X86_CR4_LA57 else "4-level"
    return "PAE" if sregs.cr4 & X86_CR4_PAE else "32-bit"


def _canonical(va: int, bits: int) -> int:
    return va - (1 << bits) if va & (1 << (bits - 1)) else va


def leaves(mem, sregs) -> Iterator[tuple[int, int, int, int]]:
    """Every present leaf entry as (va, pa, page size, flags), in address order."""
    mode = paging_mode(sregs)
    count = 0
    if mode == "off":
        return
    if mode == "32-bit":
        pse = bool(sregs.cr4 & X86_CR4_PSE)
        for i, pde in _entries(mem, sregs.cr3 & 0xFFFFF000, 1024, 4):
            va = i << 22
            if pse and pde & PTE_PS:
                yield va, (pde & 0xFFC00000) | ((pde >> 13) & 0xFF) << 32, 1 << 22, pde
                continue
            for j, pte in _entries(mem, pde & 0xFFFFF000, 1024, 4):
                count += 1
                if count > MAX_LEAVES:
                    return
                yield va | j << 12, pte & 0xFFFFF000, 4096, _combine(pde, pte)
        return
    if mode == "PAE":
        tops: list[tuple[int, int, int]] = [(i << 30, e & _ADDR, PTE_RW | PTE_US)
                                            for i, e in _entries(mem, sregs.cr3 & 0xFFFFFFE0, 4, 8)]
        levels: tuple[int, ...] = (21, 12)
    else:
        five = mode == "5-level"
        top_shift = 48 if five else 39
        tops = [(i << top_shift, e & _ADDR, e) for i, e in _entries(mem, sregs.cr3 & _ADDR, 512, 8)]
        levels = ((39,) if five else ()) + (30, 21, 12)
    bits = 57 if mode == "5-level" else 48
    for va, table, flags in tops:
        for leaf in _walk(mem, table, va, levels, flags):
            count += 1
            if count > MAX_LEAVES:
                return
            v, p, size, f = leaf
            yield (_canonical(v, bits) & 0xFFFF_FFFF_FFFF_FFFF if mode != "PAE" else v), p, size, f


def _entries(mem, table: int, n: int, width: int) -> Iterator[tuple[int, int]]:
    try:
        raw = mem.read(table, n * width)
    except GuestMemoryError:
        return
    for i in range(n):
        e = int.from_bytes(raw[i * width:(i + 1) * width], "little")
        if e & PTE_P:
            yield i, e


def _combine(upper: int, entry: int) -> int:
    """The rights of an entry under its upper levels: writable and user only if every level says so."""
    keep = upper & entry & (PTE_RW | PTE_US)
    return (entry & ~(PTE_RW | PTE_US)) | keep | ((upper | entry) & PTE_NX)


def _walk(mem, table: int, va: int, levels: tuple[int, ...], upper: int) -> Iterator[tuple[int, int, int, int]]:
    shift, rest = levels[0], levels[1:]
    for i, e in _entries(mem, table, 512, 8):
        v = va | i << shift
        flags = _combine(upper, e)
        if not rest or (shift in (30, 21) and e & PTE_PS):
            size = 1 << shift
            yield v, e & _ADDR & ~(size - 1), size, flags
        else:
            yield from _walk(mem, e & _ADDR, v, rest, flags)


def mappings(mem, sregs) -> list[Mapping]:
    """The leaves merged into runs: contiguous in va and pa, the same page size and rights."""
    out: list[Mapping] = []
    mask = PTE_RW | PTE_US | PTE_PWT | PTE_PCD | PTE_A | PTE_D | PTE_G | PTE_NX
    for va, pa, size, flags in leaves(mem, sregs):
        flags &= mask
        if out:
            last = out[-1]
            if (last.page_size == size and last.flags == flags and last.va + last.size == va
                    and last.pa + last.size == pa):
                out[-1] = Mapping(last.va, last.pa, size, last.count + 1, flags)
                continue
        out.append(Mapping(va, pa, size, 1, flags))
    return out
