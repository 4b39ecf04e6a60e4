"""The boot ROM run on KVM with raw ioctls (firmware/tools/romcheck.py), and ROMs altered with objcopy."""

from __future__ import annotations

import importlib.util
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pyvmm.arch.x86.layout import FIRMWARE_BASE
from pyvmm.loader.firmware import BOOT_STAGES, MULTIBOOT_MAGIC, FirmwareImage, load_firmware
from tests.support.firmware import BAD_GDT_ELF, ELF, FW_DIR, ROOT
from tests.unit.test_firmware import _one_line_error

DOC = ROOT / "docs" / "firmware.md"


def test_stripped_rom_has_no_symbols(built: Path, tmp_path: Path) -> None:
    path = tmp_path / "stripped.elf"
    subprocess.run(["objcopy", "--strip-all", str(ELF), str(path)], check=True)
    _one_line_error(path, r"no symbol table \(was it stripped\?\)")


def test_missing_handoff_symbols(built: Path, tmp_path: Path) -> None:
    path = tmp_path / "nohandoff.elf"
    subprocess.run(["objcopy", "--strip-symbol=kernel_entry", "--strip-symbol=boot_info", str(ELF),
                    str(path)], check=True)
    _one_line_error(path, r"missing hand-off symbols kernel_entry, boot_info; is it a pyvmm boot ROM\?")


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
    assert run.eax_at_entry == 0
    assert state["rip"] == romcheck.ENTRY_GPA + romcheck.PAYLOAD_EXIT_OFFSET   # just past the payload's out
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
def test_rom_enters_multiboot_with_the_magic_in_eax(fw: FirmwareImage, romcheck) -> None:
    # No hvm_start_info magic is needed (or checked) on the Multiboot path.
    run = romcheck.run_rom(fw.with_handoff(romcheck.ENTRY_GPA, romcheck.START_INFO_GPA, MULTIBOOT_MAGIC),
                           start_info_magic=0)
    assert run.outcome == "entry" and [s.code for s in run.stages] == STAGE_CODES
    assert (run.eax_at_entry, run.ebx_at_entry) == (0x2BADB002, romcheck.START_INFO_GPA)
    state = run.entry_state
    assert state["cr0"] == CR0_PE | CR0_ET and state["rflags"] & (EFLAGS_TF | EFLAGS_IF | EFLAGS_VM) == 0
    assert (state["cs.base"], state["cs.limit"], state["cs.db"]) == (0, 0xFFFFFFFF, 1)


@pytest.mark.kvm
def test_rom_reports_an_unknown_protocol(fw: FirmwareImage, romcheck) -> None:
    image = bytearray(fw.with_handoff(romcheck.ENTRY_GPA, romcheck.START_INFO_GPA))
    struct.pack_into("<I", image, fw.offset_of("boot_magic"), 0x1234)
    run = romcheck.run_rom(bytes(image))
    assert [s.code for s in run.stages] == [0x01, 0x02, 0x03, 0xE3]
    assert run.outcome == "hlt"


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


def _captured(rom: str) -> str:
    text = DOC.read_text()
    block = text.split(f"<!-- romcheck: {rom} -->\n```\n", 1)[1].split("\n```", 1)[0]
    return block.split("\n", 1)[1]                  # drop the "$ python ..." line


@pytest.mark.kvm
@pytest.mark.parametrize("elf", [ELF, BAD_GDT_ELF], ids=lambda p: p.name)
def test_the_documented_romcheck_runs_are_true(built: Path, romcheck, elf: Path) -> None:
    image = load_firmware(elf).with_handoff(romcheck.ENTRY_GPA, romcheck.START_INFO_GPA)
    assert romcheck.format_run(romcheck.run_rom(image), BOOT_STAGES) == _captured(elf.name)
