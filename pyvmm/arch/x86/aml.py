"""A small AML encoder: the few ACPI Machine Language terms pyvmm's DSDT needs, as bytes.

Every function returns the encoded bytes of one term, so a table is plain composition:

    device("VR00", name("_HID", string("LNRO0005")), name("_UID", integer(0)))

Encodings follow the ACPI specification, chapter "ACPI Machine Language (AML) Specification"
(sections "Package Length Encoding", "Name Objects Encoding", "Data Objects Encoding",
"Named Objects Encoding") and, for resource templates, chapter "Device Configuration",
section "Resource Data Types for ACPI".
"""

from __future__ import annotations

import enum
import struct


class Op(enum.IntEnum):
    """AML opcodes used here (ACPI spec, "AML Opcode Values" / the grammar's *Op names)."""

    ZeroOp = 0x00
    OneOp = 0x01
    NameOp = 0x08
    BytePrefix = 0x0A
    WordPrefix = 0x0B
    DWordPrefix = 0x0C
    StringPrefix = 0x0D
    QWordPrefix = 0x0E
    ScopeOp = 0x10
    BufferOp = 0x11
    PackageOp = 0x12
    MethodOp = 0x14
    DualNamePrefix = 0x2E
    MultiNamePrefix = 0x2F
    ExtOpPrefix = 0x5B
    RootChar = 0x5C
    ParentPrefixChar = 0x5E
    ReturnOp = 0xA4
    OnesOp = 0xFF


class ExtOp(enum.IntEnum):
    """Second bytes of the two-byte opcodes that follow ExtOpPrefix."""

    DeviceOp = 0x82


# --- Package Length Encoding -------------------------------------------------------------------------------

def pkg_length(body_len: int) -> bytes:
    """PkgLength for a body of body_len bytes; the encoded length counts the PkgLength bytes themselves.

    One byte holds lengths up to 63 (bits 5-0).  Longer lengths use 1-3 following bytes: the lead byte's
    bits 7-6 give their count, its bits 3-0 the low nibble, each following byte the next 8 bits.
    """
    if body_len + 1 <= 0x3F:
        return bytes([body_len + 1])
    for extra in (1, 2, 3):
        total = body_len + 1 + extra
        if total < 1 << (4 + 8 * extra):
            out = [(extra << 6) | (total & 0x0F)]
            rest = total >> 4
            for _ in range(extra):
                out.append(rest & 0xFF)
                rest >>= 8
            return bytes(out)
    raise ValueError(f"AML package of {body_len} bytes is too long for a PkgLength (max 2**28 - 1)")


# --- Name Objects Encoding ---------------------------------------------------------------------------------

def name_seg(seg: str) -> bytes:
    """A NameSeg: 4 characters, a lead of A-Z or '_' then A-Z, 0-9 or '_'; short names are padded with '_'."""
    if not 1 <= len(seg) <= 4:
        raise ValueError(f"AML NameSeg {seg!r} must have 1 to 4 characters")
    seg = seg.upper().ljust(4, "_")
    if not (seg[0].isalpha() or seg[0] == "_") or not all(c.isalnum() or c == "_" for c in seg):
        raise ValueError(f"AML NameSeg {seg!r} has a character outside A-Z, 0-9, '_'")
    return seg.encode("ascii")


def name_string(path: str) -> bytes:
    r"""A NameString: optional root '\' or parent '^' prefixes, then dot-separated NameSegs."""
    prefix = b""
    while path.startswith(("\\", "^")):
        prefix += path[0].encode("ascii")
        path = path[1:]
    segs = [name_seg(s) for s in path.split(".")] if path else []
    if not segs:
        return prefix + bytes([Op.ZeroOp])          # NullName
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + bytes([Op.DualNamePrefix]) + b"".join(segs)
    if len(segs) > 255:
        raise ValueError(f"AML name {path!r} has more than 255 segments")
    return prefix + bytes([Op.MultiNamePrefix, len(segs)]) + b"".join(segs)


# --- Data Objects Encoding ---------------------------------------------------------------------------------

def integer(value: int) -> bytes:
    """The shortest ComputationalData for an unsigned integer (ZeroOp, OneOp, OnesOp or a prefixed constant)."""
    if value < 0 or value > 0xFFFF_FFFF_FFFF_FFFF:
        raise ValueError(f"AML integer {value} does not fit in 64 bits")
    if value == 0:
        return bytes([Op.ZeroOp])
    if value == 1:
        return bytes([Op.OneOp])
    if value == 0xFFFF_FFFF_FFFF_FFFF:
        return bytes([Op.OnesOp])
    if value <= 0xFF:
        return bytes([Op.BytePrefix, value])
    if value <= 0xFFFF:
        return bytes([Op.WordPrefix]) + struct.pack("<H", value)
    if value <= 0xFFFF_FFFF:
        return bytes([Op.DWordPrefix]) + struct.pack("<I", value)
    return bytes([Op.QWordPrefix]) + struct.pack("<Q", value)


