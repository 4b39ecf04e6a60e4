"""ACPI tables for a pyvmm guest (RSDP, XSDT, FADT, MADT, DSDT), generated as one blob in guest memory.

Layout and fields follow the ACPI specification, chapter "ACPI Software Programming Model" (sections
"Root System Description Pointer (RSDP)", "Extended System Description Table (XSDT)", "Fixed ACPI
Description Table (FADT)", "Multiple APIC Description Table (MADT)", "Differentiated System Description
Table (DSDT)"); structure and field names are ACPICA's (include/acpi/actbl*.h), as Linux spells them.

The machine is "hardware-reduced" (FADT flag HW_REDUCED_ACPI): no PM1 blocks, no SCI, no GPEs.  Power-off
goes through the FADT's SLEEP_CONTROL_REG, an 8-bit I/O port at SLEEP_CONTROL_PORT: the guest writes
(SLP_TYP << 2) | SLP_EN there, with SLP_TYP taken from the DSDT's \\_S5_ package (S5_SLP_TYP), and the VMM
ends with exit code 0 (see is_poweroff()).  The reset register is the i8042's command port (0x64, value
0xFE), so ACPI reboot and the keyboard-controller reboot land on the same device.

Virtio-mmio windows are DSDT devices with _HID "LNRO0005" (the id Linux's virtio_mmio driver matches in
its ACPI table) and a _CRS of Memory32Fixed + Interrupt; the interrupt is level-triggered, active high,
because the virtio-mmio line follows InterruptStatus != 0, and the MADT carries an Interrupt Source
Override for each such ISA IRQ (< 16) so Linux does not fall back to the ISA default of edge/high.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Sequence

from pyvmm.arch.x86 import aml, layout

OEM_ID = b"PYVMM "
OEM_TABLE_ID = b"PYVMMACP"
OEM_REVISION = 1
CREATOR_ID = b"PYVM"
CREATOR_REVISION = 1

# The sleep control/status registers (FADT SLEEP_CONTROL_REG / SLEEP_STATUS_REG), one byte each in I/O
# space.  0x600 is free in pyvmm's port map (it is where QEMU's ICH9 puts its PM block on q35, far from
# the legacy ISA ports pyvmm emulates).
SLEEP_CONTROL_PORT = 0x600
SLEEP_STATUS_PORT = 0x601
# The SLP_TYP value of \_S5_ (soft off) in our DSDT: what a guest writes on power-off.
S5_SLP_TYP = 5
# The reset register: the i8042 command port and its "pulse reset line" command.
RESET_PORT = layout.I8042_COMMAND_PORT
RESET_VALUE = 0xFE

TABLE_ALIGN = 16
ACPI_AREA_SIZE = 0x1_0000          # what the blob may use from layout.ACPI_START (up to the ROM's 0xF0000)


class SleepControl(enum.IntFlag):
    """Bits of the hardware-reduced Sleep Control Register (ACPI spec "Sleep Control Register")."""

    SLP_TYP = 0x7 << 2
    SLP_EN = 1 << 5


def is_poweroff(value: int) -> bool:
    """True when a byte written to SLEEP_CONTROL_PORT asks for S5 (soft off)."""
    return bool(value & SleepControl.SLP_EN) and (value & SleepControl.SLP_TYP) >> 2 == S5_SLP_TYP


# --- ACPICA's structures (include/acpi/actbl.h, actbl1.h, actbl2.h) ----------------------------------------

class acpi_table_header(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("signature", ctypes.c_char * 4),
        ("length", ctypes.c_uint32),
        ("revision", ctypes.c_uint8),
        ("checksum", ctypes.c_uint8),
        ("oem_id", ctypes.c_char * 6),
        ("oem_table_id", ctypes.c_char * 8),
        ("oem_revision", ctypes.c_uint32),
        ("asl_compiler_id", ctypes.c_char * 4),
        ("asl_compiler_revision", ctypes.c_uint32),
    ]


class acpi_table_rsdp(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("signature", ctypes.c_char * 8),
        ("checksum", ctypes.c_uint8),              # over the first 20 bytes (the ACPI 1.0 part)
        ("oem_id", ctypes.c_char * 6),
        ("revision", ctypes.c_uint8),
        ("rsdt_physical_address", ctypes.c_uint32),
        ("length", ctypes.c_uint32),
        ("xsdt_physical_address", ctypes.c_uint64),
        ("extended_checksum", ctypes.c_uint8),     # over all 36 bytes
        ("reserved", ctypes.c_uint8 * 3),
    ]


class acpi_generic_address(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("space_id", ctypes.c_uint8),
        ("bit_width", ctypes.c_uint8),
        ("bit_offset", ctypes.c_uint8),
        ("access_width", ctypes.c_uint8),
        ("address", ctypes.c_uint64),
    ]


class acpi_table_fadt(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("header", acpi_table_header),
        ("facs", ctypes.c_uint32),
        ("dsdt", ctypes.c_uint32),
        ("model", ctypes.c_uint8),
        ("preferred_profile", ctypes.c_uint8),
        ("sci_interrupt", ctypes.c_uint16),
        ("smi_command", ctypes.c_uint32),
        ("acpi_enable", ctypes.c_uint8),
        ("acpi_disable", ctypes.c_uint8),
        ("s4_bios_request", ctypes.c_uint8),
        ("pstate_control", ctypes.c_uint8),
        ("pm1a_event_block", ctypes.c_uint32),
        ("pm1b_event_block", ctypes.c_uint32),
        ("pm1a_control_block", ctypes.c_uint32),
        ("pm1b_control_block", ctypes.c_uint32),
        ("pm2_control_block", ctypes.c_uint32),
        ("pm_timer_block", ctypes.c_uint32),
        ("gpe0_block", ctypes.c_uint32),
        ("gpe1_block", ctypes.c_uint32),
        ("pm1_event_length", ctypes.c_uint8),
        ("pm1_control_length", ctypes.c_uint8),
        ("pm2_control_length", ctypes.c_uint8),
        ("pm_timer_length", ctypes.c_uint8),
        ("gpe0_block_length", ctypes.c_uint8),
        ("gpe1_block_length", ctypes.c_uint8),
        ("gpe1_base", ctypes.c_uint8),
        ("cst_control", ctypes.c_uint8),
        ("c2_latency", ctypes.c_uint16),
        ("c3_latency", ctypes.c_uint16),
        ("flush_size", ctypes.c_uint16),
        ("flush_stride", ctypes.c_uint16),
        ("duty_offset", ctypes.c_uint8),
        ("duty_width", ctypes.c_uint8),
        ("day_alarm", ctypes.c_uint8),
        ("month_alarm", ctypes.c_uint8),
        ("century", ctypes.c_uint8),
        ("boot_flags", ctypes.c_uint16),           # IA-PC Boot Architecture Flags
        ("reserved", ctypes.c_uint8),
        ("flags", ctypes.c_uint32),
        ("reset_register", acpi_generic_address),
        ("reset_value", ctypes.c_uint8),
        ("arm_boot_flags", ctypes.c_uint16),
        ("minor_revision", ctypes.c_uint8),
        ("Xfacs", ctypes.c_uint64),
        ("Xdsdt", ctypes.c_uint64),
        ("xpm1a_event_block", acpi_generic_address),
        ("xpm1b_event_block", acpi_generic_address),
        ("xpm1a_control_block", acpi_generic_address),
        ("xpm1b_control_block", acpi_generic_address),
        ("xpm2_control_block", acpi_generic_address),
        ("xpm_timer_block", acpi_generic_address),
        ("xgpe0_block", acpi_generic_address),
        ("xgpe1_block", acpi_generic_address),
        ("sleep_control", acpi_generic_address),
        ("sleep_status", acpi_generic_address),
        ("hypervisor_id", ctypes.c_uint64),
    ]


class acpi_table_madt(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("header", acpi_table_header),
        ("address", ctypes.c_uint32),              # local APIC address
        ("flags", ctypes.c_uint32),
    ]


class acpi_subtable_header(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [("type", ctypes.c_uint8), ("length", ctypes.c_uint8)]


class acpi_madt_local_apic(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("header", acpi_subtable_header),
        ("processor_id", ctypes.c_uint8),
        ("id", ctypes.c_uint8),
        ("lapic_flags", ctypes.c_uint32),
    ]


class acpi_madt_io_apic(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("header", acpi_subtable_header),
        ("id", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8),
        ("address", ctypes.c_uint32),
        ("global_irq_base", ctypes.c_uint32),
    ]


class acpi_madt_interrupt_override(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("header", acpi_subtable_header),
        ("bus", ctypes.c_uint8),
        ("source_irq", ctypes.c_uint8),
        ("global_irq", ctypes.c_uint32),
        ("inti_flags", ctypes.c_uint16),
    ]


class acpi_madt_local_apic_nmi(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("header", acpi_subtable_header),
        ("processor_id", ctypes.c_uint8),
        ("inti_flags", ctypes.c_uint16),
        ("lint", ctypes.c_uint8),
    ]


class AcpiMadtType(enum.IntEnum):
    """MADT interrupt controller structure types (ACPICA enum acpi_madt_type)."""

    ACPI_MADT_TYPE_LOCAL_APIC = 0
    ACPI_MADT_TYPE_IO_APIC = 1
    ACPI_MADT_TYPE_INTERRUPT_OVERRIDE = 2
    ACPI_MADT_TYPE_LOCAL_APIC_NMI = 4


class AcpiFadtFlags(enum.IntFlag):
    """FADT Fixed Feature Flags used here."""

    ACPI_FADT_RESET_REGISTER = 1 << 10
    ACPI_FADT_HW_REDUCED = 1 << 20


class AcpiFadtBootFlags(enum.IntFlag):
    """FADT IA-PC Boot Architecture Flags.  pyvmm sets only the "absent" ones: no VGA, no MSI, no RTC."""

    ACPI_FADT_LEGACY_DEVICES = 1 << 0
    ACPI_FADT_8042 = 1 << 1
    ACPI_FADT_NO_VGA = 1 << 2
    ACPI_FADT_NO_MSI = 1 << 3
    ACPI_FADT_NO_ASPM = 1 << 4
    ACPI_FADT_NO_CMOS_RTC = 1 << 5


class AcpiMpsInti(enum.IntFlag):
    """MPS INTI flags of an interrupt source override (polarity bits 1-0, trigger mode bits 3-2)."""

    ACPI_MADT_POLARITY_ACTIVE_HIGH = 1
    ACPI_MADT_POLARITY_ACTIVE_LOW = 3
    ACPI_MADT_TRIGGER_EDGE = 1 << 2
    ACPI_MADT_TRIGGER_LEVEL = 3 << 2


ACPI_ADR_SPACE_SYSTEM_IO = 1
ACPI_ACCESS_BYTE = 1
ACPI_MADT_ENABLED = 1
ACPI_MADT_PCAT_COMPAT = 1
# KVM's in-kernel IOAPIC (virt/kvm/ioapic.h) has 24 pins.
IOAPIC_NUM_PINS = 24
IOAPIC_ID = 0


# --- tables ------------------------------------------------------------------------------------------------

def checksum(data: bytes | bytearray) -> int:
    """The byte that makes data sum to zero modulo 256 (ACPI's and the MP table's checksums)."""
    return (-sum(data)) & 0xFF


def _header(signature: bytes, length: int, revision: int) -> acpi_table_header:
    return acpi_table_header(
        signature=signature,
        length=length,
        revision=revision,
        oem_id=OEM_ID,
        oem_table_id=OEM_TABLE_ID,
        oem_revision=OEM_REVISION,
        asl_compiler_id=CREATOR_ID,
        asl_compiler_revision=CREATOR_REVISION,
    )


def _finish(table: bytes | bytearray) -> bytes:
    """Set the checksum byte (offset 9 of the common header) of a complete table."""
    out = bytearray(table)
    out[9] = 0
    out[9] = checksum(out)
    return bytes(out)


def _sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A System Description Table: the common header followed by body."""
    length = ctypes.sizeof(acpi_table_header) + len(body)
    return _finish(bytes(_header(signature, length, revision)) + body)


