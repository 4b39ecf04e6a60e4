"""Multiboot v1 kernels: find and check the header, lay out the image, and build the boot information.

Everything here follows the Multiboot Specification version 0.6.96: section 3.1 "OS image format"
(the header, its magic fields, address fields and graphics fields), 3.2 "Machine state" (what the
entry sees, set by the firmware or by arch/x86/cpu.py) and 3.3 "Boot information format" (the
structure EBX points at).  The structures keep the names of the spec's own multiboot.h.
"""

from __future__ import annotations

import ctypes
import struct
from ctypes import c_uint8, c_uint16, c_uint32, c_uint64
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import ClassVar

from ..arch.x86 import layout
from ..errors import LoaderError
from .elf import Segment
from .signatures import MULTIBOOT_HEADER_MAGIC, MULTIBOOT_SEARCH

MULTIBOOT_HEADER_ALIGN = 4
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002   # in EAX at the kernel's entry
MULTIBOOT_MOD_ALIGN = 0x1000
MULTIBOOT_INFO_ALIGN = 4

# Header flags.  Bits 0-15 are requirements: a boot loader that does not know one must refuse.
MULTIBOOT_PAGE_ALIGN = 0x00000001         # modules on 4 KiB boundaries
MULTIBOOT_MEMORY_INFO = 0x00000002        # mem_* and mmap_* in the boot information
MULTIBOOT_VIDEO_MODE = 0x00000004         # the graphics fields ask for a video mode
MULTIBOOT_AOUT_KLUDGE = 0x00010000        # the address fields say where to load (not the ELF headers)
_KNOWN_REQUIREMENTS = MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY_INFO | MULTIBOOT_VIDEO_MODE

# Boot information flags: which fields of multiboot_info are valid.
MULTIBOOT_INFO_MEMORY = 0x00000001
MULTIBOOT_INFO_BOOTDEV = 0x00000002
MULTIBOOT_INFO_CMDLINE = 0x00000004
MULTIBOOT_INFO_MODS = 0x00000008
MULTIBOOT_INFO_AOUT_SYMS = 0x00000010
MULTIBOOT_INFO_ELF_SHDR = 0x00000020
MULTIBOOT_INFO_MEM_MAP = 0x00000040
MULTIBOOT_INFO_DRIVE_INFO = 0x00000080
MULTIBOOT_INFO_CONFIG_TABLE = 0x00000100
MULTIBOOT_INFO_BOOT_LOADER_NAME = 0x00000200
MULTIBOOT_INFO_APM_TABLE = 0x00000400
MULTIBOOT_INFO_VBE_INFO = 0x00000800
MULTIBOOT_INFO_FRAMEBUFFER_INFO = 0x00001000

MULTIBOOT_FRAMEBUFFER_TYPE_INDEXED = 0
MULTIBOOT_FRAMEBUFFER_TYPE_RGB = 1
MULTIBOOT_FRAMEBUFFER_TYPE_EGA_TEXT = 2

MULTIBOOT_MEMORY_AVAILABLE = 1
MULTIBOOT_MEMORY_RESERVED = 2

BOOT_LOADER_NAME = b"pyvmm"
TEXT_COLUMNS, TEXT_ROWS = 80, 25          # the one video mode pyvmm has: VGA colour text


class multiboot_header(ctypes.Structure):
    _fields_ = [
        ("magic", c_uint32), ("flags", c_uint32), ("checksum", c_uint32),
        # valid with MULTIBOOT_AOUT_KLUDGE
        ("header_addr", c_uint32), ("load_addr", c_uint32), ("load_end_addr", c_uint32),
        ("bss_end_addr", c_uint32), ("entry_addr", c_uint32),
        # valid with MULTIBOOT_VIDEO_MODE
        ("mode_type", c_uint32), ("width", c_uint32), ("height", c_uint32), ("depth", c_uint32),
    ]


class multiboot_aout_symbol_table(ctypes.Structure):
    _fields_ = [("tabsize", c_uint32), ("strsize", c_uint32), ("addr", c_uint32), ("reserved", c_uint32)]


class multiboot_elf_section_header_table(ctypes.Structure):
    _fields_ = [("num", c_uint32), ("size", c_uint32), ("addr", c_uint32), ("shndx", c_uint32)]


class _multiboot_info_u(ctypes.Union):
    _fields_ = [("aout_sym", multiboot_aout_symbol_table), ("elf_sec", multiboot_elf_section_header_table)]


