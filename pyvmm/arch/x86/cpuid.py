"""The CPUID a pyvmm vCPU shows its guest: KVM's supported leaves, masked for the host, with per-vCPU topology.

Input and output are plain CpuidEntry tuples (function, index, eax, ebx, ecx, edx, flags), the fields of
struct kvm_cpuid_entry2, so the policy is testable without KVM; the caller converts from
KVM_GET_SUPPORTED_CPUID and back into KVM_SET_CPUID2.

Why masks: on a nested kvm_pvm host a guest that is not PVM-aware runs under KVM's instruction
emulator, which cannot execute some instructions (measured: `lock cmpxchg16b`, `xrstor`, `int3`, `clac`,
`fwait`, `fnclex`, an SSSE3-era `ldmxcsr` path).  Linux picks instructions from CPUID, so hiding a feature
keeps the guest off the instruction.  docs/linux.md has the table of every bit and its reason.
Bit positions are from the Intel SDM, "CPUID—CPU Identification", and AMD's APM vol. 3, appendix E.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1      # (sic) the kernel header's spelling
KVM_CPUID_SIGNATURE = 0x4000_0000
KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"


class CpuidEntry(NamedTuple):
    """One CPUID leaf/subleaf as KVM_{GET_SUPPORTED,SET}_CPUID2 carry it."""

    function: int
    index: int  # type: ignore[assignment]  # the kernel's field name; it shadows tuple.index
    eax: int
    ebx: int
    ecx: int
    edx: int
    flags: int = 0


class Leaf1Ecx(enum.IntFlag):
    """CPUID.01H:ECX feature bits that the policy touches."""

    SSE3 = 1 << 0
    SSSE3 = 1 << 9
    FMA = 1 << 12
    CX16 = 1 << 13
    PCID = 1 << 17
    SSE4_1 = 1 << 19
    SSE4_2 = 1 << 20
    X2APIC = 1 << 21
    POPCNT = 1 << 23
    XSAVE = 1 << 26
    OSXSAVE = 1 << 27
    AVX = 1 << 28
    F16C = 1 << 29
    HYPERVISOR = 1 << 31


class Leaf1Edx(enum.IntFlag):
    HTT = 1 << 28


class Leaf7Ebx(enum.IntFlag):
    """CPUID.(EAX=07H,ECX=0):EBX."""

    FSGSBASE = 1 << 0
    AVX2 = 1 << 5
    INVPCID = 1 << 10
    AVX512F = 1 << 16
    AVX512DQ = 1 << 17
    SMAP = 1 << 20
    AVX512IFMA = 1 << 21
    AVX512PF = 1 << 26
    AVX512ER = 1 << 27
    AVX512CD = 1 << 28
    AVX512BW = 1 << 30
    AVX512VL = 1 << 31


class Leaf7Ecx(enum.IntFlag):
    """CPUID.(EAX=07H,ECX=0):ECX."""

    AVX512_VBMI = 1 << 1
    PKU = 1 << 3
    OSPKE = 1 << 4
    AVX512_VBMI2 = 1 << 6
    VAES = 1 << 9
    VPCLMULQDQ = 1 << 10
    AVX512_VNNI = 1 << 11
    AVX512_BITALG = 1 << 12
    AVX512_VPOPCNTDQ = 1 << 14


class Leaf7Edx(enum.IntFlag):
    """CPUID.(EAX=07H,ECX=0):EDX."""

    AVX512_4VNNIW = 1 << 2
    AVX512_4FMAPS = 1 << 3
    AVX512_VP2INTERSECT = 1 << 8
    AMX_BF16 = 1 << 22
    AVX512_FP16 = 1 << 23
    AMX_TILE = 1 << 24
    AMX_INT8 = 1 << 25


class Leaf7Sub1Eax(enum.IntFlag):
    """CPUID.(EAX=07H,ECX=1):EAX."""

    AVX_VNNI = 1 << 4
    AVX512_BF16 = 1 << 5


class Ext1Ecx(enum.IntFlag):
    """CPUID.80000001H:ECX (AMD)."""

    XOP = 1 << 11
    FMA4 = 1 << 16


class Ext8Ebx(enum.IntFlag):
    """CPUID.80000008H:EBX (AMD)."""

    XSAVEERPTR = 1 << 2


# What the policy clears on a kvm_pvm host, per (function, index, register): the table docs/linux.md shows.
# First the instructions the emulator fails on, then what only works with XSAVE (AVX and later need the
# OS to enable their state through XSETBV; with XSAVE hidden, advertising them would be a lie).
KVM_CPUID_FEATURES = 0x4000_0001


class KvmFeature(enum.IntFlag):
    """KVM_FEATURE_* bits of leaf 0x40000001 EAX (arch/x86/include/uapi/asm/kvm_para.h)."""

    CLOCKSOURCE = 1 << 0
    NOP_IO_DELAY = 1 << 1
    CLOCKSOURCE2 = 1 << 3
    ASYNC_PF = 1 << 4
    STEAL_TIME = 1 << 5
    PV_EOI = 1 << 6
    PV_UNHALT = 1 << 7
    PV_TLB_FLUSH = 1 << 9
    ASYNC_PF_VMEXIT = 1 << 10
    PV_SEND_IPI = 1 << 11
    POLL_CONTROL = 1 << 12
    PV_SCHED_YIELD = 1 << 13
    ASYNC_PF_INT = 1 << 14
    CLOCKSOURCE_STABLE_BIT = 1 << 24


PVM_MASKS: dict[tuple[int, int, str], int] = {
    (0x1, 0, "ecx"): (Leaf1Ecx.CX16 | Leaf1Ecx.SSSE3 | Leaf1Ecx.POPCNT | Leaf1Ecx.PCID
                      | Leaf1Ecx.XSAVE | Leaf1Ecx.OSXSAVE | Leaf1Ecx.AVX | Leaf1Ecx.FMA | Leaf1Ecx.F16C),
    (0x7, 0, "ebx"): (Leaf7Ebx.FSGSBASE | Leaf7Ebx.SMAP | Leaf7Ebx.INVPCID | Leaf7Ebx.AVX2
                      | Leaf7Ebx.AVX512F | Leaf7Ebx.AVX512DQ | Leaf7Ebx.AVX512IFMA | Leaf7Ebx.AVX512PF
                      | Leaf7Ebx.AVX512ER | Leaf7Ebx.AVX512CD | Leaf7Ebx.AVX512BW | Leaf7Ebx.AVX512VL),
    (0x7, 0, "ecx"): (Leaf7Ecx.AVX512_VBMI | Leaf7Ecx.PKU | Leaf7Ecx.OSPKE | Leaf7Ecx.AVX512_VBMI2
                      | Leaf7Ecx.VAES | Leaf7Ecx.VPCLMULQDQ | Leaf7Ecx.AVX512_VNNI | Leaf7Ecx.AVX512_BITALG
                      | Leaf7Ecx.AVX512_VPOPCNTDQ),
    (0x7, 0, "edx"): (Leaf7Edx.AVX512_4VNNIW | Leaf7Edx.AVX512_4FMAPS | Leaf7Edx.AVX512_VP2INTERSECT
                      | Leaf7Edx.AMX_BF16 | Leaf7Edx.AVX512_FP16 | Leaf7Edx.AMX_TILE | Leaf7Edx.AMX_INT8),
    (0x7, 1, "eax"): Leaf7Sub1Eax.AVX_VNNI | Leaf7Sub1Eax.AVX512_BF16,
    (0x8000_0001, 0, "ecx"): Ext1Ecx.XOP | Ext1Ecx.FMA4,
    # KVM's paravirtual features that work by hypercall (KVM_HC_KICK_CPU, KVM_HC_SEND_IPI,
    # KVM_HC_SCHED_YIELD): under a nested kvm_pvm host a second vCPU never comes up with them on (the
    # BSP loops in kvm_hypercall4 sending the wake-up IPI), so Linux is left to use the LAPIC.
    (KVM_CPUID_FEATURES, 0, "eax"): KvmFeature.PV_UNHALT | KvmFeature.PV_SEND_IPI | KvmFeature.PV_SCHED_YIELD,
}
XSAVE_LEAF = 0xD                 # emptied whole: no XSAVE, so no state components to enumerate

AMD_VENDOR = (0x6874_7541, 0x444D_4163, 0x6974_6E65)    # "AuthenticAMD" in (ebx, ecx, edx)


def is_kvm_pvm_host(sys_module: Path = Path("/sys/module")) -> bool:
    """True when the host's KVM is kvm_pvm, whose emulator has the gaps the default policy masks."""
    return (sys_module / "kvm_pvm").exists()