def _gas_io(port: int) -> acpi_generic_address:
    return acpi_generic_address(
        space_id=ACPI_ADR_SPACE_SYSTEM_IO, bit_width=8, bit_offset=0,
        access_width=ACPI_ACCESS_BYTE, address=port,
    )


def build_dsdt(num_cpus: int, virtio_devices: Sequence[tuple[int, int, int]], *, serial: bool = True) -> bytes:
    """The DSDT: \\_S5_, a processor device per vCPU, COM1 and one LNRO0005 device per virtio-mmio window."""
    sb: list[bytes] = []
    for cpu in range(num_cpus):
        # ACPI0007 processor devices: their _UID matches the MADT's processor_id.
        sb.append(aml.device(f"C{cpu:03X}", aml.name("_HID", aml.string("ACPI0007")),
                             aml.name("_UID", aml.integer(cpu))))
    if serial:
        sb.append(aml.device(
            "COM1",
            aml.name("_HID", aml.integer(aml.eisa_id("PNP0501"))),
            aml.name("_UID", aml.integer(1)),
            aml.name("_CRS", aml.resource_template(
                aml.io(layout.SERIAL_COM1, layout.SERIAL_COM1, 0, 8),
                aml.irq_no_flags(layout.SERIAL_IRQ),
            )),
        ))
    for index, (base, size, irq) in enumerate(virtio_devices):
        sb.append(aml.device(
            f"VR{index:02X}",
            aml.name("_HID", aml.string("LNRO0005")),
            aml.name("_UID", aml.integer(index)),
            aml.name("_CRS", aml.resource_template(
                aml.memory32_fixed(base, size),
                aml.interrupt(irq, edge=False, active_low=False, shared=False),
            )),
        ))
    body = (
        aml.name("_S5_", aml.package(aml.integer(S5_SLP_TYP), aml.integer(0)))
        + aml.scope("_SB_", *sb)
    )
    return _sdt(b"DSDT", 2, body)


