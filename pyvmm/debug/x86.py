"""The x86-64 register file as gdb sees it: the target description XML, and each register to and from KVM's state.

One table (REGISTERS) gives gdb's register numbers, names, widths and features, in the order of the
``g`` packet; the XML is generated from it, so the two cannot disagree.  The features are gdb's own
(GDB manual, "i386 Features"): ``org.gnu.gdb.i386.core`` (general, segment selectors, x87),
``org.gnu.gdb.i386.sse`` (XMM, MXCSR) and ``org.gnu.gdb.i386.segments`` (fs_base, gs_base), and one
of pyvmm's, ``org.pyvmm.x86.system``, with KERNEL_GS_BASE, CR0, CR2, CR3, CR4, CR8 and EFER, so that
``info registers`` shows what a whole machine has.  The architecture is always i386:x86-64, as QEMU's
qemu-system-x86_64 reports it: a 64-bit register file also describes a CPU in real or protected mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..kvm import abi

MSR_KERNEL_GS_BASE = 0xC0000102
X86_CR0_PE = 1


@dataclass(frozen=True)
class Register:
    name: str
    bits: int
    feature: str
    type: str
    group: str = ""


_CORE, _SSE, _SEG, _SYS = ("org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.segments",
                           "org.pyvmm.x86.system")
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
        "r15")
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
FPU_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
CONTROL = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")

REGISTERS: tuple[Register, ...] = (
    *(Register(n, 64, _CORE, "data_ptr" if n in ("rbp", "rsp") else "int64") for n in GPRS),
    Register("rip", 64, _CORE, "code_ptr"),
    Register("eflags", 32, _CORE, "i386_eflags"),
    *(Register(n, 32, _CORE, "int32") for n in SEGMENTS),
    *(Register(f"st{i}", 80, _CORE, "i387_ext") for i in range(8)),
    *(Register(n, 32, _CORE, "int", "float") for n in FPU_CONTROL),
    *(Register(f"xmm{i}", 128, _SSE, "vec128") for i in range(16)),
    Register("mxcsr", 32, _SSE, "i386_mxcsr", "vector"),
    Register("fs_base", 64, _SEG, "int"),
    Register("gs_base", 64, _SEG, "int"),
    Register("k_gs_base", 64, _SYS, "int64"),
    Register("cr0", 64, _SYS, "x86_cr0"),
    Register("cr2", 64, _SYS, "int64"),
    Register("cr3", 64, _SYS, "int64"),
    Register("cr4", 64, _SYS, "x86_cr4"),
    Register("cr8", 64, _SYS, "int64"),
    Register("efer", 64, _SYS, "x86_efer"),
)
NUMBER = {r.name: i for i, r in enumerate(REGISTERS)}
RIP = NUMBER["rip"]
G_PACKET_SIZE = sum(r.bits for r in REGISTERS) // 8

_FLAGS = {
    # name: (size in bytes, [(field, bit)...]) -- the architectural bits by the SDM's names
    "i386_eflags": (4, [("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9),
                        ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18), ("VIF", 19),
                        ("VIP", 20), ("ID", 21)]),
    "i386_mxcsr": (4, [("IE", 0), ("DE", 1), ("ZE", 2), ("OE", 3), ("UE", 4), ("PE", 5), ("DAZ", 6), ("IM", 7),
                       ("DM", 8), ("ZM", 9), ("OM", 10), ("UM", 11), ("PM", 12), ("FZ", 15)]),
    "x86_cr0": (8, [("PE", 0), ("MP", 1), ("EM", 2), ("TS", 3), ("ET", 4), ("NE", 5), ("WP", 16), ("AM", 18),
                    ("NW", 29), ("CD", 30), ("PG", 31)]),
    "x86_cr4": (8, [("VME", 0), ("PVI", 1), ("TSD", 2), ("DE", 3), ("PSE", 4), ("PAE", 5), ("MCE", 6), ("PGE", 7),
                    ("PCE", 8), ("OSFXSR", 9), ("OSXMMEXCPT", 10), ("UMIP", 11), ("LA57", 12), ("VMXE", 13),
                    ("SMXE", 14), ("FSGSBASE", 16), ("PCIDE", 17), ("OSXSAVE", 18), ("SMEP", 20), ("SMAP", 21),
                    ("PKE", 22)]),
    "x86_efer": (8, [("SCE", 0), ("LME", 8), ("LMA", 10), ("NXE", 11), ("SVME", 12), ("LMSLE", 13),
                     ("FFXSR", 14), ("TCE", 15)]),
}
_FEATURE_FLAGS = {_CORE: ("i386_eflags",), _SSE: ("i386_mxcsr",), _SEG: (), _SYS: ("x86_cr0", "x86_cr4", "x86_efer")}
_VEC128 = """    <vector id="v4f" type="ieee_single" count="4"/>
    <vector id="v2d" type="ieee_double" count="2"/>
    <vector id="v16i8" type="int8" count="16"/>
    <vector id="v8i16" type="int16" count="8"/>
    <vector id="v4i32" type="int32" count="4"/>
    <vector id="v2i64" type="int64" count="2"/>
    <union id="vec128">
      <field name="v4_float" type="v4f"/>
      <field name="v2_double" type="v2d"/>
      <field name="v16_int8" type="v16i8"/>
      <field name="v8_int16" type="v8i16"/>
      <field name="v4_int32" type="v4i32"/>
      <field name="v2_int64" type="v2i64"/>
      <field name="uint128" type="uint128"/>
    </union>