class _framebuffer_palette(ctypes.Structure):
    _fields_ = [("framebuffer_palette_addr", c_uint32), ("framebuffer_palette_num_colors", c_uint16)]


class _framebuffer_rgb(ctypes.Structure):
    _fields_ = [
        ("framebuffer_red_field_position", c_uint8), ("framebuffer_red_mask_size", c_uint8),
        ("framebuffer_green_field_position", c_uint8), ("framebuffer_green_mask_size", c_uint8),
        ("framebuffer_blue_field_position", c_uint8), ("framebuffer_blue_mask_size", c_uint8),
    ]


class _framebuffer_colors(ctypes.Union):
    _anonymous_ = ("palette", "rgb")
    _fields_ = [("palette", _framebuffer_palette), ("rgb", _framebuffer_rgb)]


class multiboot_info(ctypes.Structure):
    _anonymous_ = ("colors",)
    _fields_ = [
        ("flags", c_uint32),
        ("mem_lower", c_uint32), ("mem_upper", c_uint32),       # MULTIBOOT_INFO_MEMORY, KiB
        ("boot_device", c_uint32),
        ("cmdline", c_uint32),
        ("mods_count", c_uint32), ("mods_addr", c_uint32),
        ("u", _multiboot_info_u),
        ("mmap_length", c_uint32), ("mmap_addr", c_uint32),
        ("drives_length", c_uint32), ("drives_addr", c_uint32),
        ("config_table", c_uint32),
        ("boot_loader_name", c_uint32),
        ("apm_table", c_uint32),
        ("vbe_control_info", c_uint32), ("vbe_mode_info", c_uint32),
        ("vbe_mode", c_uint16), ("vbe_interface_seg", c_uint16), ("vbe_interface_off", c_uint16),
        ("vbe_interface_len", c_uint16),
        ("framebuffer_addr", c_uint64),
        ("framebuffer_pitch", c_uint32), ("framebuffer_width", c_uint32), ("framebuffer_height", c_uint32),
        ("framebuffer_bpp", c_uint8), ("framebuffer_type", c_uint8),
        ("colors", _framebuffer_colors),
    ]


class multiboot_mmap_entry(ctypes.Structure):
    # __attribute__((packed)) in multiboot.h: `size` does not count itself, and the 64-bit fields sit at 4.
    _pack_ = 1
    _fields_ = [("size", c_uint32), ("addr", c_uint64), ("len", c_uint64), ("type", c_uint32)]


class multiboot_mod_list(ctypes.Structure):
    _fields_ = [("mod_start", c_uint32), ("mod_end", c_uint32), ("cmdline", c_uint32), ("pad", c_uint32)]


multiboot_info_t = multiboot_info
multiboot_memory_map_t = multiboot_mmap_entry
multiboot_module_t = multiboot_mod_list

_U32 = struct.Struct("<I")
_HEADER_BASE = 12                         # magic, flags, checksum
_HEADER_ADDR_END = 32                     # ... and the five address fields
_HEADER_VIDEO_END = ctypes.sizeof(multiboot_header)


# --- the header -----------------------------------------------------------------------------------------


def _header_length(flags: int) -> int:
    """How many bytes of the header its flags make meaningful (the later fields are unused otherwise)."""
    if flags & MULTIBOOT_VIDEO_MODE:
        return _HEADER_VIDEO_END
    if flags & MULTIBOOT_AOUT_KLUDGE:
        return _HEADER_ADDR_END
    return _HEADER_BASE


def _candidates(data: bytes, limit: int):
    """Offsets of the magic at 4-byte alignment below limit, and whether each has a good checksum."""
    magic = _U32.pack(MULTIBOOT_HEADER_MAGIC)
    at = data.find(magic, 0, limit + 4)
    while at >= 0:
        if at % MULTIBOOT_HEADER_ALIGN == 0 and at + _HEADER_BASE <= len(data):
            _, flags, checksum = struct.unpack_from("<III", data, at)
            yield at, (MULTIBOOT_HEADER_MAGIC + flags + checksum) & 0xFFFF_FFFF == 0, flags
        at = data.find(magic, at + 1, limit + 4)


