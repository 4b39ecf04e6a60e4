"""Tests of the boot ROM: its build outputs, its loading from the ELF, the hand-off patch (no KVM here)."""

from __future__ import annotations

import re
import struct
import sys
from pathlib import Path

import pytest

from pyvmm.arch.x86.layout import FIRMWARE_BASE, FIRMWARE_SIZE
from pyvmm.errors import LoaderError
from pyvmm.loader.firmware import (
    BOOT_STAGES,
    HANDOFF_MAGIC,
    MULTIBOOT_MAGIC,
    RESET_VECTOR,
    FirmwareImage,
    is_boot_error,
    load_firmware,
    stage_name,
)
from tests.support.firmware import BAD_GDT_ELF, BIN, ELF, FW_DIR, ROOT

# ----------------------------------------------------------------------------------------------- build

def test_build_outputs_exist_and_the_flat_image_is_64k(built: Path) -> None:
    for path in (ELF, BIN, BAD_GDT_ELF):
        assert path.is_file(), path
    assert BIN.stat().st_size == FIRMWARE_SIZE


def test_image_from_the_elf_equals_the_flat_image(fw: FirmwareImage) -> None:
    assert len(fw.image) == FIRMWARE_SIZE
    assert fw.image == BIN.read_bytes()


def test_stage_table_matches_the_rom_source() -> None:
    source = (FW_DIR / "reset.S").read_text()
    defines = re.findall(r"#define (?:STAGE|ERROR)_\w+\s+(0x[0-9A-Fa-f]+)", source)
    codes = {int(value, 16) for value in defines}
    assert codes == set(BOOT_STAGES)


def test_stage_names() -> None:
    assert [stage_name(c) for c in (1, 2, 3, 4, 5)] == [
        "reset vector", "GDT loaded", "protected mode", "boot info checked", "jump to entry"]
    assert stage_name(0xE2) == "error: bad hvm_start_info magic"
    assert stage_name(0xE7) == "error: unknown ROM error 0xe7"
    assert stage_name(0x42) == "unknown stage 0x42"
    assert is_boot_error(0xE1) and is_boot_error(0xEF)
    assert not is_boot_error(0x05) and not is_boot_error(0xF0)


# ----------------------------------------------------------------------------------------------- symbols

def test_symbols_are_found_in_the_rom_window(fw: FirmwareImage) -> None:
    for name in ("handoff_magic", "handoff_version", "kernel_entry", "boot_info", "boot_magic", "gdt",
                 "real_mode_start", "protected_mode"):
        assert FIRMWARE_BASE <= fw.symbols[name] < FIRMWARE_BASE + FIRMWARE_SIZE, name
    assert fw.symbols["reset_vector"] == RESET_VECTOR
    assert struct.unpack_from("<I", fw.image, fw.offset_of("handoff_magic"))[0] == HANDOFF_MAGIC
    # Unpatched, the hand-off words are zero, which the ROM reports as ERROR_NO_HANDOFF.
    assert struct.unpack_from("<III", fw.image, fw.offset_of("kernel_entry")) == (0, 0, 0)
    assert fw.symbols["boot_info"] == fw.symbols["kernel_entry"] + 4
    assert fw.symbols["boot_magic"] == fw.symbols["boot_info"] + 4


def test_reset_vector_is_a_near_jump_to_the_real_mode_code(fw: FirmwareImage) -> None:
    import capstone  # a test extra in pyproject.toml

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_16)
    offset = RESET_VECTOR - FIRMWARE_BASE
    assert offset == 0xFFF0
    insn = next(md.disasm(fw.image[offset:offset + 16], offset))
    assert insn.mnemonic == "jmp"
    # IP wraps at 64 KiB, and CS.base is FIRMWARE_BASE, so the target is an offset in the ROM.
    assert int(insn.op_str, 16) & 0xFFFF == fw.offset_of("real_mode_start")


def test_gdt_descriptors_are_flat_and_preset_accessed(fw: FirmwareImage) -> None:
    null, code, data = struct.unpack_from("<QQQ", fw.image, fw.offset_of("gdt"))
    assert null == 0
    # Access byte (bits 40-47): present, ring 0, code execute/read or data read/write, Accessed set so the
    # CPU never writes the descriptor back into the read-only ROM.
    assert (code >> 40) & 0xFF == 0x9B
    assert (data >> 40) & 0xFF == 0x93
    for desc in (code, data):
        base = ((desc >> 16) & 0xFFFFFF) | ((desc >> 56) << 24)
        limit = (desc & 0xFFFF) | (((desc >> 48) & 0xF) << 16)
        assert (base, limit) == (0, 0xFFFFF)
        assert (desc >> 52) & 0xC == 0xC              # G=1 (4 KiB units) and D/B=1 (32-bit)


# ----------------------------------------------------------------------------------------------- hand-off

@pytest.mark.parametrize("magic", [0, MULTIBOOT_MAGIC], ids=["pvh", "multiboot"])
def test_handoff_patch_lands_at_the_symbols(fw: FirmwareImage, magic: int) -> None:
    patched = fw.with_handoff(0x10_0000, 0x6000, magic)
    assert len(patched) == FIRMWARE_SIZE
    assert struct.unpack_from("<III", patched, fw.offset_of("kernel_entry")) == (0x10_0000, 0x6000, magic)
    changed = [i for i in range(FIRMWARE_SIZE) if patched[i] != fw.image[i]]
    assert changed and all(
        fw.offset_of("kernel_entry") <= i < fw.offset_of("boot_magic") + 4 for i in changed)
    assert struct.unpack_from("<I", fw.image, fw.offset_of("kernel_entry"))[0] == 0   # the original is kept


