"""The MP table: every structure's size and offsets, and the table read back as a guest reads it."""

from __future__ import annotations

import ctypes
import struct

import pytest

from pyvmm.arch.x86 import acpi, layout, mptable
from pyvmm.memory import GuestMemory

VIRTIO_IRQS = [layout.VIRTIO_IRQ_BASE, layout.VIRTIO_IRQ_BASE + 1]


@pytest.mark.parametrize("cls, size, offsets", [
    (mptable.mpf_intel, 16, {"physptr": 4, "length": 8, "specification": 9, "checksum": 10, "feature1": 11,
                             "feature2": 12, "feature5": 15}),
    (mptable.mpc_table, 44, {"length": 4, "spec": 6, "checksum": 7, "oem": 8, "productid": 16, "oemptr": 28,
                             "oemsize": 32, "oemcount": 34, "lapic": 36, "reserved": 40}),
    (mptable.mpc_cpu, 20, {"apicid": 1, "apicver": 2, "cpuflag": 3, "cpufeature": 4, "featureflag": 8,
                           "reserved": 12}),
    (mptable.mpc_bus, 8, {"busid": 1, "bustype": 2}),
    (mptable.mpc_ioapic, 8, {"apicid": 1, "apicver": 2, "flags": 3, "apicaddr": 4}),
    (mptable.mpc_intsrc, 8, {"irqtype": 1, "irqflag": 2, "srcbus": 4, "srcbusirq": 5, "dstapic": 6, "dstirq": 7}),
    (mptable.mpc_lintsrc, 8, {"irqtype": 1, "irqflag": 2, "srcbusid": 4, "srcbusirq": 5, "destapic": 6,
                              "destapiclint": 7}),
])
def test_structure_sizes_and_offsets(cls, size, offsets) -> None:
    """The MP specification's byte layouts (and Linux's mpspec_def.h), pinned."""
    assert ctypes.sizeof(cls) == size
    for field, offset in offsets.items():
        assert getattr(cls, field).offset == offset, field


def parse(mem: GuestMemory) -> dict:
    """Read the table back the way Linux's mpparse.c does, with struct formats written from the spec."""
    gpa = layout.EBDA_START
    raw = mem.read(gpa, 16)
    sig, physptr, length, spec, _, feature1, feature2 = struct.unpack_from("<4sIBBBBB", raw)
    assert (sig, length, spec, feature1, feature2) == (b"_MP_", 1, 4, 0, 0)
    assert sum(raw) % 256 == 0
    head = mem.read(physptr, 44)
    sig, size, spec, _, oem, product, oemptr, oemsize, count, lapic, reserved = struct.unpack_from(
        "<4sHBB8s12sIHHII", head)
    assert (sig, spec, oemptr, oemsize, reserved, lapic) == (b"PCMP", 4, 0, 0, 0, layout.LAPIC_BASE)
    table = mem.read(physptr, size)
    assert sum(table) % 256 == 0
    out: dict = {"physptr": physptr, "cpus": [], "buses": [], "ioapics": [], "intsrc": [], "lintsrc": []}
    pos = 44
    for _ in range(count):
        kind = table[pos]
        if kind == 0:
            _, apicid, ver, flags, sig_, feat = struct.unpack_from("<BBBBII", table, pos)
            out["cpus"].append((apicid, ver, flags))
            pos += 20
        elif kind == 1:
            out["buses"].append(struct.unpack_from("<xB6s", table, pos))
            pos += 8
        elif kind == 2:
            out["ioapics"].append(struct.unpack_from("<xBBBI", table, pos))
            pos += 8
        else:
            assert kind in (3, 4), kind
            out["intsrc" if kind == 3 else "lintsrc"].append(struct.unpack_from("<xBHBBBB", table, pos))
            pos += 8
    assert pos == size
    return out


def write(num_cpus: int, irqs=VIRTIO_IRQS) -> GuestMemory:
    mem = GuestMemory.from_bytearray(2 << 20)
    for gpa, piece in mptable.build_mp_table(num_cpus, irqs):
        mem.write(gpa, piece)
    return mem


def test_table_describes_the_machine_the_madt_does() -> None:
    t = parse(write(2))
    assert t["physptr"] == layout.EBDA_START + 16
    # Every vCPU enabled, APIC id = index, vCPU 0 the bootstrap processor, KVM's LAPIC version.
    assert t["cpus"] == [(0, 0x14, 3), (1, 0x14, 1)]
    assert t["buses"] == [(0, b"ISA   ")]
    assert t["ioapics"] == [(acpi.IOAPIC_ID, 0x11, 1, layout.IOAPIC_BASE)]
    # Each of the IOAPIC's 24 pins: ISA IRQ n -> pin n; the virtio lines level/high (0xd), the rest the bus's.
    assert [(irq, pin) for _, _, bus, irq, apic, pin in t["intsrc"]] == [(n, n) for n in range(24)]
    assert {(bus, apic) for _, _, bus, _, apic, _ in t["intsrc"]} == {(0, acpi.IOAPIC_ID)}
    flags = {irq: flag for kind, flag, _, irq, _, _ in t["intsrc"]}
    assert {irq for irq, flag in flags.items() if flag} == set(VIRTIO_IRQS)
    assert {flags[irq] for irq in VIRTIO_IRQS} == {0xD}
    assert {kind for kind, *_ in t["intsrc"]} == {0}                  # mp_INT
    # ExtINT on every LAPIC's LINT0, NMI on LINT1.
    assert [(kind, apic, lint) for kind, _, _, _, apic, lint in t["lintsrc"]] == [(3, 0xFF, 0), (1, 0xFF, 1)]


def test_the_ebda_holds_37_vcpus_and_larger_tables_go_to_the_bios_area() -> None:
    assert parse(write(37))["physptr"] == layout.EBDA_START + 16
    big = parse(write(38))
    assert big["physptr"] == mptable.HIGH_TABLE_GPA and len(big["cpus"]) == 38
    full = parse(write(254))
    assert len(full["cpus"]) == 254 and [f for _, _, f in full["cpus"]].count(3) == 1
    for gpa, piece in mptable.build_mp_table(37, VIRTIO_IRQS):
        assert gpa + len(piece) <= layout.EBDA_END       # the EBDA e820 reserves, nothing past it


def test_the_pieces_lie_in_reserved_memory() -> None:
    """Both pieces are where the e820 map says reserved, so Linux never hands them out as RAM."""
    reserved = [(a, a + n) for a, n, kind in layout.e820_map(64 << 20) if kind == layout.E820_RESERVED]
    for cpus in range(1, 255):
        for gpa, piece in mptable.build_mp_table(cpus, VIRTIO_IRQS):
            assert any(lo <= gpa and gpa + len(piece) <= hi for lo, hi in reserved), (cpus, hex(gpa))


@pytest.mark.parametrize("cpus", [0, 255])
def test_vcpu_counts_outside_the_table(cpus) -> None:
    with pytest.raises(ValueError, match="1 to 254 vCPUs"):
        mptable.build_mp_table(cpus, VIRTIO_IRQS)
