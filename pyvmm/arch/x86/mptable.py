"""The Intel MultiProcessor Specification table of a pyvmm guest: its vCPUs, its IOAPIC and how ISA IRQs reach it.

Layout and fields follow the MultiProcessor Specification 1.4, chapter 4 "MP Configuration Table" ("MP
Floating Pointer Structure", "MP Configuration Table Header", "Base MP Configuration Table Entries");
structure and constant names are Linux's (arch/x86/include/asm/mpspec_def.h).

Why a guest with ACPI tables still gets one: Linux looks for the floating pointer in setup_arch() whether
or not it later uses ACPI, in the first KiB of RAM, the last KiB of base memory and the whole BIOS area
0xF0000-0xFFFFF, in 16-byte steps, and on x86 it re-maps the rest of the region at every step.  Emulated
on a kvm_pvm host, a scan that finds nothing costs Linux 6.1 about 1.6 s of early boot
(bench/mptable_probe.py measured it); the pointer at the start of the EBDA ends the scan at its second
region.  With ACPI off (``--no-acpi``, ``acpi=off``) the table is also the only place Linux learns of a
second vCPU and of the IOAPIC.

What it describes is the machine the MADT describes (acpi.py): a processor per vCPU with APIC id = vCPU
index, vCPU 0 the bootstrap processor; one ISA bus; KVM's in-kernel IOAPIC; ISA IRQ n on IOAPIC pin n for
every pin (KVM's default GSI routing), the virtio-mmio lines level-triggered and active high (the line
follows InterruptStatus != 0), the rest as the ISA bus defines (edge, active high); ExtINT on every local
APIC's LINT0 and NMI on LINT1.  The IMCR bit is clear: the machine powers on in virtual-wire mode, the
8259's output on LINT0, which is what KVM's LAPIC model does.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Iterable

from pyvmm.arch.x86 import acpi, layout

SMP_MAGIC_IDENT = b"_MP_"
MPC_SIGNATURE = b"PCMP"
MPC_SPEC = 4                       # MP specification 1.4
MPC_OEM = b"PYVMM   "
MPC_PRODUCT_ID = b"PYVMM MP    "
BUSTYPE_ISA = b"ISA   "
# What KVM's models report in their version registers (arch/x86/kvm/lapic.c APIC_VERSION, virt/kvm/ioapic.h
# IOAPIC_VERSION_ID); Linux takes an APIC version below 0x10 for an external 82489DX.
LAPIC_VERSION = 0x14
IOAPIC_VERSION = 0x11
# The processor entry's CPU signature and feature flags are informational (Linux reads neither): family 6
# and the two features the table itself implies, an FPU and an on-chip APIC (CPUID.1:EDX bits 0 and 9).
CPU_SIGNATURE = 6 << 8
CPU_FEATURES = (1 << 0) | (1 << 9)
MP_APIC_ALL = 0xFF
ISA_BUS_ID = 0
# Where the configuration table goes when the EBDA's one KiB (after the floating pointer) cannot hold it:
# the BIOS area, reserved in the e820 map and unused by pyvmm (the ROM itself sits below 4 GiB).
HIGH_TABLE_GPA = 0xF_0000
HIGH_TABLE_END = layout.KERNEL_START


class mpf_intel(ctypes.LittleEndianStructure):
    """The MP Floating Pointer Structure: 16 bytes on a 16-byte boundary where the guest scans for it."""

    _pack_ = 1
    _fields_ = [
        ("signature", ctypes.c_char * 4),
        ("physptr", ctypes.c_uint32),        # the configuration table's gpa
        ("length", ctypes.c_uint8),          # in 16-byte paragraphs: 1
        ("specification", ctypes.c_uint8),
        ("checksum", ctypes.c_uint8),        # the 16 bytes sum to zero
        ("feature1", ctypes.c_uint8),        # 0: a configuration table is present (no default config)
        ("feature2", ctypes.c_uint8),        # bit 7 IMCRP: PIC mode with an IMCR; clear: virtual wire
        ("feature3", ctypes.c_uint8),
        ("feature4", ctypes.c_uint8),
        ("feature5", ctypes.c_uint8),
    ]


class mpc_table(ctypes.LittleEndianStructure):
    """The MP Configuration Table Header; the base table's entries follow it."""

    _pack_ = 1
    _fields_ = [
        ("signature", ctypes.c_char * 4),
        ("length", ctypes.c_uint16),         # header and base entries
        ("spec", ctypes.c_uint8),
        ("checksum", ctypes.c_uint8),        # the base table sums to zero
        ("oem", ctypes.c_char * 8),
        ("productid", ctypes.c_char * 12),
        ("oemptr", ctypes.c_uint32),
        ("oemsize", ctypes.c_uint16),
        ("oemcount", ctypes.c_uint16),       # the number of base entries
        ("lapic", ctypes.c_uint32),          # the local APIC's gpa
        ("reserved", ctypes.c_uint32),       # the extended table's length and checksum: none
    ]


