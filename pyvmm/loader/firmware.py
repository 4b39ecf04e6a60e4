"""Load the boot ROM from its ELF: the 64 KiB image mapped below 4 GiB, its symbols and its hand-off words."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

from pyvmm.arch.x86.layout import FIRMWARE_BASE, FIRMWARE_SIZE
from pyvmm.errors import LoaderError

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

# The codes the ROM writes to the POST port (layout.POST_PORT) as it goes; firmware/reset.S defines the
# same numbers. 0xE0-0xEF are errors after which the ROM halts with interrupts off for good.
BOOT_STAGES: dict[int, str] = {
    0x01: "reset vector",
    0x02: "GDT loaded",
    0x03: "protected mode",
    0x04: "boot info checked",
    0x05: "jump to entry",
    0xE1: "error: hand-off block empty (kernel_entry or boot_info is 0)",
    0xE2: "error: bad hvm_start_info magic",
    0xE3: "error: unknown boot protocol in boot_magic",
}
BOOT_ERROR_FIRST, BOOT_ERROR_LAST = 0xE0, 0xEF

RESET_VECTOR = 0xFFFF_FFF0                       # Intel SDM vol. 3, "First Instruction Executed"
HANDOFF_MAGIC = 0x4D56_5950                      # the bytes "PYVM" at symbol handoff_magic
HANDOFF_VERSION = 2                              # 2: kernel_entry, boot_info and boot_magic (Multiboot)
HANDOFF_SYMBOLS = ("handoff_magic", "handoff_version", "kernel_entry", "boot_info", "boot_magic")
MULTIBOOT_MAGIC = 0x2BAD_B002                    # boot_magic for a Multiboot kernel (goes in EAX)
_WINDOW_END = FIRMWARE_BASE + FIRMWARE_SIZE
_FILL = 0xFF                                     # unprogrammed flash reads as ones; firmware.bin agrees

def stage_name(code: int) -> str:
    """The name of a POST code the ROM wrote, for the boot trace."""
    name = BOOT_STAGES.get(code)
    if name is not None:
        return name
    if BOOT_ERROR_FIRST <= code <= BOOT_ERROR_LAST:
        return f"error: unknown ROM error {code:#04x}"
    return f"unknown stage {code:#04x}"


def is_boot_error(code: int) -> bool:
    """Whether a POST code says the ROM gave up (the VMM should stop the guest and report it)."""
    return BOOT_ERROR_FIRST <= code <= BOOT_ERROR_LAST


@dataclass(frozen=True)
class FirmwareImage:
    """A boot ROM ready to map: image[i] lives at guest-physical FIRMWARE_BASE + i."""

    image: bytes
    symbols: dict[str, int]          # symbol name -> guest-physical address
    path: Path

    def offset_of(self, symbol: str) -> int:
        """The offset in image of a ROM symbol."""
        return self.symbols[symbol] - FIRMWARE_BASE

    def with_handoff(self, entry: int, boot_info: int, boot_magic: int = 0) -> bytes:
        """The image with the kernel's 32-bit entry, the boot information's address and the protocol
        written into its hand-off words: boot_magic 0 is PVH (the ROM checks the hvm_start_info magic),
        MULTIBOOT_MAGIC is Multiboot (the ROM puts it in EAX).

        The ROM is read-only to the guest, so pyvmm patches its own copy before mapping it; pyvmm builds the
        boot information itself, and the ROM only checks it and passes its address in EBX.
        """
        for what, value in (("kernel entry", entry), ("boot information address", boot_info)):
            if not 0 < value <= 0xFFFF_FFFF:
                raise LoaderError(f"firmware hand-off: {what} {value:#x} is not a non-zero 32-bit address "
                                  "(the ROM jumps to it from 32-bit protected mode)")
        if boot_magic not in (0, MULTIBOOT_MAGIC):
            raise LoaderError(f"firmware hand-off: boot protocol {boot_magic:#x} is neither PVH (0) nor "
                              f"Multiboot ({MULTIBOOT_MAGIC:#x})")
        patched = bytearray(self.image)
        struct.pack_into("<I", patched, self.offset_of("kernel_entry"), entry)
        struct.pack_into("<I", patched, self.offset_of("boot_info"), boot_info)
        struct.pack_into("<I", patched, self.offset_of("boot_magic"), boot_magic)
        return bytes(patched)


def load_firmware(path: str | os.PathLike[str]) -> FirmwareImage:
    """Read the ROM's ELF and lay its segments out as the 64 KiB image; a one-line LoaderError if unfit."""
    path = Path(path)
    where = f"firmware {path}"
    try:
        import stat

        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise LoaderError(f"{where}: not a regular file")
        if st.st_size > 16 << 20:        # an ELF of a 64 KiB ROM is a few KiB; /dev/zero is endless
            raise LoaderError(f"{where}: {st.st_size} bytes is not a 64 KiB boot ROM's ELF")
        data = path.read_bytes()
    except FileNotFoundError:
        raise LoaderError(f"{where}: no such file (build it with `make -C firmware`)") from None
    except OSError as exc:
        raise LoaderError(f"{where}: cannot read it: {exc.strerror}") from None
    if data[:4] != b"\x7fELF":
        raise LoaderError(f"{where}: not an ELF file (give the firmware.elf, not the flat .bin)")
    from elftools.common.exceptions import ELFError
    from elftools.construct import ConstructError
    from elftools.elf.elffile import ELFFile

    try:
        elf = ELFFile(BytesIO(data))
        if elf.elfclass != 32 or elf["e_machine"] != "EM_386":
            raise LoaderError(f"{where}: a {elf.elfclass}-bit {elf['e_machine']} ELF; the boot ROM must be a "
                              "32-bit x86 (EM_386) ELF")
        image = _lay_out(elf, where)
        symbols = _symbols(elf, where)
    except (ELFError, ConstructError, ValueError, EOFError, OSError) as exc:
        raise LoaderError(f"{where}: corrupt or truncated ELF: {exc}") from None
    _check_handoff(image, symbols, where)
    return FirmwareImage(image=image, symbols=symbols, path=path)