def find_header(data: bytes) -> int | None:
    """The offset of the first valid Multiboot header in the first 8 KiB, or None (3.1.1 "The layout
    of Multiboot header": 32-bit aligned, magic + flags + checksum = 0 mod 2^32, all of it within the
    first 8192 bytes)."""
    for at, good, flags in _candidates(data, MULTIBOOT_SEARCH - _HEADER_BASE):
        if good and at + _header_length(flags) <= MULTIBOOT_SEARCH:
            return at
    return None


def header_problem(data: bytes) -> str | None:
    """Why a file that looks meant for Multiboot has no usable header (bad checksum, header past
    8 KiB, cut off by the end of the file); None if it shows no sign of a Multiboot header."""
    for at, good, flags in _candidates(data, min(len(data), 1 << 20)):
        if not good:
            if at < MULTIBOOT_SEARCH:
                return (f"the Multiboot header at offset {at:#x} has a bad checksum (magic + flags + checksum "
                        "must be 0 mod 2^32)")
            continue
        if at + _header_length(flags) > MULTIBOOT_SEARCH:
            return (f"the Multiboot header at offset {at:#x} does not lie within the first {MULTIBOOT_SEARCH} "
                    "bytes, where a boot loader looks for it; move it to the front of the image")
    return None


# --- the image ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultibootImage:
    """A Multiboot kernel, parsed and checked: what to put where, and where to jump."""

    boot_protocol: ClassVar[str] = "multiboot"

    path: Path
    header_offset: int
    flags: int
    form: str                              # "ELF32", "ELF64" or "a.out kludge"
    entry: int                             # physical
    segments: tuple[Segment, ...]          # sorted by paddr, non-overlapping
    video: tuple[int, int, int, int] | None = None    # (mode_type, width, height, depth) when asked for
    file_size: int = 0

    @property
    def lowest(self) -> int:
        return self.segments[0].paddr

    @property
    def highest(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)

    @property
    def wants_text_mode(self) -> bool:
        return self.video is not None


def parse_multiboot(data: bytes, path: Path | str, *, what: str = "kernel") -> MultibootImage:
    """The Multiboot kernel in data (the whole file); LoaderError, one line, for anything unbootable."""
    path = Path(path)
    where = f"{what} {path}"
    at = find_header(data)
    if at is None:
        problem = header_problem(data)
        raise LoaderError(f"{where}: {problem or 'no Multiboot header in the first 8192 bytes'}")
    hdr = multiboot_header.from_buffer_copy(data[at:at + _HEADER_VIDEO_END].ljust(_HEADER_VIDEO_END, b"\0"))
    flags = hdr.flags
    unknown = flags & 0xFFFF & ~_KNOWN_REQUIREMENTS
    if unknown:
        bits = ", ".join(str(b) for b in range(16) if unknown >> b & 1)
        raise LoaderError(f"{where}: the Multiboot header requires features pyvmm does not know (flag bits "
                          f"{bits}); a boot loader must refuse those (spec 3.1.2)")
    video = _video_request(hdr, where) if flags & MULTIBOOT_VIDEO_MODE else None
    if flags & MULTIBOOT_AOUT_KLUDGE:
        form, entry, segments = _aout_layout(data, at, hdr, where)
    else:
        if data[:4] != b"\x7fELF":
            raise LoaderError(f"{where}: the Multiboot header has no address fields (flag 16, the a.out kludge) "
                              "and the file is not an ELF; link it as an ELF, or set flag 16 and the addresses")
        form, entry, segments = _elf_layout(data, where)
    ordered = tuple(sorted(segments, key=lambda s: s.paddr))
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.paddr < a.paddr + a.memsz:
            raise LoaderError(f"{where}: segments at {a.paddr:#x}+{a.memsz:#x} and {b.paddr:#x}+{b.memsz:#x} "
                              "overlap")
    if not any(s.paddr <= entry < s.paddr + s.memsz for s in ordered):
        raise LoaderError(f"{where}: the entry point {entry:#x} is outside every loaded segment")
    return MultibootImage(path, at, flags, form, entry, ordered, video, len(data))