def string(text: str) -> bytes:
    """A String: StringPrefix, ASCII characters 0x01-0x7F, a NUL."""
    raw = text.encode("ascii")
    if b"\x00" in raw:
        raise ValueError("AML string may not contain NUL")
    return bytes([Op.StringPrefix]) + raw + b"\x00"


def eisa_id(text: str) -> int:
    """The 32-bit compressed EISA id of a 7-character PNP id such as "PNP0501" (the ASL EISAID macro).

    Three letters packed 5 bits each ('A' = 1) and four hex digits, stored so that the bytes in memory
    read in the id's order: the ASL compiler emits it as a DWord constant.
    """
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise ValueError(f"EISA id {text!r} must be three capital letters and four hex digits")
    letters = ((ord(text[0]) - 0x40) << 10) | ((ord(text[1]) - 0x40) << 5) | (ord(text[2]) - 0x40)
    value = (letters << 16) | int(text[3:], 16)
    return int.from_bytes(value.to_bytes(4, "big"), "little")


def buffer(data: bytes) -> bytes:
    """DefBuffer: BufferOp PkgLength BufferSize ByteList."""
    body = integer(len(data)) + data
    return bytes([Op.BufferOp]) + pkg_length(len(body)) + body


def package(*elements: bytes) -> bytes:
    """DefPackage: PackageOp PkgLength NumElements PackageElementList (elements already encoded)."""
    if len(elements) > 255:
        raise ValueError("AML Package holds at most 255 elements (VarPackage not supported)")
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([Op.PackageOp]) + pkg_length(len(body)) + body


# --- Named Objects Encoding and statements -----------------------------------------------------------------

def name(path: str, value: bytes) -> bytes:
    """DefName: NameOp NameString DataRefObject."""
    return bytes([Op.NameOp]) + name_string(path) + value


def scope(path: str, *terms: bytes) -> bytes:
    """DefScope: ScopeOp PkgLength NameString TermList."""
    body = name_string(path) + b"".join(terms)
    return bytes([Op.ScopeOp]) + pkg_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    """DefDevice: ExtOpPrefix DeviceOp PkgLength NameString TermList."""
    body = name_string(path) + b"".join(terms)
    return bytes([Op.ExtOpPrefix, ExtOp.DeviceOp]) + pkg_length(len(body)) + body


def method(path: str, *terms: bytes, arg_count: int = 0, serialized: bool = False) -> bytes:
    """DefMethod: MethodOp PkgLength NameString MethodFlags TermList (flags: ArgCount bits 2-0, bit 3)."""
    if not 0 <= arg_count <= 7:
        raise ValueError("AML Method takes 0 to 7 arguments")
    flags = arg_count | (0x08 if serialized else 0)
    body = name_string(path) + bytes([flags]) + b"".join(terms)
    return bytes([Op.MethodOp]) + pkg_length(len(body)) + body


def return_(value: bytes) -> bytes:
    """DefReturn: ReturnOp ArgObject."""
    return bytes([Op.ReturnOp]) + value


# --- Resource Data Types for ACPI --------------------------------------------------------------------------

def resource_template(*descriptors: bytes) -> bytes:
    """A ResourceTemplate(): a Buffer of resource descriptors closed by an End Tag (checksum 0 = none)."""
    return buffer(b"".join(descriptors) + bytes([0x79, 0x00]))


def memory32_fixed(base: int, length: int, writable: bool = True) -> bytes:
    """Memory32Fixed: the 32-Bit Fixed Memory Range Descriptor (large item 0x86, 9 data bytes)."""
    return struct.pack("<BHBII", 0x86, 9, 1 if writable else 0, base, length)


def interrupt(
    *irqs: int,
    consumer: bool = True,
    edge: bool = False,
    active_low: bool = False,
    shared: bool = False,
    wake: bool = False,
) -> bytes:
    """Interrupt(): the Extended Interrupt Descriptor (large item 0x89).

    Flags byte: bit 0 consumer, bit 1 edge (0 = level), bit 2 active low, bit 3 shared, bit 4 wake capable.
    """
    if not 1 <= len(irqs) <= 255:
        raise ValueError("an Extended Interrupt Descriptor lists 1 to 255 interrupts")
    flags = (consumer << 0) | (edge << 1) | (active_low << 2) | (shared << 3) | (wake << 4)
    data = bytes([flags, len(irqs)]) + b"".join(struct.pack("<I", i) for i in irqs)
    return struct.pack("<BH", 0x89, len(data)) + data


def io(minimum: int, maximum: int, alignment: int, length: int, decode16: bool = True) -> bytes:
    """IO(): the I/O Port Descriptor (small item 0x47, 7 data bytes)."""
    return struct.pack("<BBHHBB", 0x47, 1 if decode16 else 0, minimum, maximum, alignment, length)


def irq_no_flags(*irqs: int) -> bytes:
    """IRQNoFlags(): the 2-byte IRQ Descriptor (small item 0x22): ISA edge, active high, exclusive."""
    mask = 0
    for i in irqs:
        if not 0 <= i <= 15:
            raise ValueError(f"IRQNoFlags takes ISA IRQs 0-15, not {i}")
        mask |= 1 << i
    return struct.pack("<BH", 0x22, mask)
