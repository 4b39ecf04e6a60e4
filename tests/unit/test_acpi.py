"""ACPI tables and the AML encoder: byte-for-byte pieces, table invariants, and iasl's verdict on our bytes."""

from __future__ import annotations

import struct

import pytest

from pyvmm.arch.x86 import acpi, aml, layout

VIRTIO = [(layout.VIRTIO_MMIO_BASE + i * layout.VIRTIO_MMIO_STRIDE, 0x200,
           layout.VIRTIO_IRQ_BASE + i) for i in range(2)]


# --- AML encoder, byte for byte --------------------------------------------------------------------------

@pytest.mark.parametrize("body_len, encoded", [
    (0, b"\x01"),
    (62, b"\x3f"),                 # 62 + 1 = 63: the largest one-byte PkgLength
    (63, b"\x41\x04"),             # 63 + 2 = 65 = 0x41: lead (1 << 6) | 0x1, then 0x41 >> 4
    (4093, b"\x4f\xff"),           # 4095: the largest two-byte PkgLength
    (4094, b"\x81\x00\x01"),       # 4097 = 0x1001 needs three bytes
])
def test_pkg_length(body_len: int, encoded: bytes) -> None:
    assert aml.pkg_length(body_len) == encoded


def test_pkg_length_too_long() -> None:
    with pytest.raises(ValueError):
        aml.pkg_length(1 << 28)


def test_names() -> None:
    assert aml.name_seg("_HID") == b"_HID"
    assert aml.name_seg("AB") == b"AB__"
    assert aml.name_string("\\_SB_") == b"\\_SB_"
    assert aml.name_string("\\_SB_.COM1") == b"\\\x2e_SB_COM1"
    assert aml.name_string("^A.B.C") == b"^\x2f\x03A___B___C___"
    for bad in ("", "TOOLONG", "1ABC", "A-B"):
        with pytest.raises(ValueError):
            aml.name_seg(bad)


@pytest.mark.parametrize("value, encoded", [
    (0, b"\x00"),
    (1, b"\x01"),
    (5, b"\x0a\x05"),
    (0x1234, b"\x0b\x34\x12"),
    (0xD000_0000, b"\x0c\x00\x00\x00\xd0"),
    (0x1_0000_0000, b"\x0e\x00\x00\x00\x00\x01\x00\x00\x00"),
    (0xFFFF_FFFF_FFFF_FFFF, b"\xff"),
])
def test_integer(value: int, encoded: bytes) -> None:
    assert aml.integer(value) == encoded


def test_string_and_eisa_id() -> None:
    assert aml.string("LNRO0005") == b"\x0dLNRO0005\x00"
    # What iasl emits for EisaId("PNP0501"): DWordConst 0x0501D041 stored as 41 D0 05 01.
    assert aml.eisa_id("PNP0501") == 0x0105D041
    assert aml.integer(aml.eisa_id("PNP0501")) == b"\x0c\x41\xd0\x05\x01"


def test_device_and_name() -> None:
    # Device (VR00) { Name (_UID, Zero) }
    assert aml.device("VR00", aml.name("_UID", aml.integer(0))) == (
        b"\x5b\x82\x0b" b"VR00" b"\x08_UID\x00")


def test_package_and_method() -> None:
    assert aml.name("\\_S5_", aml.package(aml.integer(5), aml.integer(0))) == (
        b"\x08\\_S5_" b"\x12\x05\x02\x0a\x05\x00")
    # Method (_STA, 0, NotSerialized) { Return (0x0F) }
    assert aml.method("_STA", aml.return_(aml.integer(0xF))) == b"\x14\x09_STA\x00\xa4\x0a\x0f"


def test_resource_descriptors() -> None:
    assert aml.memory32_fixed(0xD000_0000, 0x200) == (
        b"\x86\x09\x00\x01" b"\x00\x00\x00\xd0" b"\x00\x02\x00\x00")
    assert aml.interrupt(5) == b"\x89\x06\x00\x01\x01\x05\x00\x00\x00"      # consumer, level, high, exclusive
    assert aml.interrupt(5, edge=True, active_low=True, shared=True)[3] == 0x0F
    assert aml.io(0x3F8, 0x3F8, 0, 8) == b"\x47\x01\xf8\x03\xf8\x03\x00\x08"
    assert aml.irq_no_flags(4) == b"\x22\x10\x00"
    template = aml.resource_template(aml.irq_no_flags(4))
    # Buffer: BufferOp, PkgLength 8 (itself + 7), BufferSize 5, the descriptor, the End Tag.
    assert template == b"\x11\x08\x0a\x05\x22\x10\x00\x79\x00"


# --- the tables ---------------------------------------------------------------------------------------------