@pytest.mark.parametrize("entry, boot_info", [(0, 0x6000), (0x10_0000, 0), (1 << 32, 0x6000)])
def test_handoff_rejects_addresses_the_rom_cannot_use(fw: FirmwareImage, entry: int, boot_info: int) -> None:
    with pytest.raises(LoaderError, match="not a non-zero 32-bit address"):
        fw.with_handoff(entry, boot_info)


def test_handoff_rejects_an_unknown_protocol(fw: FirmwareImage) -> None:
    with pytest.raises(LoaderError, match=r"boot protocol 0x1badb002 is neither PVH \(0\) nor Multiboot"):
        fw.with_handoff(0x10_0000, 0x6000, 0x1BADB002)


# ----------------------------------------------------------------------------------------------- bad input

def _one_line_error(path: Path, pattern: str) -> None:
    with pytest.raises(LoaderError) as info:
        load_firmware(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert re.search(pattern, message), message


def _patched_elf(tmp_path: Path, edit) -> Path:
    data = bytearray(ELF.read_bytes())
    edit(data)
    path = tmp_path / "rom.elf"
    path.write_bytes(bytes(data))
    return path


def _phdr(data: bytearray, index: int) -> int:
    e_phoff, = struct.unpack_from("<I", data, 0x1C)
    e_phentsize, = struct.unpack_from("<H", data, 0x2A)
    return e_phoff + index * e_phentsize


def test_missing_file(tmp_path: Path) -> None:
    _one_line_error(tmp_path / "nope.elf", r"no such file \(build it with `make -C firmware`\)")


def test_directory_is_not_readable_as_a_rom(tmp_path: Path) -> None:
    _one_line_error(tmp_path, r"not a regular file")


def test_not_an_elf(built: Path, tmp_path: Path) -> None:
    text = tmp_path / "rom.txt"
    text.write_text("hello\n")
    _one_line_error(text, r"not an ELF file")
    _one_line_error(BIN, r"not an ELF file \(give the firmware.elf, not the flat .bin\)")


def test_truncated_elf(built: Path, tmp_path: Path) -> None:
    path = tmp_path / "short.elf"
    path.write_bytes(ELF.read_bytes()[:200])
    _one_line_error(path, r"(corrupt or truncated ELF|truncated)")


def test_wrong_machine(built: Path, tmp_path: Path) -> None:
    path = _patched_elf(tmp_path, lambda d: struct.pack_into("<H", d, 0x12, 62))   # EM_X86_64
    _one_line_error(path, r"a 32-bit EM_X86_64 ELF; the boot ROM must be a 32-bit x86 \(EM_386\) ELF")
    host_binary = Path(sys.executable).resolve()
    _one_line_error(host_binary, r"a 64-bit EM_X86_64 ELF")


def test_too_large(built: Path, tmp_path: Path) -> None:
    # Move the code segment down by 64 KiB: the ROM would then span 128 KiB.
    def edit(d: bytearray) -> None:
        struct.pack_into("<I", d, _phdr(d, 0) + 12, FIRMWARE_BASE - FIRMWARE_SIZE)   # p_paddr
    _one_line_error(_patched_elf(tmp_path, edit), r"too large: it spans \d+ bytes .* holds 65536 \(64 KiB\)")


def test_nothing_at_the_reset_vector(built: Path, tmp_path: Path) -> None:
    def edit(d: bytearray) -> None:
        struct.pack_into("<I", d, _phdr(d, 1) + 12, FIRMWARE_BASE + 0x1000)           # p_paddr
    _one_line_error(_patched_elf(tmp_path, edit), r"nothing is loaded at the reset vector 0xfffffff0")


def test_outside_the_rom_window(built: Path, tmp_path: Path) -> None:
    def edit(d: bytearray) -> None:
        struct.pack_into("<I", d, _phdr(d, 0) + 12, 0x000F_0000)                        # p_paddr
        struct.pack_into("<I", d, _phdr(d, 1) + 12, 0x000F_FFF0)
    _one_line_error(_patched_elf(tmp_path, edit), r"lies outside the ROM window 0xffff0000-0xffffffff")


def test_wrong_handoff_magic(built: Path, fw: FirmwareImage, tmp_path: Path) -> None:
    data = bytearray(ELF.read_bytes())
    at = data.find(struct.pack("<I", HANDOFF_MAGIC))
    assert at > 0
    data[at:at + 4] = b"NOPE"
    path = tmp_path / "rom.elf"
    path.write_bytes(bytes(data))
    _one_line_error(path, r"hand-off block magic 0x45504f4e, expected 0x4d565950")


# ----------------------------------------------------------------------------------------------- docs

DOC = ROOT / "docs" / "firmware.md"


def test_the_documented_stage_table_is_the_loaders() -> None:
    rows = re.findall(r"^\| `0x([0-9A-F]{2})` \| (.+?) \|$", DOC.read_text(), re.MULTILINE)
    assert {int(code, 16): name for code, name in rows} == BOOT_STAGES
