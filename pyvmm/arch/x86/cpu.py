"""x86 CPU state: the 32-bit entry states (PVH, Multiboot), the CPUID handed to each vCPU, and register dumps."""

from __future__ import annotations

import enum
import struct

from ...kvm import abi
from . import layout
from .paging import translate


class Cr0(enum.IntFlag):
    """CR0 bits (Intel SDM vol. 3A, "Control Registers")."""

    PE = 1 << 0
    MP = 1 << 1
    EM = 1 << 2
    TS = 1 << 3
    ET = 1 << 4
    NE = 1 << 5
    WP = 1 << 16
    AM = 1 << 18
    NW = 1 << 29
    CD = 1 << 30
    PG = 1 << 31


class Cr4(enum.IntFlag):
    """CR4 bits (Intel SDM vol. 3A, "Control Registers")."""

    VME = 1 << 0
    PVI = 1 << 1
    TSD = 1 << 2
    DE = 1 << 3
    PSE = 1 << 4
    PAE = 1 << 5
    MCE = 1 << 6
    PGE = 1 << 7
    PCE = 1 << 8
    OSFXSR = 1 << 9
    OSXMMEXCPT = 1 << 10
    UMIP = 1 << 11
    LA57 = 1 << 12
    VMXE = 1 << 13
    SMXE = 1 << 14
    FSGSBASE = 1 << 16
    PCIDE = 1 << 17
    OSXSAVE = 1 << 18
    KL = 1 << 19
    SMEP = 1 << 20
    SMAP = 1 << 21
    PKE = 1 << 22
    CET = 1 << 23
    PKS = 1 << 24


class Efer(enum.IntFlag):
    """IA32_EFER bits (Intel SDM vol. 4, MSR 0xC0000080; AMD APM vol. 2, "Extended Feature Enable Register")."""

    SCE = 1 << 0
    LME = 1 << 8
    LMA = 1 << 10
    NXE = 1 << 11
    SVME = 1 << 12
    LMSLE = 1 << 13
    FFXSR = 1 << 14
    TCE = 1 << 15


X86_CR0_PE = int(Cr0.PE)
X86_CR0_ET = int(Cr0.ET)
X86_CR0_PG = int(Cr0.PG)
EFER_LME = int(Efer.LME)
EFER_LMA = int(Efer.LMA)

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
    _set_flat32_entry_state(vcpu, entry, ebx=start_info, eax=0)


def set_multiboot_entry_state(vcpu, entry: int, info: int) -> None:
    """The Multiboot Specification's "Machine state" (3.2): EAX = 0x2BADB002, EBX = multiboot_info,
    CS a 32-bit read/execute segment and DS, ES, FS, GS, SS 32-bit read/write segments, all with offset
    0 and limit 0xFFFFFFFF; CR0 with PG clear and PE set; EFLAGS with VM and IF clear.  A20 is on: KVM
    has no A20 gate."""
    from ...loader.multiboot import MULTIBOOT_BOOTLOADER_MAGIC

    _set_flat32_entry_state(vcpu, entry, ebx=info, eax=MULTIBOOT_BOOTLOADER_MAGIC)


def _set_flat32_entry_state(vcpu, entry: int, *, ebx: int, eax: int) -> None:
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
    regs = abi.kvm_regs(rip=entry, rbx=ebx, rax=eax, rflags=0x2)
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
X86_CR4_PAE = int(Cr4.PAE)


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


# ---- an instruction some hosts cannot emulate ------------------------------------------------------------

_EFLAGS_VM, _EFLAGS_NT = 1 << 17, 1 << 14
_EFLAGS_WRITABLE = 0x003F7FD5            # what IRET may load at CPL 0 (ID, AC, VIF, VIP, RF, NT, IOPL, ...)


def descriptor_segment(mem, sregs, selector: int) -> abi.kvm_segment | None:
    """The kvm_segment a selector's GDT descriptor describes (legacy 8-byte form), None if unusable."""
    index = selector & ~7
    if selector & 4 or index == 0 or index + 7 > sregs.gdt.limit:
        return None
    gpa = translate(mem, sregs, sregs.gdt.base + index)
    if gpa is None or not mem.contains(gpa, 8):
        return None
    d = mem.read_u64(gpa)
    access = (d >> 40) & 0xFF
    flags = (d >> 52) & 0xF
    limit = (d & 0xFFFF) | ((d >> 32) & 0xF0000)
    if flags & 0x8:
        limit = (limit << 12) | 0xFFF
    return abi.kvm_segment(base=((d >> 16) & 0xFFFFFF) | ((d >> 56) << 24), limit=limit, selector=selector,
                           type=access & 0xF, present=(access >> 7) & 1, dpl=(access >> 5) & 3,
                           db=(flags >> 2) & 1, s=(access >> 4) & 1, l=(flags >> 1) & 1, g=(flags >> 3) & 1)


def finish_iret32(mem, regs, sregs) -> bool:
    """Do a 32-bit protected-mode IRET to the same privilege level, as the SDM's IRET pseudo-code does
    (pop EIP, CS, EFLAGS), on regs and sregs in place.  KVM's instruction emulator implements IRET in
    real mode only, so a host that emulates guest code (nested kvm_pvm, 32-bit code without paging)
    fails on every interrupt return of a 32-bit kernel.  False (nothing changed) for any case this
    does not cover: a task return (NT), a return to another ring or to virtual-8086 mode."""
    if not sregs.cr0 & X86_CR0_PE or sregs.efer & EFER_LMA or not sregs.cs.db or regs.rflags & _EFLAGS_NT:
        return False
    cpl = sregs.cs.selector & 3
    esp = regs.rsp & 0xFFFF_FFFF if sregs.ss.db else regs.rsp & 0xFFFF
    gpa = translate(mem, sregs, (sregs.ss.base + esp) & 0xFFFF_FFFF)
    if gpa is None or not mem.contains(gpa, 12):
        return False
    eip, cs, eflags = struct.unpack("<III", mem.read(gpa, 12))
    cs &= 0xFFFF
    if cs & 3 != cpl or eflags & _EFLAGS_VM:
        return False
    if cs != sregs.cs.selector:
        seg = descriptor_segment(mem, sregs, cs)
        if seg is None or not seg.present or not seg.s or not seg.type & 0x8 or not seg.db:
            return False
        sregs.cs = seg
    regs.rip = eip
    regs.rsp = (regs.rsp & ~0xFFFF_FFFF) | ((esp + 12) & 0xFFFF_FFFF)
    regs.rflags = (eflags & _EFLAGS_WRITABLE) | 0x2
    return True


# ---- register dumps ---------------------------------------------------------------------------

_RFLAGS = [(0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"), (10, "DF"),
           (11, "OF")]


def inject_breakpoint(fd, regs=None) -> None:
    """Deliver an int3 as the #BP it raises: a trap, so RIP first moves past the one-byte instruction
    (``regs``: the vCPU's registers if the caller has read them already)."""
    regs = regs if regs is not None else fd.get_regs()
    regs.rip += 1
    fd.set_regs(regs)
    events = fd.get_vcpu_events()
    events.exception.injected = 1
    events.exception.nr = 3
    events.exception.has_error_code = 0
    fd.set_vcpu_events(events)


def mode_name(sregs) -> str:
    """The CPU mode sregs (kvm_sregs or kvm_sregs2) describe: real, protected, long or compatibility."""
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