def build_fadt(dsdt_gpa: int) -> bytes:
    """The FADT (revision 6): hardware-reduced, sleep control/status ports, reset register, DSDT pointers."""
    fadt = acpi_table_fadt()
    fadt.header = _header(b"FACP", ctypes.sizeof(acpi_table_fadt), 6)
    fadt.minor_revision = 5
    fadt.dsdt = dsdt_gpa
    fadt.Xdsdt = dsdt_gpa
    fadt.flags = AcpiFadtFlags.ACPI_FADT_HW_REDUCED | AcpiFadtFlags.ACPI_FADT_RESET_REGISTER
    # No 8042 flag: Linux's i8042 driver then skips probing the keyboard controller (pyvmm's i8042 is
    # there for Multiboot toy kernels, which read no ACPI; a Linux guest uses the serial console, and
    # the probe of a mouse port nothing answers would only cost it time).  No RTC: Linux then leaves
    # the CMOS ports alone.  No VGA: the text console is off (--vga none) unless asked for.
    fadt.boot_flags = (AcpiFadtBootFlags.ACPI_FADT_NO_VGA | AcpiFadtBootFlags.ACPI_FADT_NO_MSI
                       | AcpiFadtBootFlags.ACPI_FADT_NO_CMOS_RTC)
    fadt.reset_register = _gas_io(RESET_PORT)
    fadt.reset_value = RESET_VALUE
    fadt.sleep_control = _gas_io(SLEEP_CONTROL_PORT)
    fadt.sleep_status = _gas_io(SLEEP_STATUS_PORT)
    fadt.hypervisor_id = int.from_bytes(b"PYVMM\0\0\0", "little")
    return _finish(bytes(fadt))