def _video_request(hdr: multiboot_header, where: str) -> tuple[int, int, int, int]:
    """3.1.4 "The graphics fields of Multiboot header": mode_type 0 is a linear graphics mode, 1 EGA text;
    0 in width, height or depth means no preference.  pyvmm has the 80x25 text mode only."""
    mode, width, height, depth = hdr.mode_type, hdr.width, hdr.height, hdr.depth
    if mode == 1 and width in (0, TEXT_COLUMNS) and height in (0, TEXT_ROWS):
        return mode, width, height, depth
    if mode == 0:
        size = "x".join(str(v) if v else "any" for v in (width, height, depth))
        asked = f"a {size} linear graphics mode"
    elif mode == 1:
        asked = f"a {width}x{height} text mode"
    else:
        asked = f"video mode type {mode}"
    raise LoaderError(f"{where}: the Multiboot header asks for {asked} (flag 2); pyvmm has only the "
                      f"{TEXT_COLUMNS}x{TEXT_ROWS} VGA text mode, no graphics: ask for mode_type 1 or clear flag 2")


def _aout_layout(data: bytes, at: int, hdr: multiboot_header, where: str) -> tuple[str, int, list[Segment]]:
    """3.1.3 "The address fields of Multiboot header": the text and data are the file from the offset
    at - (header_addr - load_addr) for load_end_addr - load_addr bytes (to the end of the file if 0),
    then bss up to bss_end_addr (none if 0)."""
    if at + _HEADER_ADDR_END > len(data):
        raise LoaderError(f"{where}: truncated: the Multiboot header's address fields run past the end of the file")
    header_addr, load_addr, load_end, bss_end, entry = (
        hdr.header_addr, hdr.load_addr, hdr.load_end_addr, hdr.bss_end_addr, hdr.entry_addr)
    if load_addr > header_addr:
        raise LoaderError(f"{where}: load_addr {load_addr:#x} is above header_addr {header_addr:#x} (the spec "
                          "wants load_addr <= header_addr)")
    start = at - (header_addr - load_addr)
    if start < 0:
        raise LoaderError(f"{where}: header_addr - load_addr = {header_addr - load_addr:#x} puts the start of "
                          f"the text {-start} bytes before the start of the file")
    if load_end == 0:
        size = len(data) - start
    elif load_end < load_addr:
        raise LoaderError(f"{where}: load_end_addr {load_end:#x} is below load_addr {load_addr:#x}")
    else:
        size = load_end - load_addr
        if start + size > len(data):
            raise LoaderError(f"{where}: truncated: the address fields load {size} bytes from offset {start:#x}, "
                              f"the file has {len(data)}")
    memsz = size
    if bss_end:
        if bss_end < load_addr + size:
            raise LoaderError(f"{where}: bss_end_addr {bss_end:#x} is below the end of the loaded data "
                              f"{load_addr + size:#x}")
        memsz = bss_end - load_addr
    if memsz == 0:
        raise LoaderError(f"{where}: the address fields load nothing (load_end_addr = load_addr, no bss)")
    return "a.out kludge", entry, [Segment(load_addr, data[start:start + size], memsz)]


