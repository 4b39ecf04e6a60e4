"""Tests of the boot ROM: its build, its loading from the ELF, the hand-off patch, and a run on KVM."""

from __future__ import annotations

import importlib.util
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pyvmm.arch.x86.layout import FIRMWARE_BASE, FIRMWARE_SIZE
from pyvmm.errors import LoaderError
from pyvmm.loader.firmware import (
    BOOT_STAGES,
    HANDOFF_MAGIC,
    RESET_VECTOR,
    FirmwareImage,
    is_boot_error,
    load_firmware,
    stage_name,
)

ROOT = Path(__file__).resolve().parents[2]
FW_DIR = ROOT / "firmware"
BUILD = FW_DIR / "build"
ELF, BIN, BAD_GDT_ELF = BUILD / "firmware.elf", BUILD / "firmware.bin", BUILD / "firmware-badgdt.elf"


@pytest.fixture(scope="module")
def built() -> Path:
    subprocess.run(["make", "-s", "-C", str(FW_DIR)], check=True, capture_output=True)
    return BUILD


@pytest.fixture(scope="module")
def fw(built: Path) -> FirmwareImage:
    return load_firmware(ELF)


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
    for name in ("handoff_magic", "handoff_version", "pvh_entry", "pvh_start_info", "gdt",
                 "real_mode_start", "protected_mode"):
        assert FIRMWARE_BASE <= fw.symbols[name] < FIRMWARE_BASE + FIRMWARE_SIZE, name
    assert fw.symbols["reset_vector"] == RESET_VECTOR
    assert struct.unpack_from("<I", fw.image, fw.offset_of("handoff_magic"))[0] == HANDOFF_MAGIC
    # Unpatched, the hand-off words are zero, which the ROM reports as ERROR_NO_HANDOFF.
    assert struct.unpack_from("<II", fw.image, fw.offset_of("pvh_entry")) == (0, 0)
    assert fw.symbols["pvh_start_info"] == fw.symbols["pvh_entry"] + 4


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

def test_handoff_patch_lands_at_the_symbols(fw: FirmwareImage) -> None:
    patched = fw.with_handoff(0x10_0000, 0x6000)
    assert len(patched) == FIRMWARE_SIZE
    assert struct.unpack_from("<I", patched, fw.offset_of("pvh_entry"))[0] == 0x10_0000
    assert struct.unpack_from("<I", patched, fw.offset_of("pvh_start_info"))[0] == 0x6000
    changed = [i for i in range(FIRMWARE_SIZE) if patched[i] != fw.image[i]]
    assert changed and all(
        fw.offset_of("pvh_entry") <= i < fw.offset_of("pvh_start_info") + 4 for i in changed)
    assert struct.unpack_from("<I", fw.image, fw.offset_of("pvh_entry"))[0] == 0   # the original is kept


@pytest.mark.parametrize("entry, start_info", [(0, 0x6000), (0x10_0000, 0), (1 << 32, 0x6000)])
def test_handoff_rejects_addresses_the_rom_cannot_use(fw: FirmwareImage, entry: int, start_info: int) -> None:
    with pytest.raises(LoaderError, match="not a non-zero 32-bit address"):
        fw.with_handoff(entry, start_info)


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


def test_stripped_rom_has_no_symbols(built: Path, tmp_path: Path) -> None:
    path = tmp_path / "stripped.elf"
    subprocess.run(["objcopy", "--strip-all", str(ELF), str(path)], check=True)
    _one_line_error(path, r"no symbol table \(was it stripped\?\)")


def test_missing_handoff_symbols(built: Path, tmp_path: Path) -> None:
    path = tmp_path / "nohandoff.elf"
    subprocess.run(["objcopy", "--strip-symbol=pvh_entry", "--strip-symbol=pvh_start_info", str(ELF),
                    str(path)], check=True)
    _one_line_error(path, r"missing hand-off symbols pvh_entry, pvh_start_info; is it a pyvmm boot ROM\?")


def test_wrong_handoff_magic(built: Path, fw: FirmwareImage, tmp_path: Path) -> None:
    data = bytearray(ELF.read_bytes())
    at = data.find(struct.pack("<I", HANDOFF_MAGIC))
    assert at > 0
    data[at:at + 4] = b"NOPE"
    path = tmp_path / "rom.elf"
    path.write_bytes(bytes(data))
    _one_line_error(path, r"hand-off block magic 0x45504f4e, expected 0x4d565950")


# ----------------------------------------------------------------------------------------------- on KVM