class mpc_cpu(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("apicid", ctypes.c_uint8),
        ("apicver", ctypes.c_uint8),
        ("cpuflag", ctypes.c_uint8),
        ("cpufeature", ctypes.c_uint32),
        ("featureflag", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 2),
    ]


class mpc_bus(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("busid", ctypes.c_uint8),
        ("bustype", ctypes.c_char * 6),
    ]


class mpc_ioapic(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("apicid", ctypes.c_uint8),
        ("apicver", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("apicaddr", ctypes.c_uint32),
    ]


class mpc_intsrc(ctypes.LittleEndianStructure):
    """An I/O Interrupt Assignment Entry: which bus IRQ drives which IOAPIC pin, and how."""

    _pack_ = 1
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("irqtype", ctypes.c_uint8),
        ("irqflag", ctypes.c_uint16),
        ("srcbus", ctypes.c_uint8),
        ("srcbusirq", ctypes.c_uint8),
        ("dstapic", ctypes.c_uint8),
        ("dstirq", ctypes.c_uint8),
    ]


class mpc_lintsrc(ctypes.LittleEndianStructure):
    """A Local Interrupt Assignment Entry: what drives a local APIC's LINT0/LINT1."""

    _pack_ = 1
    _fields_ = [
        ("type", ctypes.c_uint8),
        ("irqtype", ctypes.c_uint8),
        ("irqflag", ctypes.c_uint16),
        ("srcbusid", ctypes.c_uint8),
        ("srcbusirq", ctypes.c_uint8),
        ("destapic", ctypes.c_uint8),
        ("destapiclint", ctypes.c_uint8),
    ]


class MpEntryType(enum.IntEnum):
    """Base configuration table entry types (the first byte of each entry)."""

    MP_PROCESSOR = 0
    MP_BUS = 1
    MP_IOAPIC = 2
    MP_INTSRC = 3
    MP_LINTSRC = 4


class MpIrqSourceType(enum.IntEnum):
    """Interrupt types of intsrc/lintsrc entries (Linux's enum mp_irq_source_types)."""

    mp_INT = 0
    mp_NMI = 1
    mp_SMI = 2
    mp_ExtINT = 3


class MpIrqFlag(enum.IntFlag):
    """The polarity (bits 1-0) and trigger mode (bits 3-2) of an interrupt entry; 0 conforms to the bus."""

    MP_IRQPOL_ACTIVE_HIGH = 0x1
    MP_IRQPOL_ACTIVE_LOW = 0x3
    MP_IRQTRIG_EDGE = 0x4
    MP_IRQTRIG_LEVEL = 0xC


CPU_ENABLED = 1
CPU_BOOTPROCESSOR = 2
MPC_APIC_USABLE = 1


