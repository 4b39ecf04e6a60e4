"""x86 CPU state: the PVH 32-bit entry state, the CPUID handed to each vCPU, and register dumps."""

from __future__ import annotations

import struct

from ...kvm import abi
from . import layout

X86_CR0_PE = 1 << 0
X86_CR0_ET = 1 << 4
X86_CR0_PG = 1 << 31
EFER_LME = 1 << 8
EFER_LMA = 1 << 10

# GDT used by the direct (firmware-less) entry: null, null, 32-bit code (0x10), data (0x18), TSS (0x20).
BOOT_CS = 0x10
BOOT_DS = 0x18
BOOT_TSS = 0x20
_GDT = [0, 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF, 0x00008B0000000067]


def write_boot_gdt(mem) -> None:
    mem.write(layout.BOOT_GDT, struct.pack(f"<{len(_GDT)}Q", *_GDT))


def _flat(selector: int, type_: int, *, db: int = 1) -> abi.kvm_segment:
    return abi.kvm_segment(base=0, limit=0xFFFFFFFF, selector=selector, type=type_, present=1, dpl=0,
                           db=db, s=1, l=0, g=1)


def set_pvh_entry_state(vcpu, entry: int, start_info: int) -> None:
    """The state the PVH ABI promises at the 32-bit entry: protected mode, paging off, flat 4 GiB
    segments, EBX = hvm_start_info, interrupts off (Xen's docs/misc/pvh.pandoc)."""
    sregs = vcpu.get_sregs()
    code = _flat(BOOT_CS, 0xB)
    data = _flat(BOOT_DS, 0x3)
    sregs.cs = code
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = abi.kvm_segment(base=0, limit=0x67, selector=BOOT_TSS, type=0xB, present=1, s=0)
    sregs.gdt.base = layout.BOOT_GDT
    sregs.gdt.limit = len(_GDT) * 8 - 1
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET
    sregs.cr4 = 0
    sregs.efer = 0
    vcpu.set_sregs(sregs)
    regs = abi.kvm_regs(rip=entry, rbx=start_info, rflags=0x2)
    vcpu.set_regs(regs)


def setup_cpuid(kvm, vcpu, index: int, num_cpus: int, *, passthrough: bool) -> None:
    """KVM_SET_CPUID2 from what KVM supports, through pyvmm's CPU policy (arch/x86/cpuid.py): this
    vCPU's APIC ID and topology, and, unless passthrough, the features this host cannot emulate
    masked."""
    from .cpuid import apply_policy

    supported = kvm.get_supported_cpuid()
    entries = [(e.function, e.index, e.eax, e.ebx, e.ecx, e.edx, e.flags)
               for e in supported.entries[: supported.nent]]
    policy = apply_policy(entries, passthrough=passthrough, num_cpus=num_cpus, cpu_index=index)
    out = abi.cpuid2_type(len(policy))()
    out.nent = len(policy)
    for i, e in enumerate(policy):
        out.entries[i] = abi.kvm_cpuid_entry2(function=e.function, index=e.index, flags=e.flags,
                                              eax=e.eax, ebx=e.ebx, ecx=e.ecx, edx=e.edx)
    vcpu.set_cpuid2(out)


# The 64-bit entry of the Linux boot protocol (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"):
# paging on with an identity map, __BOOT_CS = 0x10 a 64-bit code segment, __BOOT_DS = 0x18 flat data.
_GDT64 = [0, 0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF]
X86_CR4_PAE = 1 << 5


def write_identity_page_tables(mem, base: int = layout.BOOT_PAGE_TABLES) -> int:
    """PML4, one PDPT and four page directories of 2 MiB pages mapping the first 4 GiB; returns CR3."""
    pml4, pdpt, pd = base, base + 0x1000, base + 0x2000
    mem.write(pml4, struct.pack("<Q", pdpt | 0x3) + bytes(4096 - 8))
    mem.write(pdpt, struct.pack("<4Q", *[(pd + i * 0x1000) | 0x3 for i in range(4)]) + bytes(4096 - 32))
    entries = struct.pack("<2048Q", *[(i << 21) | 0x83 for i in range(2048)])   # present, RW, 2 MiB
    mem.write(pd, entries)
    return pml4