def _elf_layout(data: bytes, where: str) -> tuple[str, int, list[Segment]]:
    """An ELF kernel is loaded by its PT_LOAD program headers at their physical addresses (3.1.2, flag
    16 clear).  A higher-half kernel's virtual e_entry is translated through the segment holding it,
    as GRUB does."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(BytesIO(data))
        machine = elf["e_machine"]
        if (elf.elfclass, machine) not in ((32, "EM_386"), (64, "EM_X86_64")):
            raise LoaderError(f"{where}: a {elf.elfclass}-bit {machine} ELF; a Multiboot kernel is an x86 ELF "
                              "(EM_386, or EM_X86_64 with its load addresses below 4 GiB)")
        segments: list[Segment] = []
        entry = elf["e_entry"]
        physical_entry = None
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or not seg["p_memsz"]:
                continue
            paddr, vaddr, filesz, memsz = seg["p_paddr"], seg["p_vaddr"], seg["p_filesz"], seg["p_memsz"]
            if filesz > memsz:
                raise LoaderError(f"{where}: the PT_LOAD segment at {paddr:#x} has a file size ({filesz:#x}) "
                                  f"larger than its memory size ({memsz:#x})")
            if paddr + memsz > 1 << 32:
                raise LoaderError(f"{where}: the PT_LOAD segment at {paddr:#x}+{memsz:#x} reaches past 4 GiB; "
                                  "a Multiboot kernel starts in 32-bit mode without paging")
            if seg["p_offset"] + filesz > len(data):
                raise LoaderError(f"{where}: truncated: the PT_LOAD segment at {paddr:#x} needs file bytes up to "
                                  f"{seg['p_offset'] + filesz:#x}, the file has {len(data):#x}")
            body = seg.data()
            if len(body) != filesz:
                raise LoaderError(f"{where}: truncated: the PT_LOAD segment at {paddr:#x} has {len(body)} of its "
                                  f"{filesz} bytes")
            segments.append(Segment(paddr, body, memsz))
            if physical_entry is None and vaddr <= entry < vaddr + memsz:
                physical_entry = entry - vaddr + paddr
    except LoaderError:
        raise
    except (ELFError, struct.error, ValueError, OverflowError, KeyError, IndexError, TypeError,
            AssertionError, UnicodeDecodeError) as e:
        # pyelftools reports a corrupt file through several exception types; all are one line here.
        raise LoaderError(f"{where}: corrupt or truncated ELF ({type(e).__name__}: {e})") from None
    if not segments:
        raise LoaderError(f"{where}: the ELF has no loadable segment")
    form = f"ELF{elf.elfclass}"
    return form, physical_entry if physical_entry is not None else entry, segments


# --- placing it in guest RAM ----------------------------------------------------------------------------


def check_placement(image: MultibootImage, ram_size: int, *, what: str = "kernel") -> None:
    """Every segment must land in RAM from 1 MiB up: below 1 MiB are pyvmm's boot information, the VGA
    buffer, the ACPI tables and the BIOS area; above RAM the MMIO hole and the boot ROM."""
    where = f"{what} {image.path}"
    top = min(ram_size, layout.RAM_LOW_END)
    for s in image.segments:
        end = s.paddr + s.memsz
        span = f"{s.paddr:#x}-{end - 1:#x}"
        if s.paddr < layout.KERNEL_START:
            raise LoaderError(f"{where}: loads at {span}, below 1 MiB, over pyvmm's boot information, the VGA "
                              "buffer and the firmware area; link it at 1 MiB (0x100000) or above")
        if end > layout.FIRMWARE_BASE:
            raise LoaderError(f"{where}: loads at {span}, over the boot ROM at {layout.FIRMWARE_BASE:#x}; link it "
                              "in RAM, from 1 MiB up")
        if end > top:
            if s.paddr >= layout.RAM_LOW_END:
                raise LoaderError(f"{where}: loads at {span}, in the MMIO hole above 3 GiB (virtio, IOAPIC, "
                                  "LAPIC), not RAM; link it from 1 MiB up")
            raise LoaderError(f"{where}: loads at {span}, past the end of guest RAM ({ram_size >> 20} MiB): give "
                              "the VM more memory with -m")


@dataclass(frozen=True)
class Module:
    """A boot module: its bytes and its string (QEMU's -initrd "file args": the whole text)."""

    data: bytes
    string: bytes


@dataclass
class BootInfoLayout:
    """Where write_boot_info put things, for the boot trace and the tests."""

    info: int = layout.BOOT_INFO
    modules: list[tuple[int, int]] = field(default_factory=list)   # (mod_start, mod_end)


def parse_module_list(text: str) -> list[tuple[str, str]]:
    """QEMU's -initrd for Multiboot: comma-separated modules, ",," for a comma in one; each module's
    string is its whole text, its file the text up to the first space.  Returns (file, string) pairs."""
    items, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if text[i + 1:i + 2] == ",":
                cur.append(",")
                i += 2
                continue
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    items.append("".join(cur))
    out = []
    for item in items:
        if not item.strip():
            raise LoaderError(f"-initrd {text!r}: an empty module in the list (separate modules with one comma; "
                              "',,' is a comma inside a name)")
        out.append((item.split(" ", 1)[0], item))
    return out


def write_boot_info(mem, image: MultibootImage, *, ram_size: int, cmdline: bytes, modules: list[Module],
                    loader_name: bytes = BOOT_LOADER_NAME) -> BootInfoLayout:
    """Load the segments and modules and write multiboot_info (3.3 "Boot information format"), its
    memory map (the e820 map of every pyvmm boot path), command line, module list and loader name."""
    placed = BootInfoLayout()
    for s in image.segments:
        mem.write(s.paddr, s.data)
        if s.memsz > len(s.data):
            mem.view(s.paddr + len(s.data), s.memsz - len(s.data))[:] = bytes(s.memsz - len(s.data))

    # Modules go after the kernel, each page-aligned (MULTIBOOT_PAGE_ALIGN; QEMU and GRUB align anyway).
    top = min(ram_size, layout.RAM_LOW_END)
    gpa = _align(image.highest, MULTIBOOT_MOD_ALIGN)
    for i, m in enumerate(modules):
        end = gpa + len(m.data)
        if end > top:
            need = sum(len(x.data) for x in modules)
            raise LoaderError(f"-initrd: module {i} ({len(m.data)} bytes) does not fit in guest RAM above the "
                              f"kernel (the {len(modules)} modules need {need} bytes from {image.highest:#x}, RAM "
                              f"ends at {top:#x}); give the VM more memory with -m")
        mem.write(gpa, m.data)
        placed.modules.append((gpa, end))
        gpa = _align(end, MULTIBOOT_MOD_ALIGN)

    # The module list, the module strings and the loader name share the BOOT_MODULES pages.
    area, area_end = layout.BOOT_MODULES, layout.BOOT_MODULES_END
    list_size = ctypes.sizeof(multiboot_mod_list) * len(modules)
    strings = [m.string + b"\0" for m in modules] + [loader_name + b"\0"]
    need = list_size + sum(len(s) for s in strings)
    if need > area_end - area:
        raise LoaderError(f"-initrd: the module list does not fit: {len(modules)} modules and their strings need "
                          f"{need} bytes, pyvmm has {area_end - area} for them (fewer or shorter module names)")
    at = area + list_size
    addresses = []
    for text in strings:
        mem.write(at, text)
        addresses.append(at)
        at += len(text)
    mods = (multiboot_mod_list * len(modules))(*[
        multiboot_mod_list(start, end, addresses[i]) for i, (start, end) in enumerate(placed.modules)])
    if modules:
        mem.write(area, bytes(mods))

    if len(cmdline) >= layout.BOOT_CMDLINE_MAX:
        raise LoaderError(f"kernel command line is {len(cmdline)} bytes; at most {layout.BOOT_CMDLINE_MAX - 1} fit")
    mem.write(layout.BOOT_CMDLINE, cmdline + b"\0")

    e820 = layout.e820_map(ram_size)
    entry_size = ctypes.sizeof(multiboot_mmap_entry) - 4    # `size` counts the entry without itself
    mmap = b"".join(bytes(multiboot_mmap_entry(entry_size, a, n, t)) for a, n, t in e820)
    mem.write(layout.BOOT_MEMMAP, mmap)
    mem_lower, mem_upper = memory_sizes(e820)

    info = multiboot_info(
        flags=(MULTIBOOT_INFO_MEMORY | MULTIBOOT_INFO_CMDLINE | MULTIBOOT_INFO_MODS | MULTIBOOT_INFO_MEM_MAP
               | MULTIBOOT_INFO_BOOT_LOADER_NAME),
        mem_lower=mem_lower, mem_upper=mem_upper,
        cmdline=layout.BOOT_CMDLINE,
        mods_count=len(modules), mods_addr=area if modules else 0,
        mmap_length=len(mmap), mmap_addr=layout.BOOT_MEMMAP,
        boot_loader_name=addresses[-1],
    )
    if image.wants_text_mode:
        # The kernel asked for a text mode (flag 2, mode_type 1): tell it where the one it has lives.
        info.flags |= MULTIBOOT_INFO_FRAMEBUFFER_INFO
        info.framebuffer_addr = layout.VGA_TEXT_BUFFER
        info.framebuffer_pitch = TEXT_COLUMNS * 2
        info.framebuffer_width, info.framebuffer_height = TEXT_COLUMNS, TEXT_ROWS
        info.framebuffer_bpp = 16
        info.framebuffer_type = MULTIBOOT_FRAMEBUFFER_TYPE_EGA_TEXT
    mem.write(placed.info, bytes(info))
    return placed


def memory_sizes(e820: list[tuple[int, int, int]]) -> tuple[int, int]:
    """(mem_lower, mem_upper) in KiB from an e820 map: usable RAM from 0, and from 1 MiB up to the first
    hole (3.3: "upper memory starts at address 1 megabyte"; QEMU's option ROM computes it the same way)."""
    lower = next((n for a, n, t in e820 if a == 0 and t == layout.E820_RAM), 0)
    upper_end = layout.KERNEL_START
    for a, n, t in sorted(e820):
        if t == layout.E820_RAM and a <= upper_end < a + n:
            upper_end = a + n
    return lower >> 10, (upper_end - layout.KERNEL_START) >> 10


def _align(value: int, to: int) -> int:
    return (value + to - 1) & ~(to - 1)