"""


def _target_xml() -> str:
    out = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', '<target version="1.0">',
           "  <architecture>i386:x86-64</architecture>"]
    for feature in (_CORE, _SSE, _SEG, _SYS):
        out.append(f'  <feature name="{feature}">')
        for fid in _FEATURE_FLAGS[feature]:
            size, fields = _FLAGS[fid]
            out.append(f'    <flags id="{fid}" size="{size}">')
            out += [f'      <field name="{n}" start="{b}" end="{b}"/>' for n, b in fields]
            out.append("    </flags>")
        if feature == _SSE:
            out.append(_VEC128.rstrip("\n"))
        for i, r in enumerate(REGISTERS):
            if r.feature == feature:
                group = f' group="{r.group}"' if r.group else ""
                out.append(f'    <reg name="{r.name}" bitsize="{r.bits}" type="{r.type}" regnum="{i}"{group}/>')
        out.append("  </feature>")
    out.append("</target>")
    return "\n".join(out) + "\n"


TARGET_XML = _target_xml()


@dataclass
class CpuState:
    """One vCPU's registers as KVM gives them; the parts a register write changed are marked dirty."""

    regs: abi.kvm_regs
    sregs: abi.kvm_sregs
    fpu: abi.kvm_fpu
    kernel_gs_base: int = 0
    dirty: set[str] | None = None

    def mark(self, part: str) -> None:
        if self.dirty is None:
            self.dirty = set()
        self.dirty.add(part)


