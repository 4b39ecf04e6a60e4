"""The CPUID policy on KVM_GET_SUPPORTED_CPUID as this kvm_pvm host (an AMD EPYC) reports it."""

from __future__ import annotations

import pytest

from pyvmm.arch.x86 import cpuid as c
from pyvmm.arch.x86.cpuid import CpuidEntry

# (function, index, eax, ebx, ecx, edx, flags): a subset of what KVM_GET_SUPPORTED_CPUID returned here,
# with cx16-era bits the host does advertise, plus bits a less masked host would (to check the masks).
HOST = [
    (0x0, 0, 0x1C, 0x68747541, 0x444D4163, 0x69746E65, 0),            # AuthenticAMD
    (0x1, 0, 0x00A10F11, 0x01020800, 0x81202000 | (1 << 9) | (1 << 23) | (1 << 26), 0x078BFBFF, 0),
    (0x7, 0, 0x1, 0x01800002 | 1 | (1 << 20) | (1 << 10) | (1 << 5) | (1 << 18), 0x104 | (1 << 3), 0x20000000, 1),
    (0x7, 1, 0, 0, 0, 0, 1),
    (0xB, 0, 0, 0, 0, 1, 1),
    (0xD, 0, 0xE7, 0x980, 0x980, 0, 1),
    (0xD, 1, 0xF, 0, 0, 0, 1),
    (0x4000_0000, 0, 0x40000001, 0x4B4D564B, 0x564B4D56, 0x0000004D, 0),
    (0x4000_0001, 0, 0x01007EFB, 0, 0, 0, 0),
    (0x8000_0001, 0, 0x00A10F11, 0x40000000, 0x00400393 | (1 << 11), 0x23D3FBFF, 0),
    (0x8000_0008, 0, 0x3030, 0x50020001, 0x7001, 0, 0),                 # XSAVEERPTR (bit 2) clear here
    (0x8000_001E, 0, 0, 0, 0, 0, 0),
]


def leaf(entries: list[CpuidEntry], function: int, index: int = 0) -> CpuidEntry:
    (entry,) = [e for e in entries if e.function == function and e.index == index]
    return entry


def test_masks_what_the_emulator_cannot_run() -> None:
    out = c.apply_policy(HOST, passthrough=False, num_cpus=1, cpu_index=0)
    l1 = leaf(out, 0x1)
    for bit in (c.Leaf1Ecx.CX16, c.Leaf1Ecx.SSSE3, c.Leaf1Ecx.POPCNT, c.Leaf1Ecx.XSAVE, c.Leaf1Ecx.PCID):
        assert not l1.ecx & bit, bit
    assert l1.ecx & c.Leaf1Ecx.X2APIC                                    # untouched
    l7 = leaf(out, 0x7)
    for bit in (c.Leaf7Ebx.FSGSBASE, c.Leaf7Ebx.SMAP, c.Leaf7Ebx.INVPCID, c.Leaf7Ebx.AVX2):
        assert not l7.ebx & bit, bit
    assert l7.ebx & (1 << 23) and l7.ebx & (1 << 18)                     # clflushopt, rdseed untouched
    assert not l7.ecx & c.Leaf7Ecx.PKU and l7.ecx & (1 << 2)             # umip untouched
    assert all((e.eax, e.ebx, e.ecx, e.edx) == (0, 0, 0, 0) for e in out if e.function == 0xD)
    assert not leaf(out, 0x8000_0001).ecx & c.Ext1Ecx.XOP
    # AMD: XSAVEERPTR set, so Linux skips the fnclex of its FXSAVE-leak workaround.
    assert leaf(out, 0x8000_0008).ebx & c.Ext8Ebx.XSAVEERPTR


def test_passthrough_keeps_host_bits() -> None:
    out = c.apply_policy(HOST, passthrough=True, num_cpus=1, cpu_index=0)
    assert leaf(out, 0x1).ecx & c.Leaf1Ecx.CX16
    assert leaf(out, 0x7).ebx & c.Leaf7Ebx.SMAP
    assert leaf(out, 0xD) == CpuidEntry(*HOST[5])
    assert leaf(out, 0x8000_0008).ebx == HOST[10][3]
    assert leaf(out, 0x1).ecx & c.Leaf1Ecx.HYPERVISOR


def test_hypervisor_bit_and_kvm_signature() -> None:
    without = [e for e in HOST if e[0] != 0x4000_0000]
    without[1] = (*without[1][:4], without[1][4] & ~c.Leaf1Ecx.HYPERVISOR, *without[1][5:])
    out = c.apply_policy(without, passthrough=False, num_cpus=1, cpu_index=0)
    assert leaf(out, 0x1).ecx & c.Leaf1Ecx.HYPERVISOR
    sig = leaf(out, 0x4000_0000)
    assert sig.ebx.to_bytes(4, "little") + sig.ecx.to_bytes(4, "little") + sig.edx.to_bytes(4, "little") \
        == b"KVMKVMKVM\0\0\0"
    # When KVM provides the leaf, it is kept as KVM gave it.
    assert leaf(c.apply_policy(HOST, passthrough=False, num_cpus=1, cpu_index=0), 0x4000_0000) == \
        CpuidEntry(*HOST[7])