def _find(entries: list[CpuidEntry], function: int, index: int = 0) -> CpuidEntry | None:
    for e in entries:
        if e.function == function and e.index == index:
            return e
    return None


def _replace(entries: list[CpuidEntry], new: CpuidEntry) -> None:
    for i, e in enumerate(entries):
        if e.function == new.function and e.index == new.index:
            entries[i] = new
            return
    entries.append(new)


def _mask(entries: list[CpuidEntry]) -> None:
    for i, e in enumerate(entries):
        if e.function == XSAVE_LEAF:
            entries[i] = e._replace(eax=0, ebx=0, ecx=0, edx=0)
            continue
        update = {reg: getattr(e, reg) & ~mask & 0xFFFF_FFFF
                  for (function, index, reg), mask in PVM_MASKS.items()
                  if function == e.function and index == e.index}
        if update:
            entries[i] = e._replace(**update)


def _topology_leaf(function: int, num_cpus: int, apic_id: int, flags: int) -> list[CpuidEntry]:
    """Leaf 0xB / 0x1F: one thread per core, num_cpus cores in one package (SDM "Extended Topology")."""
    core_shift = (num_cpus - 1).bit_length()
    return [
        # Subleaf 0: SMT level (type 1): 1 thread, no bits to shift.
        CpuidEntry(function, 0, 0, 1, (1 << 8) | 0, apic_id, flags),
        # Subleaf 1: core level (type 2): num_cpus logical processors in the package.
        CpuidEntry(function, 1, core_shift, num_cpus, (2 << 8) | 1, apic_id, flags),
        # Subleaf 2: invalid level (type 0) ends the enumeration.
        CpuidEntry(function, 2, 0, 0, 2, apic_id, flags),
    ]