def _u(value: int, bits: int) -> bytes:
    return (value & ((1 << bits) - 1)).to_bytes(bits // 8, "little")


def _full_tag(fpu: abi.kvm_fpu) -> int:
    """The x87 tag word from FXSAVE's abridged one (SDM "x87 FPU Tag Word"): 0 valid, 1 zero, 2 special, 3 empty."""
    top = (fpu.fsw >> 11) & 7
    tag = 0
    for phys in range(8):
        if not fpu.ftwx >> phys & 1:
            t = 3
        else:
            raw = bytes(fpu.fpr[(phys - top) & 7])[:10]
            mantissa = int.from_bytes(raw[:8], "little")
            exponent = int.from_bytes(raw[8:10], "little") & 0x7FFF
            if exponent == 0x7FFF:
                t = 2
            elif exponent == 0:
                t = 1 if mantissa == 0 else 2
            else:
                t = 0 if mantissa >> 63 else 2
        tag |= t << (2 * phys)
    return tag


def read_register(state: CpuState, n: int) -> bytes | None:
    """Register n in gdb's byte order (little-endian), or None for a number gdb was not given."""
    if not 0 <= n < len(REGISTERS):
        return None
    r = REGISTERS[n]
    name, regs, sregs, fpu = r.name, state.regs, state.sregs, state.fpu
    if name in GPRS or name == "rip":
        return _u(getattr(regs, name), 64)
    if name == "eflags":
        return _u(regs.rflags, 32)
    if name in SEGMENTS:
        return _u(getattr(sregs, name).selector, 32)
    if name.startswith("st"):
        return bytes(fpu.fpr[int(name[2:])])[:10]
    if name in FPU_CONTROL:
        value = {"fctrl": fpu.fcw, "fstat": fpu.fsw, "ftag": _full_tag(fpu), "fiseg": 0,
                 "fioff": fpu.last_ip & 0xFFFFFFFF, "foseg": 0, "fooff": fpu.last_dp & 0xFFFFFFFF,
                 "fop": fpu.last_opcode & 0x7FF}[name]
        return _u(value, 32)
    if name.startswith("xmm"):
        return bytes(fpu.xmm[int(name[3:])])
    if name == "mxcsr":
        return _u(fpu.mxcsr, 32)
    if name == "fs_base":
        return _u(sregs.fs.base, 64)
    if name == "gs_base":
        return _u(sregs.gs.base, 64)
    if name == "k_gs_base":
        return _u(state.kernel_gs_base, 64)
    return _u(getattr(sregs, name), 64)            # cr0, cr2, cr3, cr4, cr8, efer


def write_register(state: CpuState, n: int, data: bytes) -> bool:
    """Set register n from gdb's bytes; False for a bad number or length.  Marks the part it changed."""
    if not 0 <= n < len(REGISTERS) or len(data) != REGISTERS[n].bits // 8:
        return False
    if read_register(state, n) == data:
        return True                                 # G rewrites everything: leave what did not change alone
    name, regs, sregs, fpu = REGISTERS[n].name, state.regs, state.sregs, state.fpu
    value = int.from_bytes(data, "little")
    if name in GPRS or name == "rip":
        setattr(regs, name, value)
        state.mark("regs")
    elif name == "eflags":
        regs.rflags = value | 2                     # bit 1 is always set
        state.mark("regs")
    elif name in SEGMENTS:
        seg = getattr(sregs, name)
        seg.selector = value & 0xFFFF
        if not sregs.cr0 & X86_CR0_PE:              # real mode: the base follows the selector
            seg.base = (value & 0xFFFF) << 4
        state.mark("sregs")
    elif name.startswith("st"):
        i = int(name[2:])
        fpu.fpr[i][:10] = list(data)
        state.mark("fpu")
    elif name in FPU_CONTROL:
        if name == "fctrl":
            fpu.fcw = value & 0xFFFF
        elif name == "fstat":
            fpu.fsw = value & 0xFFFF
        elif name == "ftag":
            fpu.ftwx = sum(1 << p for p in range(8) if (value >> (2 * p)) & 3 != 3)
        elif name == "fioff":
            fpu.last_ip = (fpu.last_ip & ~0xFFFFFFFF) | (value & 0xFFFFFFFF)
        elif name == "fooff":
            fpu.last_dp = (fpu.last_dp & ~0xFFFFFFFF) | (value & 0xFFFFFFFF)
        elif name == "fop":
            fpu.last_opcode = value & 0x7FF
        else:
            return True                             # fiseg, foseg: FXSAVE's 64-bit format has none
        state.mark("fpu")
    elif name.startswith("xmm"):
        fpu.xmm[int(name[3:])][:] = list(data)
        state.mark("fpu")
    elif name == "mxcsr":
        fpu.mxcsr = value
        state.mark("fpu")
    elif name in ("fs_base", "gs_base"):
        getattr(sregs, name[:2]).base = value
        state.mark("sregs")
    elif name == "k_gs_base":
        state.kernel_gs_base = value
        state.mark("msr")
    else:
        setattr(sregs, name, value)
        state.mark("sregs")
    return True


def read_all(state: CpuState) -> bytes:
    """The ``g`` packet's bytes: every register in REGISTERS order."""
    return b"".join(read_register(state, n) or b"" for n in range(len(REGISTERS)))


def write_all(state: CpuState, data: bytes) -> bool:
    """A ``G`` packet: every register in order (a shorter packet sets the leading ones); False if it
    does not end on a register boundary or is too long."""
    if len(data) > G_PACKET_SIZE:
        return False
    pos = 0
    for n, r in enumerate(REGISTERS):
        size = r.bits // 8
        if pos == len(data):
            break
        if pos + size > len(data) or not write_register(state, n, data[pos : pos + size]):
            return False
        pos += size
    return True


def empty_state() -> CpuState:
    """A zeroed state (tests, and the fuzz harness's fake machine)."""
    return CpuState(abi.kvm_regs(rflags=2), abi.kvm_sregs(), abi.kvm_fpu())

