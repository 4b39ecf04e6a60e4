"""The Linux x86 boot protocol for bzImages: validate the setup header, place the kernel and initrd, build boot_params.

Behaviour follows the kernel's Documentation/arch/x86/boot.rst ("The Linux/x86 Boot Protocol"): sections
"The Real-Mode Kernel Header", "Details of Header Fields", "Loading the Rest of the Kernel" and "64-bit
Boot Protocol".  Structures are the kernel's (arch/x86/include/uapi/asm/bootparam.h), by name.

What the caller still does for the 64-bit entry (boot.rst, "64-bit Boot Protocol"): copy
image.protected_mode_kernel to image.load_address, the boot_params bytes to its own address, the command
line and initrd to the addresses given here; then enter long mode with a GDT whose __BOOT_CS (0x10) is
a flat 64-bit code segment and __BOOT_DS (0x18) a flat data segment, identity-mapped page tables covering
those ranges, interrupts off, RSI = the boot_params address, RIP = image.entry_64.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from pyvmm.arch.x86 import layout
from pyvmm.errors import LoaderError
from pyvmm.loader.signatures import HDRS_MAGIC, may_be_bzimage  # noqa: F401 - HDRS_MAGIC re-exported

BOOT_FLAG_MAGIC = 0xAA55
MIN_PROTOCOL = 0x020C                  # 2.12: the first with xloadflags, so XLF_KERNEL_64 can be checked
SETUP_HEADER_OFFSET = 0x1F1
TYPE_OF_LOADER_UNDEFINED = 0xFF        # "no assigned id" (boot.rst, type_of_loader)
STARTUP_64_OFFSET = 0x200              # startup_64 = startup_32 + 0x200 (boot.rst, "64-bit Boot Protocol")
E820_MAX_ENTRIES_ZEROPAGE = 128
PAGE_SIZE = 0x1000


class LoadFlags(enum.IntFlag):
    """setup_header.loadflags bits."""

    LOADED_HIGH = 1 << 0
    KASLR_FLAG = 1 << 1
    QUIET_FLAG = 1 << 5
    KEEP_SEGMENTS = 1 << 6
    CAN_USE_HEAP = 1 << 7


class XLoadFlags(enum.IntFlag):
    """setup_header.xloadflags bits."""

    XLF_KERNEL_64 = 1 << 0
    XLF_CAN_BE_LOADED_ABOVE_4G = 1 << 1
    XLF_EFI_HANDOVER_32 = 1 << 2
    XLF_EFI_HANDOVER_64 = 1 << 3
    XLF_EFI_KEXEC = 1 << 4
    XLF_5LEVEL = 1 << 5
    XLF_5LEVEL_ENABLED = 1 << 6


class E820Type(enum.IntEnum):
    """e820 range types (arch/x86/include/asm/e820/types.h, enum e820_type)."""

    E820_TYPE_RAM = 1
    E820_TYPE_RESERVED = 2
    E820_TYPE_ACPI = 3
    E820_TYPE_NVS = 4
    E820_TYPE_UNUSABLE = 5


class setup_header(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("setup_sects", ctypes.c_uint8),
        ("root_flags", ctypes.c_uint16),
        ("syssize", ctypes.c_uint32),
        ("ram_size", ctypes.c_uint16),
        ("vid_mode", ctypes.c_uint16),
        ("root_dev", ctypes.c_uint16),
        ("boot_flag", ctypes.c_uint16),
        ("jump", ctypes.c_uint16),
        ("header", ctypes.c_uint32),
        ("version", ctypes.c_uint16),
        ("realmode_swtch", ctypes.c_uint32),
        ("start_sys_seg", ctypes.c_uint16),
        ("kernel_version", ctypes.c_uint16),
        ("type_of_loader", ctypes.c_uint8),
        ("loadflags", ctypes.c_uint8),
        ("setup_move_size", ctypes.c_uint16),
        ("code32_start", ctypes.c_uint32),
        ("ramdisk_image", ctypes.c_uint32),
        ("ramdisk_size", ctypes.c_uint32),
        ("bootsect_kludge", ctypes.c_uint32),
        ("heap_end_ptr", ctypes.c_uint16),
        ("ext_loader_ver", ctypes.c_uint8),
        ("ext_loader_type", ctypes.c_uint8),
        ("cmd_line_ptr", ctypes.c_uint32),
        ("initrd_addr_max", ctypes.c_uint32),
        ("kernel_alignment", ctypes.c_uint32),
        ("relocatable_kernel", ctypes.c_uint8),
        ("min_alignment", ctypes.c_uint8),
        ("xloadflags", ctypes.c_uint16),
        ("cmdline_size", ctypes.c_uint32),
        ("hardware_subarch", ctypes.c_uint32),
        ("hardware_subarch_data", ctypes.c_uint64),
        ("payload_offset", ctypes.c_uint32),
        ("payload_length", ctypes.c_uint32),
        ("setup_data", ctypes.c_uint64),
        ("pref_address", ctypes.c_uint64),
        ("init_size", ctypes.c_uint32),
        ("handover_offset", ctypes.c_uint32),
        ("kernel_info_offset", ctypes.c_uint32),
    ]


class boot_e820_entry(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("addr", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("type", ctypes.c_uint32),
    ]


class boot_params(ctypes.LittleEndianStructure):
    """The 4 KiB "zero page".  Firmware-filled structures pyvmm never sets are opaque byte arrays."""

    _pack_ = 1
    _fields_ = [
        ("screen_info", ctypes.c_uint8 * 0x40),            # 0x000
        ("apm_bios_info", ctypes.c_uint8 * 0x14),          # 0x040
        ("_pad2", ctypes.c_uint8 * 4),                     # 0x054
        ("tboot_addr", ctypes.c_uint64),                   # 0x058
        ("ist_info", ctypes.c_uint8 * 0x10),               # 0x060
        ("acpi_rsdp_addr", ctypes.c_uint64),               # 0x070
        ("_pad3", ctypes.c_uint8 * 8),                     # 0x078
        ("hd0_info", ctypes.c_uint8 * 16),                 # 0x080
        ("hd1_info", ctypes.c_uint8 * 16),                 # 0x090
        ("sys_desc_table", ctypes.c_uint8 * 0x10),         # 0x0a0
        ("olpc_ofw_header", ctypes.c_uint8 * 0x10),        # 0x0b0
        ("ext_ramdisk_image", ctypes.c_uint32),            # 0x0c0
        ("ext_ramdisk_size", ctypes.c_uint32),             # 0x0c4
        ("ext_cmd_line_ptr", ctypes.c_uint32),             # 0x0c8
        ("_pad4", ctypes.c_uint8 * 112),                   # 0x0cc
        ("cc_blob_address", ctypes.c_uint32),              # 0x13c
        ("edid_info", ctypes.c_uint8 * 0x80),              # 0x140
        ("efi_info", ctypes.c_uint8 * 0x20),               # 0x1c0
        ("alt_mem_k", ctypes.c_uint32),                    # 0x1e0
        ("scratch", ctypes.c_uint32),                      # 0x1e4
        ("e820_entries", ctypes.c_uint8),                  # 0x1e8
        ("eddbuf_entries", ctypes.c_uint8),                # 0x1e9
        ("edd_mbr_sig_buf_entries", ctypes.c_uint8),       # 0x1ea
        ("kbd_status", ctypes.c_uint8),                    # 0x1eb
        ("secure_boot", ctypes.c_uint8),                   # 0x1ec
        ("_pad5", ctypes.c_uint8 * 2),                     # 0x1ed
        ("sentinel", ctypes.c_uint8),                      # 0x1ef
        ("_pad6", ctypes.c_uint8 * 1),                     # 0x1f0
        ("hdr", setup_header),                             # 0x1f1
        ("_pad7", ctypes.c_uint8 * (0x290 - 0x1F1 - 0x7B)),
        ("edd_mbr_sig_buffer", ctypes.c_uint32 * 16),      # 0x290
        ("e820_table", boot_e820_entry * E820_MAX_ENTRIES_ZEROPAGE),  # 0x2d0
        ("_pad8", ctypes.c_uint8 * 48),                    # 0xcd0
        ("eddbuf", ctypes.c_uint8 * (6 * 82)),             # 0xd00
        ("_pad9", ctypes.c_uint8 * 276),                   # 0xeec
    ]


@dataclass(frozen=True)
class BzImage:
    """A validated bzImage: its setup header as found in the file and the protected-mode kernel."""

    boot_protocol: ClassVar[str] = "linux"

    header: setup_header
    header_bytes: bytes                  # the setup header as the file has it (0x1f1 .. 0x202 + [0x201])
    protected_mode_kernel: bytes         # what goes at load_address

    @property
    def protocol(self) -> tuple[int, int]:
        return self.header.version >> 8, self.header.version & 0xFF

    @property
    def load_address(self) -> int:
        """Where the protected-mode kernel goes: 1 MiB, as boot.rst prescribes for a LOADED_HIGH kernel.

        The 64-bit decompressor is position independent and moves the kernel to its run-time address
        (pref_address, or the load address rounded up to kernel_alignment when relocatable) itself.
        """
        return layout.KERNEL_START

    @property
    def entry_64(self) -> int:
        """The 64-bit entry point (startup_64)."""
        return self.load_address + STARTUP_64_OFFSET

    @property
    def runtime_end(self) -> int:
        """First byte above the memory the kernel needs before it reads its memory map (init_size).

        A relocatable kernel may run from an address above pref_address; boot.rst's rule is that
        init_size bytes from the run-time start must be free, and pref_address is the lowest start.
        """
        start = max(self.header.pref_address, self.load_address)
        return start + self.header.init_size


is_bzimage = may_be_bzimage     # the "HdrS" signature where a bzImage has it


def parse_bzimage(data: bytes, name: str = "kernel") -> BzImage:
    """Validate a bzImage for the 64-bit boot protocol; LoaderError (one line, naming the file) if unusable."""
    if data[:4] == b"\x7fELF":
        raise LoaderError(f"{name}: is an ELF file, not a bzImage (boot a vmlinux through PVH)")
    if len(data) < 0x206:
        raise LoaderError(f"{name}: truncated: {len(data)} bytes is too short for a setup header")
    if not is_bzimage(data):
        raise LoaderError(f"{name}: not a bzImage: no \"HdrS\" signature at offset 0x202")
    # The header's own length: boot.rst, "the end of the setup header can be calculated as 0x202 + the
    # byte at 0x201".  Older or shorter headers leave the remaining fields zero.
    header_end = 0x202 + data[0x201]
    if len(data) < header_end:
        raise LoaderError(f"{name}: truncated inside the setup header ({len(data)} < {header_end:#x} bytes)")
    header_len = min(header_end - SETUP_HEADER_OFFSET, ctypes.sizeof(setup_header))
    header_bytes = bytes(data[SETUP_HEADER_OFFSET:SETUP_HEADER_OFFSET + header_len])
    hdr = setup_header.from_buffer_copy(header_bytes.ljust(ctypes.sizeof(setup_header), b"\0"))

    if hdr.boot_flag != BOOT_FLAG_MAGIC:
        raise LoaderError(f"{name}: bad boot_flag {hdr.boot_flag:#06x} (expected 0xaa55)")
    if hdr.version < MIN_PROTOCOL:
        raise LoaderError(f"{name}: boot protocol {hdr.version >> 8}.{hdr.version & 0xff:02d} is too old; "
                          "the 64-bit entry needs 2.12 or later")
    if not hdr.xloadflags & XLoadFlags.XLF_KERNEL_64:
        raise LoaderError(f"{name}: not 64-bit capable (xloadflags lacks XLF_KERNEL_64)")
    if not hdr.loadflags & LoadFlags.LOADED_HIGH:
        raise LoaderError(f"{name}: a zImage (loadflags lacks LOADED_HIGH); only bzImages are supported")
    setup_sects = hdr.setup_sects or 4          # boot.rst: "if this field is 0, the real value is 4"
    setup_size = (setup_sects + 1) * 512
    kernel_size = hdr.syssize * 16
    if kernel_size == 0:
        raise LoaderError(f"{name}: syssize is 0: no protected-mode kernel")
    if len(data) < setup_size + kernel_size:
        raise LoaderError(f"{name}: truncated: {len(data)} bytes, the header announces "
                          f"{setup_size + kernel_size} (setup {setup_size} + kernel {kernel_size})")
    return BzImage(header=hdr, header_bytes=header_bytes,
                   protected_mode_kernel=bytes(data[setup_size:setup_size + kernel_size]))


def e820_map(ram_size: int) -> list[tuple[int, int, E820Type]]:
    """The guest's memory map (pyvmm.arch.x86.layout.e820_map) with the boot protocol's type names."""
    return [(addr, size, E820Type(kind)) for addr, size, kind in layout.e820_map(ram_size)]


def place_initrd(image: BzImage, initrd_size: int, ram_size: int) -> int:
    """The guest-physical address for an initrd: page aligned, as high as allowed (below initrd_addr_max,
    the 32-bit hole and the end of RAM), above the memory the kernel needs at boot."""
    limit = min(image.header.initrd_addr_max + 1, layout.RAM_LOW_END, ram_size)
    gpa = (limit - initrd_size) & ~(PAGE_SIZE - 1)
    if initrd_size <= 0 or gpa < image.runtime_end:
        raise LoaderError(f"initrd of {initrd_size} bytes does not fit between the kernel "
                          f"(up to {image.runtime_end:#x}) and {limit:#x}; give the guest more memory")
    return gpa


def build_boot_params(
    image: BzImage,
    *,
    e820: Sequence[tuple[int, int, int]],
    cmdline_gpa: int,
    cmdline_len: int,
    initrd_gpa: int = 0,
    initrd_size: int = 0,
    acpi_rsdp_addr: int = 0,
) -> bytes:
    """The 4 KiB zero page for the 64-bit boot protocol.

    cmdline_len counts the command line's bytes without its NUL (which the caller writes after it).
    """
    hdr = image.header
    if cmdline_len > hdr.cmdline_size:
        raise LoaderError(f"kernel command line of {cmdline_len} bytes is longer than the kernel's "
                          f"cmdline_size ({hdr.cmdline_size})")
    if initrd_size and initrd_gpa + initrd_size - 1 > hdr.initrd_addr_max:
        raise LoaderError(f"initrd at {initrd_gpa:#x} ends above the kernel's initrd_addr_max "
                          f"{hdr.initrd_addr_max:#x}")
    if len(e820) > E820_MAX_ENTRIES_ZEROPAGE:
        raise LoaderError(f"{len(e820)} e820 entries do not fit the zero page's {E820_MAX_ENTRIES_ZEROPAGE}")

    params = boot_params()
    # "Loading the Rest of the Kernel": the setup header is copied from the image into a zeroed page.
    raw = bytearray(params)
    raw[SETUP_HEADER_OFFSET:SETUP_HEADER_OFFSET + len(image.header_bytes)] = image.header_bytes
    params = boot_params.from_buffer(raw)
    out = params.hdr
    out.type_of_loader = TYPE_OF_LOADER_UNDEFINED
    out.loadflags = (out.loadflags | LoadFlags.CAN_USE_HEAP) & ~LoadFlags.QUIET_FLAG
    # heap_end_ptr only matters to the real-mode setup code, which the 64-bit entry skips; still sane.
    out.heap_end_ptr = 0xFE00
    out.cmd_line_ptr = cmdline_gpa
    params.ext_cmd_line_ptr = cmdline_gpa >> 32
    out.ramdisk_image = initrd_gpa & 0xFFFF_FFFF
    out.ramdisk_size = initrd_size & 0xFFFF_FFFF
    params.ext_ramdisk_image = initrd_gpa >> 32
    params.ext_ramdisk_size = initrd_size >> 32
    params.acpi_rsdp_addr = acpi_rsdp_addr
    for i, (addr, size, kind) in enumerate(e820):
        params.e820_table[i] = boot_e820_entry(addr, size, int(kind))
    params.e820_entries = len(e820)
    return bytes(raw)