def set_linux64_entry_state(vcpu, mem, entry: int, boot_params: int) -> None:
    """The register state the 64-bit boot protocol asks for: long mode, identity-mapped paging,
    RSI = boot_params, interrupts off."""
    mem.write(layout.BOOT_GDT, struct.pack(f"<{len(_GDT64)}Q", *_GDT64))
    cr3 = write_identity_page_tables(mem)
    sregs = vcpu.get_sregs()
    code = abi.kvm_segment(base=0, limit=0xFFFFFFFF, selector=0x10, type=0xB, present=1, dpl=0, db=0, s=1,
                           l=1, g=1)
    data = _flat(0x18, 0x3)
    sregs.cs = code
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.gdt.base = layout.BOOT_GDT
    sregs.gdt.limit = len(_GDT64) * 8 - 1
    sregs.cr3 = cr3
    sregs.cr4 = X86_CR4_PAE
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG
    sregs.efer = EFER_LME | EFER_LMA
    vcpu.set_sregs(sregs)
    vcpu.set_regs(abi.kvm_regs(rip=entry, rsi=boot_params, rflags=0x2))


# ---- register dumps ---------------------------------------------------------------------------

_RFLAGS = [(0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"), (10, "DF"),
           (11, "OF")]


def mode_name(sregs) -> str:
    """"real mode", "32-bit protected mode with paging", "64-bit long mode", ..."""
    if not sregs.cr0 & X86_CR0_PE:
        return "real mode"
    if sregs.efer & EFER_LMA:
        return "64-bit long mode" if sregs.cs.l else "compatibility mode"
    return "32-bit protected mode" + (" with paging" if sregs.cr0 & X86_CR0_PG else "") if sregs.cs.db \
        else "16-bit protected mode"


def _seg(name: str, s, real: bool) -> str:
    if real:
        return f"{name:<3}={s.selector:04x} base={s.base:08x} limit={s.limit:05x}"
    kind = ("code" if s.type & 8 else "data") if s.s else "system"
    return (f"{name:<3}={s.selector:04x} base={s.base:016x} limit={s.limit:08x} type={s.type:x}({kind}) "
            f"dpl={s.dpl} {'P' if s.present else 'np'}{' L' if s.l else ''}{' D' if s.db else ''}"
            f"{' G' if s.g else ''}{' unusable' if s.unusable else ''}")


def format_registers(regs, sregs) -> str:
    """A register dump in the spirit of QEMU's `info registers` and kvmtool's crash dump."""
    r = regs
    flags = " ".join(n for bit, n in _RFLAGS if r.rflags >> bit & 1)
    real = not sregs.cr0 & X86_CR0_PE
    lines = [
        f"mode: {mode_name(sregs)}",
        f"RAX={r.rax:016x} RBX={r.rbx:016x} RCX={r.rcx:016x} RDX={r.rdx:016x}",
        f"RSI={r.rsi:016x} RDI={r.rdi:016x} RBP={r.rbp:016x} RSP={r.rsp:016x}",
        f"R8 ={r.r8:016x} R9 ={r.r9:016x} R10={r.r10:016x} R11={r.r11:016x}",
        f"R12={r.r12:016x} R13={r.r13:016x} R14={r.r14:016x} R15={r.r15:016x}",
        f"RIP={r.rip:016x} RFLAGS={r.rflags:08x} [{flags}]",
        f"CR0={sregs.cr0:08x} CR2={sregs.cr2:016x} CR3={sregs.cr3:016x} CR4={sregs.cr4:08x} "
        f"EFER={sregs.efer:08x}",
    ]
    for name in ("cs", "ds", "es", "ss", "fs", "gs"):
        lines.append(_seg(name.upper(), getattr(sregs, name), real))
    lines.append(_seg("TR", sregs.tr, False))
    lines.append(f"GDT=base {sregs.gdt.base:016x} limit {sregs.gdt.limit:04x}  "
                 f"IDT=base {sregs.idt.base:016x} limit {sregs.idt.limit:04x}")
    return "\n".join(lines)


def linear_rip(regs, sregs) -> int:
    """The linear address of the next instruction (CS.base + RIP outside long mode)."""
    if sregs.efer & EFER_LMA and sregs.cs.l:
        return regs.rip
    return (sregs.cs.base + regs.rip) & 0xFFFFFFFF


def code_bits(sregs) -> int:
    """16, 32 or 64: the width the CPU decodes instructions at."""
    if sregs.efer & EFER_LMA and sregs.cs.l:
        return 64
    return 32 if sregs.cr0 & X86_CR0_PE and sregs.cs.db else 16


def disassemble(code: bytes, address: int, bits: int, count: int = 1) -> str:
    """The first instruction(s) of ``code`` with capstone when it is installed, else the bytes."""
    try:
        import capstone
    except ImportError:
        return code.hex(" ")
    mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[bits]
    md = capstone.Cs(capstone.CS_ARCH_X86, mode)
    out = [f"{i.mnemonic} {i.op_str}".strip() for i in md.disasm(code, address, count)]
    return "; ".join(out) if out else f"(undecodable) {code.hex(' ')}"