def tables(blob: bytes, base: int) -> dict[str, bytes]:
    """Walk RSDP -> XSDT -> tables -> FADT's DSDT, as an OS does."""
    assert blob[:8] == b"RSD PTR "
    xsdt_gpa = struct.unpack_from("<Q", blob, 24)[0]

    def table(gpa: int) -> bytes:
        length = struct.unpack_from("<I", blob, gpa - base + 4)[0]
        return blob[gpa - base:gpa - base + length]

    xsdt = table(xsdt_gpa)
    found = {"XSDT": xsdt}
    for i in range((len(xsdt) - 36) // 8):
        t = table(struct.unpack_from("<Q", xsdt, 36 + 8 * i)[0])
        found[t[:4].decode()] = t
    found["DSDT"] = table(struct.unpack_from("<Q", found["FACP"], 140)[0])
    return found


def test_rsdp_and_checksums() -> None:
    blob, rsdp_gpa = acpi.build_acpi_tables(layout.ACPI_START, 2, VIRTIO)
    assert rsdp_gpa == layout.ACPI_START
    assert sum(blob[:20]) % 256 == 0 and sum(blob[:36]) % 256 == 0
    assert blob[15] == 2                                            # revision 2: XSDT
    found = tables(blob, layout.ACPI_START)
    assert sorted(found) == ["APIC", "DSDT", "FACP", "XSDT"]
    for sig, t in found.items():
        assert sum(t) % 256 == 0, f"{sig} checksum"
        assert t[10:16] == acpi.OEM_ID


def test_fadt() -> None:
    blob, _ = acpi.build_acpi_tables(layout.ACPI_START, 1, VIRTIO)
    found = tables(blob, layout.ACPI_START)
    fadt = acpi.acpi_table_fadt.from_buffer_copy(found["FACP"])
    assert fadt.header.length == 276 and fadt.header.revision == 6
    assert fadt.flags & acpi.AcpiFadtFlags.ACPI_FADT_HW_REDUCED
    assert fadt.dsdt == fadt.Xdsdt != 0
    assert (fadt.sleep_control.space_id, fadt.sleep_control.address) == (1, acpi.SLEEP_CONTROL_PORT)
    assert (fadt.sleep_status.space_id, fadt.sleep_status.address) == (1, acpi.SLEEP_STATUS_PORT)
    assert (fadt.reset_register.address, fadt.reset_value) == (0x64, 0xFE)
    assert not fadt.boot_flags & acpi.AcpiFadtBootFlags.ACPI_FADT_8042


def test_madt() -> None:
    blob, _ = acpi.build_acpi_tables(layout.ACPI_START, 3, VIRTIO)
    madt = tables(blob, layout.ACPI_START)["APIC"]
    assert struct.unpack_from("<II", madt, 36) == (layout.LAPIC_BASE, 1)
    subtables = []
    off = 44
    while off < len(madt):
        kind, length = madt[off], madt[off + 1]
        subtables.append((kind, madt[off:off + length]))
        off += length
    assert off == len(madt)
    lapics = [s for k, s in subtables if k == 0]
    assert [(s[2], s[3], struct.unpack_from("<I", s, 4)[0]) for s in lapics] == [(0, 0, 1), (1, 1, 1), (2, 2, 1)]
    (ioapic,) = [s for k, s in subtables if k == 1]
    assert struct.unpack_from("<II", ioapic, 4) == (layout.IOAPIC_BASE, 0)
    overrides = [struct.unpack_from("<BBIH", s, 2) for k, s in subtables if k == 2]
    assert overrides == [(0, 5, 5, 0x0D), (0, 6, 6, 0x0D)]          # level (3 << 2), active high (1)


def test_dsdt_devices() -> None:
    dsdt = acpi.build_dsdt(1, VIRTIO)
    expected_vr01 = aml.device(
        "VR01", aml.name("_HID", aml.string("LNRO0005")), aml.name("_UID", aml.integer(1)),
        aml.name("_CRS", aml.resource_template(aml.memory32_fixed(0xD000_1000, 0x200), aml.interrupt(6))))
    assert expected_vr01 in dsdt
    assert dsdt.count(b"LNRO0005") == 2
    assert b"\x08_HID\x0c\x41\xd0\x05\x01" in dsdt                    # COM1's EisaId("PNP0501")


def test_poweroff_value() -> None:
    assert acpi.is_poweroff((acpi.S5_SLP_TYP << 2) | 0x20)
    assert not acpi.is_poweroff(acpi.S5_SLP_TYP << 2)               # SLP_EN missing
    assert not acpi.is_poweroff((3 << 2) | 0x20)                    # S3 is not power-off


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        acpi.build_acpi_tables(layout.ACPI_START + 4, 1, [])
    with pytest.raises(ValueError):
        acpi.build_acpi_tables(layout.ACPI_START, 0, [])


# --- a real tool reads our bytes ----------------------------------------------------------------------------
