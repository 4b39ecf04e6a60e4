"""The 32-bit IRET pyvmm finishes for a host whose emulator cannot (arch/x86/cpu.py finish_iret32)."""

from __future__ import annotations

import struct

from pyvmm.arch.x86 import cpu
from pyvmm.kvm import abi
from pyvmm.memory import GuestMemory

GDT = 0x1000
STACK = 0x8000


def _state(cs_selector: int = 0x08):
    mem = GuestMemory.from_bytearray(1 << 20)
    mem.write(GDT, struct.pack("<4Q", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF, 0x00CF9A000000FFFF))
    sregs = abi.kvm_sregs()
    sregs.cr0 = cpu.X86_CR0_PE | cpu.X86_CR0_ET
    sregs.cs = abi.kvm_segment(base=0, limit=0xFFFFFFFF, selector=cs_selector, type=0xB, present=1, db=1, s=1, g=1)
    sregs.ss = abi.kvm_segment(base=0, limit=0xFFFFFFFF, selector=0x10, type=0x3, present=1, db=1, s=1, g=1)
    sregs.gdt.base, sregs.gdt.limit = GDT, 31
    regs = abi.kvm_regs(rip=0x100050, rsp=STACK, rflags=0x12)
    return mem, regs, sregs


def test_pops_eip_cs_eflags_at_the_same_privilege() -> None:
    mem, regs, sregs = _state()
    mem.write(STACK, struct.pack("<III", 0x100959, 0x08, 0x246))
    assert cpu.finish_iret32(mem, regs, sregs)
    assert (regs.rip, regs.rsp, regs.rflags) == (0x100959, STACK + 12, 0x246)
    assert sregs.cs.selector == 0x08


def test_a_new_code_selector_is_loaded_from_the_gdt() -> None:
    mem, regs, sregs = _state()
    mem.write(STACK, struct.pack("<III", 0x100000, 0x18, 0x202))
    assert cpu.finish_iret32(mem, regs, sregs)
    cs = sregs.cs
    assert (cs.selector, cs.base, cs.limit, cs.db, cs.type) == (0x18, 0, 0xFFFFFFFF, 1, 0xA)


def test_cases_it_does_not_cover_are_left_alone() -> None:
    mem, regs, sregs = _state()
    mem.write(STACK, struct.pack("<III", 0x100000, 0x1B, 0x202))      # to ring 3
    assert not cpu.finish_iret32(mem, regs, sregs) and regs.rip == 0x100050
    mem.write(STACK, struct.pack("<III", 0x100000, 0x08, 0x20202))    # to virtual-8086 mode
    assert not cpu.finish_iret32(mem, regs, sregs)
    regs.rflags |= 1 << 14                                            # NT: a task return
    assert not cpu.finish_iret32(mem, regs, sregs)
    mem, regs, sregs = _state()
    sregs.cr0 = 0                                                     # real mode: KVM does that one
    assert not cpu.finish_iret32(mem, regs, sregs)
