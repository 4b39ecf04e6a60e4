"""Write watchpoints without debug registers: the watched pages mapped read-only, so each write exits to pyvmm.

For hosts whose KVM does not deliver data breakpoints (kvm_pvm: docs/gdb.md).  A guest-physical page
with a watched range is cut out of its RAM memory slot and mapped again by itself with
KVM_MEM_READONLY (the KVM API, "KVM_SET_USER_MEMORY_REGION": writes to a read-only slot exit as
KVM_EXIT_MMIO).  The MMIO bus routes that page to a WriteTrap, which makes the write in guest RAM
and, if it touched a watched range, reports the hit; the instruction has completed when the vCPU
next enters KVM_RUN, so the vCPU stops after the write, as a hardware watchpoint would.  Reads and
instruction fetches do not exit.  Slots change only while every vCPU is held.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..memory import PAGE_SIZE

if TYPE_CHECKING:
    from ..bus import BusRange, MmioBus
    from ..kvm.vmfd import VmFd
    from ..memory import GuestMemory, MemoryRegion

log = logging.getLogger("pyvmm.gdbstub")

MAX_PAGES = 32       # watched pages at once; each costs up to two memory slots


class WriteTrap:
    """The bus device of one read-only page: does the guest's write, then reports a watched one."""

    def __init__(self, memory: GuestMemory, page: int, on_write: Callable[[int, int], None]) -> None:
        self.memory = memory
        self.page = page
        self.on_write = on_write

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.memory.read(self.page + offset, size), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        gpa = self.page + offset
        self.memory.write(gpa, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))
        self.on_write(gpa, size)


class PageWatch:
    """Which RAM pages are read-only for watchpoints, and the memory slots that make them so."""

    def __init__(self, vm: VmFd, memory: GuestMemory, mmio: MmioBus,
                 on_write: Callable[[int, int], None]) -> None:
        self.vm = vm
        self.memory = memory
        self.mmio = mmio
        self.on_write = on_write
        self.pages: set[int] = set()
        self._ranges: dict[int, BusRange] = {}
        # region -> the slots now mapping it (the build's one slot to start with)
        self._slots: dict[int, list[int]] = {}

    def _region_slots(self, region: MemoryRegion) -> list[int]:
        key = region.gpa
        if key not in self._slots:
            self._slots[key] = [slot for slot, (gpa, size, hva, ro) in self.vm.slots.items()
                                if not ro and region.gpa <= gpa < region.end]
        return self._slots[key]

    def apply(self, wanted: set[int]) -> None:
        """Make exactly the pages in ``wanted`` (page-aligned gpas in RAM) read-only; call with every
        vCPU held."""
        wanted = {p for p in wanted if self.memory.contains(p, PAGE_SIZE)}
        if wanted == self.pages:
            return
        changed = wanted ^ self.pages
        for region in self.memory.regions:
            if not any(region.gpa <= p < region.end for p in changed):
                continue
            self._remap(region, sorted(p for p in wanted if region.gpa <= p < region.end))
        for page in self.pages - wanted:
            r = self._ranges.pop(page, None)
            if r is not None:
                self.mmio.remove(r)
        for page in wanted - self.pages:
            self._ranges[page] = self.mmio.insert(WriteTrap(self.memory, page, self.on_write), page, PAGE_SIZE,
                                                  "gdb watchpoint (read-only page)")
        self.pages = wanted

    def _remap(self, region: MemoryRegion, pages: list[int]) -> None:
        """Slots for region: read-write runs between the read-only pages."""
        for slot in self._region_slots(region):
            self.vm.delete_memory_region(slot)
        slots: list[int] = []
        pos = region.gpa
        for page in pages + [region.end]:
            if page > pos:
                slots.append(self.vm.set_user_memory_region(pos, page - pos, region.hva + (pos - region.gpa)))
            if page < region.end:
                slots.append(self.vm.set_user_memory_region(page, PAGE_SIZE, region.hva + (page - region.gpa),
                                                            readonly=True))
            pos = page + PAGE_SIZE
        self._slots[region.gpa] = slots
        log.debug("RAM %#x-%#x in %d slots (%d read-only pages)", region.gpa, region.end, len(slots), len(pages))