def _entries(num_cpus: int, level_irqs: Iterable[int]) -> list[ctypes.Structure]:
    level = set(level_irqs)
    out: list[ctypes.Structure] = [
        mpc_cpu(type=MpEntryType.MP_PROCESSOR, apicid=cpu, apicver=LAPIC_VERSION,
                cpuflag=CPU_ENABLED | (CPU_BOOTPROCESSOR if cpu == 0 else 0),
                cpufeature=CPU_SIGNATURE, featureflag=CPU_FEATURES)
        for cpu in range(num_cpus)]
    out.append(mpc_bus(type=MpEntryType.MP_BUS, busid=ISA_BUS_ID, bustype=BUSTYPE_ISA))
    out.append(mpc_ioapic(type=MpEntryType.MP_IOAPIC, apicid=acpi.IOAPIC_ID, apicver=IOAPIC_VERSION,
                          flags=MPC_APIC_USABLE, apicaddr=layout.IOAPIC_BASE))
    for pin in range(acpi.IOAPIC_NUM_PINS):
        flag = MpIrqFlag.MP_IRQPOL_ACTIVE_HIGH | MpIrqFlag.MP_IRQTRIG_LEVEL if pin in level else 0
        out.append(mpc_intsrc(type=MpEntryType.MP_INTSRC, irqtype=MpIrqSourceType.mp_INT, irqflag=flag,
                              srcbus=ISA_BUS_ID, srcbusirq=pin, dstapic=acpi.IOAPIC_ID, dstirq=pin))
    for lint, kind in ((0, MpIrqSourceType.mp_ExtINT), (1, MpIrqSourceType.mp_NMI)):
        out.append(mpc_lintsrc(type=MpEntryType.MP_LINTSRC, irqtype=kind, irqflag=0, srcbusid=ISA_BUS_ID,
                               srcbusirq=0, destapic=MP_APIC_ALL, destapiclint=lint))
    return out


def build_mp_table(num_cpus: int, level_irqs: Iterable[int]) -> list[tuple[int, bytes]]:
    """The floating pointer and the configuration table as (gpa, bytes) pieces to write into guest RAM.

    level_irqs are the IOAPIC pins of the virtio-mmio lines.  The floating pointer sits at the start of
    the EBDA (layout.EBDA_START, reserved in the e820 map); the configuration table follows it when both
    fit in the EBDA's KiB (up to 37 vCPUs), and goes to the BIOS area at HIGH_TABLE_GPA otherwise.
    """
    if not 1 <= num_cpus <= 254:
        raise ValueError(f"an MP table's processor entries describe 1 to 254 vCPUs, not {num_cpus}")
    entries = _entries(num_cpus, level_irqs)
    body = b"".join(bytes(e) for e in entries)
    length = ctypes.sizeof(mpc_table) + len(body)
    pointer_gpa = layout.EBDA_START
    table_gpa = pointer_gpa + ctypes.sizeof(mpf_intel)
    if table_gpa + length > layout.EBDA_END:
        table_gpa = HIGH_TABLE_GPA
    if table_gpa + length > HIGH_TABLE_END:
        raise ValueError(f"an MP table of {length} bytes does not fit below {HIGH_TABLE_END:#x}")
    table = bytearray(bytes(mpc_table(signature=MPC_SIGNATURE, length=length, spec=MPC_SPEC, oem=MPC_OEM,
                                      productid=MPC_PRODUCT_ID, oemcount=len(entries),
                                      lapic=layout.LAPIC_BASE)) + body)
    table[mpc_table.checksum.offset] = acpi.checksum(table)
    pointer = bytearray(mpf_intel(signature=SMP_MAGIC_IDENT, physptr=table_gpa, length=1,
                                  specification=MPC_SPEC))
    pointer[mpf_intel.checksum.offset] = acpi.checksum(pointer)
    return [(pointer_gpa, bytes(pointer)), (table_gpa, bytes(table))]