def _lay_out(elf: ELFFile, where: str) -> bytes:
    image = bytearray([_FILL]) * FIRMWARE_SIZE
    loads = [seg for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD" and seg["p_memsz"]]
    if not loads:
        raise LoaderError(f"{where}: no loadable segment")
    low = min(seg["p_paddr"] for seg in loads)
    high = max(seg["p_paddr"] + seg["p_memsz"] for seg in loads)
    if high - low > FIRMWARE_SIZE:
        raise LoaderError(f"{where}: too large: it spans {high - low} bytes ({low:#x}-{high:#x}), the ROM "
                          f"window holds {FIRMWARE_SIZE} (64 KiB)")
    for seg in loads:
        gpa, size = seg["p_paddr"], seg["p_memsz"]
        if gpa < FIRMWARE_BASE or gpa + size > _WINDOW_END:
            raise LoaderError(f"{where}: segment at {gpa:#x} ({size} bytes) lies outside the ROM window "
                              f"{FIRMWARE_BASE:#x}-{_WINDOW_END - 1:#x}; link it there")
        if seg["p_filesz"] != size:
            raise LoaderError(f"{where}: segment at {gpa:#x} has {size - seg['p_filesz']} bytes of .bss; a "
                              "read-only ROM cannot hold writable data")
        data = seg.data()
        if len(data) != size:
            raise LoaderError(f"{where}: truncated: segment at {gpa:#x} has {len(data)} of its {size} bytes")
        offset = gpa - FIRMWARE_BASE
        image[offset:offset + size] = data
    if not any(seg["p_paddr"] <= RESET_VECTOR < seg["p_paddr"] + seg["p_memsz"] for seg in loads):
        raise LoaderError(f"{where}: nothing is loaded at the reset vector {RESET_VECTOR:#x}")
    return bytes(image)


def _symbols(elf: ELFFile, where: str) -> dict[str, int]:
    from elftools.elf.sections import SymbolTableSection

    symtab = elf.get_section_by_name(".symtab")
    if not isinstance(symtab, SymbolTableSection):
        raise LoaderError(f"{where}: no symbol table (was it stripped?); pyvmm finds the hand-off by name")
    return {
        sym.name: sym["st_value"]
        for sym in symtab.iter_symbols()
        if sym.name and sym["st_info"]["type"] in ("STT_NOTYPE", "STT_FUNC", "STT_OBJECT")
        and sym["st_shndx"] != "SHN_UNDEF"
    }


def _check_handoff(image: bytes, symbols: dict[str, int], where: str) -> None:
    missing = [name for name in HANDOFF_SYMBOLS if name not in symbols]
    if missing:
        raise LoaderError(f"{where}: missing hand-off symbols {', '.join(missing)}; is it a pyvmm boot ROM?")
    for name in HANDOFF_SYMBOLS:
        gpa = symbols[name]
        if not FIRMWARE_BASE <= gpa <= _WINDOW_END - 4 or gpa % 4:
            raise LoaderError(f"{where}: hand-off symbol {name} at {gpa:#x} is not an aligned ROM word")

    def word(name: str) -> int:
        return struct.unpack_from("<I", image, symbols[name] - FIRMWARE_BASE)[0]

    if word("handoff_magic") != HANDOFF_MAGIC:
        raise LoaderError(f"{where}: hand-off block magic {word('handoff_magic'):#x}, expected "
                          f"{HANDOFF_MAGIC:#x} (\"PYVM\")")
    if word("handoff_version") != HANDOFF_VERSION:
        raise LoaderError(f"{where}: hand-off block version {word('handoff_version')}, this pyvmm knows "
                          f"version {HANDOFF_VERSION}")