def build_madt(num_cpus: int, level_irqs: Sequence[int], *, pcat_compat: bool = True) -> bytes:
    """The MADT: a local APIC per vCPU (APIC id = index), the IOAPIC, overrides, LINT1 as NMI."""
    subtables = bytearray()
    for cpu in range(num_cpus):
        subtables += bytes(acpi_madt_local_apic(
            header=acpi_subtable_header(AcpiMadtType.ACPI_MADT_TYPE_LOCAL_APIC,
                                        ctypes.sizeof(acpi_madt_local_apic)),
            processor_id=cpu, id=cpu, lapic_flags=ACPI_MADT_ENABLED))
    subtables += bytes(acpi_madt_io_apic(
        header=acpi_subtable_header(AcpiMadtType.ACPI_MADT_TYPE_IO_APIC, ctypes.sizeof(acpi_madt_io_apic)),
        id=IOAPIC_ID, address=layout.IOAPIC_BASE, global_irq_base=0))
    for irq in sorted(set(level_irqs)):
        if irq >= 16:
            continue                   # not an ISA IRQ: the device's own _CRS decides its mode
        subtables += bytes(acpi_madt_interrupt_override(
            header=acpi_subtable_header(AcpiMadtType.ACPI_MADT_TYPE_INTERRUPT_OVERRIDE,
                                        ctypes.sizeof(acpi_madt_interrupt_override)),
            bus=0, source_irq=irq, global_irq=irq,
            inti_flags=AcpiMpsInti.ACPI_MADT_POLARITY_ACTIVE_HIGH | AcpiMpsInti.ACPI_MADT_TRIGGER_LEVEL))
    # LINT1 of every processor (0xff) is the NMI input, as on a PC.
    subtables += bytes(acpi_madt_local_apic_nmi(
        header=acpi_subtable_header(AcpiMadtType.ACPI_MADT_TYPE_LOCAL_APIC_NMI,
                                    ctypes.sizeof(acpi_madt_local_apic_nmi)),
        processor_id=0xFF, inti_flags=0, lint=1))
    madt = acpi_table_madt(address=layout.LAPIC_BASE, flags=ACPI_MADT_PCAT_COMPAT if pcat_compat else 0)
    body = bytes(madt)[ctypes.sizeof(acpi_table_header):] + bytes(subtables)
    return _sdt(b"APIC", 5, body)


