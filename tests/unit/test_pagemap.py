"""`info tlb`'s page-table listing and `info lapic`/`info pic`'s decoding, on page tables and register
images built here (no KVM)."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import pytest

from pyvmm.arch.x86 import irqchip, pagemap
from pyvmm.arch.x86.paging import translate
from pyvmm.kvm import abi
from pyvmm.memory import GuestMemory

P, RW, US, PS = 1, 2, 4, 0x80
NX = 1 << 63
CR0_PG, CR4_PAE, EFER_LMA = 1 << 31, 1 << 5, 1 << 10


@pytest.fixture
def mem():
    m = GuestMemory.anonymous([(0, 16 << 20)])
    yield m
    m.close()


def long_mode(cr3: int):
    return SimpleNamespace(cr0=CR0_PG | 1, cr3=cr3, cr4=CR4_PAE, efer=EFER_LMA | (1 << 8))


def build(mem) -> None:
    # PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000: 0-8 MiB identity in four 2 MiB pages, kernel RW;
    # PDPT[1] (1 GiB) -> PD 0x4000 -> PT 0x5000: va 0x40000000 -> pa 0x9000, user RW, no-execute, and
    # va 0x40001000 -> pa 0xa000, user read-only.
    mem.write_u64(0x1000, 0x2000 | P | RW | US)
    mem.write_u64(0x2000, 0x3000 | P | RW)
    for i in range(4):
        mem.write_u64(0x3000 + 8 * i, (i << 21) | P | RW | PS)
    mem.write_u64(0x2008, 0x4000 | P | RW | US)
    mem.write_u64(0x4000, 0x5000 | P | RW | US)
    mem.write_u64(0x5000, 0x9000 | P | RW | US | NX)
    mem.write_u64(0x5008, 0xA000 | P | US)


def test_runs_merge_contiguous_pages_with_the_same_rights(mem):
    build(mem)
    maps = pagemap.mappings(mem, long_mode(0x1000))
    assert [(m.va, m.pa, m.page_size, m.count) for m in maps] == [
        (0, 0, 2 << 20, 4), (0x40000000, 0x9000, 4096, 1), (0x40001000, 0xA000, 4096, 1)]
    kernel, data, ro = maps
    assert kernel.rights() == "X------W"          # executable, kernel only, writable
    assert data.rights() == "------UW" and ro.rights() == "X-----U-"


def test_every_listed_page_translates_as_the_walk_does(mem):
    build(mem)
    sregs = long_mode(0x1000)
    for m in pagemap.mappings(mem, sregs):
        for k in range(m.count):
            va = m.va + k * m.page_size
            assert translate(mem, sregs, va + 0x123) == m.pa + k * m.page_size + 0x123


def test_paging_modes(mem):
    assert pagemap.paging_mode(SimpleNamespace(cr0=1, cr4=0, efer=0)) == "off"
    assert pagemap.paging_mode(SimpleNamespace(cr0=CR0_PG, cr4=0, efer=0)) == "32-bit"
    assert pagemap.paging_mode(SimpleNamespace(cr0=CR0_PG, cr4=CR4_PAE, efer=0)) == "PAE"
    assert pagemap.paging_mode(long_mode(0)) == "4-level"
    assert list(pagemap.leaves(mem, SimpleNamespace(cr0=1, cr3=0, cr4=0, efer=0))) == []


def test_32_bit_tables_with_a_4m_page(mem):
    mem.write_u32(0x1000, 0x00400000 | P | RW | PS)      # PDE 0: 4 MiB at 4 MiB (PSE)
    mem.write_u32(0x1004, 0x2000 | P | RW | US)          # PDE 1 -> PT
    mem.write_u32(0x2000 + 4 * 3, 0x7000 | P | US)       # va 0x403000 -> 0x7000, user read-only
    sregs = SimpleNamespace(cr0=CR0_PG | 1, cr3=0x1000, cr4=1 << 4, efer=0)
    maps = pagemap.mappings(mem, sregs)
    assert [(m.va, m.pa, m.page_size) for m in maps] == [(0, 0x400000, 4 << 20), (0x403000, 0x7000, 4096)]
    assert maps[1].rights().endswith("U-")


def test_lapic_decoding_names_the_registers():
    regs = bytearray(1024)

    def put(reg: int, value: int) -> None:
        regs[reg:reg + 4] = value.to_bytes(4, "little")

    put(irqchip.ApicReg.APIC_ID, 1 << 24)
    put(irqchip.ApicReg.APIC_LVR, 0x50014)
    put(irqchip.ApicReg.APIC_SPIV, 0x1FF)
    put(irqchip.ApicReg.APIC_LVTT, 0x200EC)              # periodic, vector 236
    put(irqchip.ApicReg.APIC_LVT0, 0x10700)              # ExtINT, masked
    put(irqchip.ApicReg.APIC_TDCR, 0x3)
    put(irqchip.ApicReg.APIC_TMICT, 1000)
    put(irqchip.ApicReg.APIC_ISR + 0x70, 1 << 31)        # vector 255 in service
    text = irqchip.format_lapic(1, bytes(regs), 0xFEE00900)
    assert "APIC ID 1" in text and "6 LVT entries" in text
    assert "xAPIC, enabled, BSP" in text
    assert "periodic" in text and "(vec 236)" in text
    assert "LVT0     0x00010700 active-hi edge  masked" in text and "ExtINT" in text
    assert "divide by 16" in text and "initial_count = 1000" in text
    assert "APIC enabled" in text and "spurious vec 255" in text
    assert "ISR      255" in text and "IRR      (none)" in text


def test_pic_and_ioapic_lines():
    pic = abi.kvm_pic_state(irr=1, imr=0xB8, isr=0, irq_base=0x20, elcr=0x0C)
    assert irqchip.format_pic("pic0", pic) == \
        "pic0: irr=01 imr=b8 isr=00 hprio=0 irq_base=20 rr_sel=0 elcr=0c fnm=0"
    ioapic = abi.kvm_ioapic_state(base_address=0xFEC00000, irr=1 << 4)
    ioapic.redirtbl[4] = (1 << 16) | 0x24
    ioapic.redirtbl[5] = (1 << 15) | (1 << 14) | 0x25
    text = irqchip.format_ioapic(ioapic)
    assert "pin 4  0x0000000000010024 dest=0 vec=36  active-hi edge  masked fixed" in text
    assert "pin 5  0x000000000000c025 dest=0 vec=37  active-hi level        fixed" in text
    assert "IRR        4" in text and "Remote IRR 5" in text
    assert ctypes.sizeof(ioapic) == ctypes.sizeof(abi.kvm_ioapic_state)