def _kvm_usable() -> bool:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def romcheck():
    if not _kvm_usable():
        if os.environ.get("PYVMM_REQUIRE_KVM") == "1":
            pytest.fail("/dev/kvm cannot be opened and PYVMM_REQUIRE_KVM=1")
        pytest.skip("needs /dev/kvm")
    spec = importlib.util.spec_from_file_location("romcheck", FW_DIR / "tools" / "romcheck.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module            # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


STAGE_CODES = [0x01, 0x02, 0x03, 0x04, 0x05]
CR0_PE, CR0_ET = 1 << 0, 1 << 4
EFLAGS_TF, EFLAGS_IF, EFLAGS_VM = 1 << 8, 1 << 9, 1 << 17


@pytest.mark.kvm
def test_rom_reaches_the_pvh_entry_on_kvm(fw: FirmwareImage, romcheck) -> None:
    run = romcheck.run_rom(fw.with_handoff(romcheck.ENTRY_GPA, romcheck.START_INFO_GPA))
    assert run.outcome == "entry"
    assert [s.code for s in run.stages] == STAGE_CODES
    # CR0.PE flips between "GDT loaded" and "protected mode", and CS becomes the flat 32-bit selector.
    reset, gdt, pm = run.stages[:3]
    assert not reset.cr0 & CR0_PE and not gdt.cr0 & CR0_PE and pm.cr0 & CR0_PE
    assert (reset.cs_selector, reset.cs_base, reset.cs_db) == (0xF000, FIRMWARE_BASE, 0)
    assert (pm.cs_selector, pm.cs_base, pm.cs_db) == (0x08, 0, 1)
    # The entry state the PVH boot ABI asks for (Xen docs/misc/pvh.pandoc).
    state = run.entry_state
    assert run.ebx_at_entry == romcheck.START_INFO_GPA
    assert state["rip"] == romcheck.ENTRY_GPA + 4          # just past the payload's mov + out
    assert state["cr0"] == CR0_PE | CR0_ET
    assert state["cr4"] == 0 and state["efer"] == 0
    assert state["rflags"] & (EFLAGS_TF | EFLAGS_IF | EFLAGS_VM) == 0
    assert (state["cs.base"], state["cs.limit"], state["cs.db"]) == (0, 0xFFFFFFFF, 1)
    assert state["cs.type"] & 0x8                          # code
    for seg in ("ds", "es", "ss"):
        assert (state[f"{seg}.base"], state[f"{seg}.limit"], state[f"{seg}.db"]) == (0, 0xFFFFFFFF, 1)
        assert state[f"{seg}.type"] & 0xA == 0x2           # data, writable
    assert state["tr.base"] == 0 and state["tr.type"] == 11  # reset TR: a busy 32-bit TSS (see docs)
    assert run.mmio_writes == []                           # the ROM never writes to itself


@pytest.mark.kvm
def test_rom_reports_a_bad_start_info_magic(fw: FirmwareImage, romcheck) -> None:
    run = romcheck.run_rom(fw.with_handoff(romcheck.ENTRY_GPA, romcheck.START_INFO_GPA), start_info_magic=0)
    assert [s.code for s in run.stages] == [0x01, 0x02, 0x03, 0xE2]
    assert run.outcome == "hlt"


@pytest.mark.kvm
def test_rom_reports_an_empty_handoff(fw: FirmwareImage, romcheck) -> None:
    run = romcheck.run_rom(fw.image)
    assert [s.code for s in run.stages] == [0x01, 0x02, 0x03, 0xE1]
    assert run.outcome == "hlt"


@pytest.mark.kvm
def test_bad_gdt_variant_triple_faults_before_protected_mode(built: Path, romcheck) -> None:
    bad = load_firmware(BAD_GDT_ELF)
    run = romcheck.run_rom(bad.with_handoff(romcheck.ENTRY_GPA, romcheck.START_INFO_GPA))
    assert [s.code for s in run.stages] == [0x01, 0x02]
    assert run.outcome == "shutdown"                       # KVM_EXIT_SHUTDOWN: the triple fault


# ----------------------------------------------------------------------------------------------- docs

DOC = ROOT / "docs" / "firmware.md"


def test_the_documented_stage_table_is_the_loaders() -> None:
    rows = re.findall(r"^\| `0x([0-9A-F]{2})` \| (.+?) \|$", DOC.read_text(), re.MULTILINE)
    assert {int(code, 16): name for code, name in rows} == BOOT_STAGES


def _captured(rom: str) -> str:
    text = DOC.read_text()
    block = text.split(f"<!-- romcheck: {rom} -->\n```\n", 1)[1].split("\n```", 1)[0]
    return block.split("\n", 1)[1]                  # drop the "$ python ..." line


@pytest.mark.kvm
@pytest.mark.parametrize("elf", [ELF, BAD_GDT_ELF], ids=lambda p: p.name)
def test_the_documented_romcheck_runs_are_true(built: Path, romcheck, elf: Path) -> None:
    image = load_firmware(elf).with_handoff(romcheck.ENTRY_GPA, romcheck.START_INFO_GPA)
    assert romcheck.format_run(romcheck.run_rom(image), BOOT_STAGES) == _captured(elf.name)