def build_xsdt(table_gpas: Sequence[int]) -> bytes:
    """The XSDT: 64-bit pointers to every table but the DSDT (which the FADT points to)."""
    return _sdt(b"XSDT", 1, b"".join(gpa.to_bytes(8, "little") for gpa in table_gpas))


def build_rsdp(xsdt_gpa: int) -> bytes:
    """The ACPI 2.0+ RSDP: revision 2, no RSDT, the XSDT address, both checksums."""
    rsdp = acpi_table_rsdp(signature=b"RSD PTR ", oem_id=OEM_ID, revision=2,
                           rsdt_physical_address=0, length=ctypes.sizeof(acpi_table_rsdp),
                           xsdt_physical_address=xsdt_gpa)
    raw = bytearray(rsdp)
    raw[8] = checksum(raw[:20])
    raw[32] = checksum(raw)
    return bytes(raw)


def _align(value: int) -> int:
    return (value + TABLE_ALIGN - 1) & ~(TABLE_ALIGN - 1)


def build_acpi_tables(
    base_gpa: int,
    num_cpus: int,
    virtio_devices: Sequence[tuple[int, int, int]],
    *,
    serial: bool = True,
    pcat_compat: bool = True,
) -> tuple[bytes, int]:
    """All tables as one blob to copy to base_gpa, and the RSDP's guest-physical address.

    virtio_devices lists (base gpa, window size, irq) per virtio-mmio window.  The RSDP comes first,
    16-byte aligned, so a legacy scan of 0xE0000-0xFFFFF finds it when base_gpa is layout.ACPI_START;
    a boot_params' acpi_rsdp_addr or PVH's rsdp_paddr should carry the returned address.
    """
    if base_gpa % TABLE_ALIGN:
        raise ValueError(f"ACPI tables need a 16-byte aligned base, not {base_gpa:#x}")
    if not 1 <= num_cpus <= 254:
        raise ValueError(f"the MADT's xAPIC entries describe 1 to 254 vCPUs, not {num_cpus}")
    rsdp_gpa = base_gpa
    xsdt_gpa = _align(rsdp_gpa + ctypes.sizeof(acpi_table_rsdp))
    xsdt_len = ctypes.sizeof(acpi_table_header) + 2 * 8
    fadt_gpa = _align(xsdt_gpa + xsdt_len)
    madt_gpa = _align(fadt_gpa + ctypes.sizeof(acpi_table_fadt))
    madt = build_madt(num_cpus, [irq for _, _, irq in virtio_devices], pcat_compat=pcat_compat)
    dsdt_gpa = _align(madt_gpa + len(madt))
    dsdt = build_dsdt(num_cpus, virtio_devices, serial=serial)

    blob = bytearray(dsdt_gpa + len(dsdt) - base_gpa)
    for gpa, table in (
        (rsdp_gpa, build_rsdp(xsdt_gpa)),
        (xsdt_gpa, build_xsdt([fadt_gpa, madt_gpa])),
        (fadt_gpa, build_fadt(dsdt_gpa)),
        (madt_gpa, madt),
        (dsdt_gpa, dsdt),
    ):
        blob[gpa - base_gpa:gpa - base_gpa + len(table)] = table
    if len(blob) > ACPI_AREA_SIZE:
        raise ValueError(f"ACPI tables take {len(blob)} bytes, more than the {ACPI_AREA_SIZE:#x} reserved")
    return bytes(blob), rsdp_gpa
