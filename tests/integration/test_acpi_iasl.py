"""Our ACPI tables through ACPICA's own compiler: iasl disassembles them cleanly and recompiles the same AML."""

import shutil
import subprocess
from pathlib import Path

import pytest

from pyvmm.arch.x86 import acpi, layout
from tests.unit.test_acpi import VIRTIO, tables


def test_iasl_disassembles_our_tables(tmp_path: Path) -> None:
    iasl = shutil.which("iasl")
    if iasl is None:
        pytest.fail("iasl not found: install Debian's acpica-tools (apt-get install -y acpica-tools)")
    blob, _ = acpi.build_acpi_tables(layout.ACPI_START, 2, VIRTIO)
    for sig, table in tables(blob, layout.ACPI_START).items():
        (tmp_path / f"{sig.lower()}.dat").write_bytes(table)
        run = subprocess.run([iasl, "-d", f"{sig.lower()}.dat"], cwd=tmp_path, capture_output=True, check=False,
                             text=True, timeout=60)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "Error" not in run.stdout + run.stderr
    dsl = (tmp_path / "dsdt.dsl").read_text()
    assert dsl.count('Name (_HID, "LNRO0005")') == 2
    assert "Memory32Fixed (ReadWrite,\n                    0xD0001000," in dsl
    assert "Interrupt (ResourceConsumer, Level, ActiveHigh, Exclusive, ,, )" in dsl
    assert 'EisaId ("PNP0501")' in dsl
    facp = (tmp_path / "facp.dsl").read_text()
    assert "Hardware Reduced (V5) : 1" in facp
    assert "Sleep Control Register : [Generic Address Structure]" in facp

    # Round trip: iasl compiles its own disassembly back to the very AML bytes we wrote.
    run = subprocess.run([iasl, "-p", "dsdt2", "dsdt.dsl"], cwd=tmp_path, capture_output=True, text=True,
                         check=False, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    ours = tables(blob, layout.ACPI_START)["DSDT"]
    theirs = (tmp_path / "dsdt2.aml").read_bytes()
    assert theirs[36:] == ours[36:]