@pytest.mark.parametrize("num_cpus", [1, 2, 4])
def test_topology_per_vcpu(num_cpus: int) -> None:
    for cpu in range(num_cpus):
        out = c.apply_policy(HOST, passthrough=False, num_cpus=num_cpus, cpu_index=cpu)
        l1 = leaf(out, 0x1)
        assert l1.ebx >> 24 == cpu
        assert (l1.ebx >> 16) & 0xFF == num_cpus
        assert (l1.ebx >> 8) & 0xFF == 0x08                              # CLFLUSH line size kept
        assert bool(l1.edx & c.Leaf1Edx.HTT) == (num_cpus > 1)
        smt, core, end = (leaf(out, 0xB, i) for i in range(3))
        assert [e.edx for e in (smt, core, end)] == [cpu] * 3             # x2APIC id
        assert (smt.ebx, (smt.ecx >> 8) & 0xFF) == (1, 1)
        assert (core.ebx, (core.ecx >> 8) & 0xFF) == (num_cpus, 2)
        assert 1 << core.eax >= num_cpus and (end.ecx >> 8) & 0xFF == 0
        assert all(e.flags & c.KVM_CPUID_FLAG_SIGNIFCANT_INDEX for e in (smt, core, end))
        ext8 = leaf(out, 0x8000_0008)
        assert ext8.ecx & 0xFF == num_cpus - 1
        assert 1 << ((ext8.ecx >> 12) & 0xF) >= num_cpus
        assert leaf(out, 0x8000_001E).eax == cpu


def test_intel_leaf4_cache_sharing() -> None:
    intel = [(0x0, 0, 0x1F, 0x756E6547, 0x6C65746E, 0x49656E69, 0),
             (0x1, 0, 0x906EA, 0x00010800, 0x80202000, 0x078BFBFF, 0),
             (0x4, 0, 0x1C004121, 0x01C0003F, 0x3F, 0, 1),               # L1d
             (0x4, 3, 0x1C03C163, 0x03C0003F, 0x3FFF, 6, 1)]             # L3
    out = c.apply_policy(intel, passthrough=False, num_cpus=4, cpu_index=3)
    l1d, l3 = leaf(out, 0x4, 0), leaf(out, 0x4, 3)
    assert (l1d.eax >> 26, (l1d.eax >> 14) & 0xFFF, l1d.eax & 0x3FFF) == (3, 0, 0x0121)
    assert (l3.eax >> 26, (l3.eax >> 14) & 0xFFF, l3.eax & 0x3FFF) == (3, 3, 0x0163)
    assert leaf(out, 0x1).ecx & c.Leaf1Ecx.CX16 == 0
    assert not any(e.function == 0x8000_0008 for e in out)                # nothing invented for Intel


def test_intel_leaf4_fields_clamped_above_64_vcpus() -> None:
    intel = [(0x0, 0, 0x1F, 0x756E6547, 0x6C65746E, 0x49656E69, 0),
             (0x1, 0, 0x906EA, 0x00010800, 0x80202000, 0x078BFBFF, 0),
             (0x4, 0, 0x1C004121, 0x01C0003F, 0x3F, 0, 1),               # L1d
             (0x4, 3, 0x1C03C163, 0x03C0003F, 0x3FFF, 6, 1)]             # L3
    for num_cpus in (64, 65, 100, 255):
        out = c.apply_policy(intel, passthrough=False, num_cpus=num_cpus, cpu_index=num_cpus - 1)
        assert all(0 <= r < 1 << 32 for e in out for r in (e.eax, e.ebx, e.ecx, e.edx))
        l1d, l3 = leaf(out, 0x4, 0), leaf(out, 0x4, 3)
        assert (l1d.eax >> 26, (l1d.eax >> 14) & 0xFFF, l1d.eax & 0x3FFF) == (63, 0, 0x0121)
        assert (l3.eax >> 26, (l3.eax >> 14) & 0xFFF, l3.eax & 0x3FFF) == (63, num_cpus - 1, 0x0163)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        c.apply_policy(HOST, passthrough=False, num_cpus=2, cpu_index=2)
    with pytest.raises(ValueError):
        c.apply_policy(HOST, passthrough=False, num_cpus=0, cpu_index=0)


def test_is_kvm_pvm_host(tmp_path) -> None:
    assert not c.is_kvm_pvm_host(tmp_path)
    (tmp_path / "kvm_pvm").mkdir()
    assert c.is_kvm_pvm_host(tmp_path)