def _set_topology(entries: list[CpuidEntry], num_cpus: int, cpu_index: int) -> None:
    apic_id = cpu_index                                  # the MADT's and MP table's APIC ids
    leaf1 = _find(entries, 0x1)
    if leaf1 is not None:
        ebx = (leaf1.ebx & 0x0000_FFFF) | (num_cpus << 16) | (apic_id << 24)
        edx = leaf1.edx | Leaf1Edx.HTT if num_cpus > 1 else leaf1.edx & ~Leaf1Edx.HTT
        _replace(entries, leaf1._replace(ebx=ebx, edx=int(edx)))
    for i, e in enumerate(entries):
        if e.function == 0x4 and e.eax & 0x1F:           # a valid deterministic cache parameters subleaf
            level = (e.eax >> 5) & 0x7
            # SDM leaf 4: EAX[25:14] = logical processors sharing the cache - 1 (12 bits), EAX[31:26] =
            # cores in the package - 1 (6 bits).  Both are clamped to their fields: above 64 vCPUs the
            # core count would run past bit 31 (and ctypes would truncate it without a word).
            sharing = min(num_cpus, 1 << 12) - 1 if level >= 3 else 0  # L3 per package; L1/L2 per core
            cores = min(num_cpus, 1 << 6) - 1
            eax = (e.eax & 0x0000_3FFF) | (sharing << 14) | (cores << 26)
            entries[i] = e._replace(eax=eax)
    for function in (0xB, 0x1F):
        existing = [e for e in entries if e.function == function]
        if existing:
            flags = existing[0].flags | KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            entries[:] = [e for e in entries if e.function != function]
            entries.extend(_topology_leaf(function, num_cpus, apic_id, flags))
    ext8 = _find(entries, 0x8000_0008)
    if ext8 is not None:
        # AMD: ECX[7:0] NC = cores - 1, ECX[15:12] ApicIdSize = bits of the APIC id that number cores.
        ecx = (ext8.ecx & ~0xF0FF) | ((num_cpus - 1).bit_length() << 12) | (num_cpus - 1)
        _replace(entries, ext8._replace(ecx=ecx))
    ext1e = _find(entries, 0x8000_001E)
    if ext1e is not None:
        # AMD TOPOEXT: extended APIC id; core id with 1 thread per core; node 0 of 1.
        _replace(entries, ext1e._replace(eax=apic_id, ebx=cpu_index & 0xFF, ecx=0, edx=0))


def apply_policy(
    entries: Iterable[tuple[int, int, int, int, int, int, int]],
    *,
    passthrough: bool,
    num_cpus: int,
    cpu_index: int,
) -> list[CpuidEntry]:
    """The CPUID of vCPU cpu_index of num_cpus, from KVM_GET_SUPPORTED_CPUID's entries.

    passthrough=False (the default a kvm_pvm host needs) clears PVM_MASKS and leaf 0xD, and on an AMD
    CPU sets XSAVEERPTR so Linux skips its FXSAVE-leak workaround (an `fnclex` the emulator cannot run).
    Either way: the hypervisor bit is set, KVM's signature leaf is present, and the APIC id and topology
    leaves describe one package of num_cpus single-threaded cores.
    """
    if not 1 <= num_cpus <= 255 or not 0 <= cpu_index < num_cpus:
        raise ValueError(f"vCPU {cpu_index} of {num_cpus}: need 0 <= index < count <= 255")
    out = [CpuidEntry(*e) for e in entries]

    if not passthrough:
        _mask(out)
        vendor = _find(out, 0x0)
        ext8 = _find(out, 0x8000_0008)
        if vendor is not None and (vendor.ebx, vendor.ecx, vendor.edx) == AMD_VENDOR and ext8 is not None:
            _replace(out, ext8._replace(ebx=ext8.ebx | Ext8Ebx.XSAVEERPTR))

    leaf1 = _find(out, 0x1)
    if leaf1 is not None:
        _replace(out, leaf1._replace(ecx=leaf1.ecx | Leaf1Ecx.HYPERVISOR))
    if _find(out, KVM_CPUID_SIGNATURE) is None:
        sig = [int.from_bytes(KVM_SIGNATURE[i:i + 4], "little") for i in (0, 4, 8)]
        out.append(CpuidEntry(KVM_CPUID_SIGNATURE, 0, 0x4000_0001, sig[0], sig[1], sig[2], 0))

    _set_topology(out, num_cpus, cpu_index)
    return out
