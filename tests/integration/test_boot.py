"""Booting the tiny guest: through the firmware and directly, the crash dump, and QEMU as the reference."""

import re

import pytest

from pyvmm.config import DEFAULT_FIRMWARE
from tests.support.guest import BANNER, ROOT, pyvmm_cli, run_guest

pytestmark = pytest.mark.kvm


def _guest_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if not ln.startswith("memmap:")]


def test_selftest_through_firmware_and_direct_give_the_same_output():
    code_fw, out_fw, m_fw = run_guest("scenario=selftest")
    code_direct, out_direct, m_direct = run_guest("scenario=selftest", firmware=None)
    assert code_fw == 0 and code_direct == 0
    assert "scenario selftest: PASS" in out_fw
    assert BANNER.search(out_fw)
    assert out_fw == out_direct
    # The firmware went through every stage, in order; the direct path has none.
    assert [c for c, _ in m_fw.boot_stages] == [1, 2, 3, 4, 5]
    assert m_direct.boot_stages == []


def test_cli_boots_the_guest_and_exits_with_its_code():
    res = pyvmm_cli("run", "guest/build/guest.elf", "-m", "128M", "--append", "scenario=selftest")
    assert res.returncode == 0, res.stderr
    assert "scenario selftest: PASS" in res.stdout
    assert BANNER.search(res.stdout)
    assert "Traceback" not in res.stderr


def test_triple_fault_gives_register_dump_and_nonzero_exit():
    res = pyvmm_cli("run", "guest/build/guest.elf", "-m", "64M", "--append", "scenario=triplefault")
    assert res.returncode == 3, (res.returncode, res.stderr)
    err = res.stderr
    assert "guest triple fault (KVM_EXIT_SHUTDOWN) on vCPU 0" in err
    for reg in ("RAX=", "RIP=", "RFLAGS=", "CR0=", "CR2=", "CR3=", "CR4=", "EFER=", "CS =", "SS =", "GDT=",
                "IDT="):
        assert reg in err, reg
    assert "mode: 64-bit long mode" in err
    assert "Traceback" not in err


def test_bad_gdt_rom_never_reaches_protected_mode():
    bad = DEFAULT_FIRMWARE.with_name("firmware-badgdt.elf")
    res = pyvmm_cli("run", "guest/build/guest.elf", "-m", "64M", "--firmware", str(bad), "--trace", "boot",
                    "--append", "scenario=selftest")
    assert res.returncode == 3
    assert "guest triple fault (KVM_EXIT_SHUTDOWN)" in res.stderr
    assert "firmware stage 0x02 GDT loaded" in res.stderr
    assert "protected mode:" not in res.stderr          # stage 3 never reached
    # CR0.PE is set but the far jump through the bad GDT faulted: CS still holds its real-mode cache.
    assert "mode: 16-bit protected mode" in res.stderr
    assert re.search(r"CS =f000 base=00000000ffff0000 limit=0000ffff", res.stderr)
    assert "code at RIP (firmware ROM" in res.stderr


def test_boot_trace_shows_each_stage_in_order_with_cr0():
    res = pyvmm_cli("run", "guest/build/guest.elf", "-m", "64M", "--trace", "boot", "--append",
                    "scenario=selftest", "--balloon", "off")
    assert res.returncode == 0
    stages = re.findall(r"firmware stage (0x0\d) ([a-zA-Z ]+): CR0=(0x[0-9a-f]+) \(PE=(\d)", res.stderr)
    assert [s[0] for s in stages] == ["0x01", "0x02", "0x03", "0x04", "0x05"]
    assert [s[1] for s in stages] == ["reset vector", "GDT loaded", "protected mode", "boot info checked",
                                      "jump to entry"]
    assert [s[3] for s in stages] == ["0", "0", "1", "1", "1"]       # CR0.PE flips at stage 3
    direct = pyvmm_cli("run", "guest/build/guest.elf", "-m", "64M", "--trace", "boot", "--no-firmware",
                       "--append", "scenario=selftest", "--balloon", "off")
    assert "direct PVH entry (no firmware)" in direct.stderr and "firmware stage" not in direct.stderr
    assert _guest_lines(direct.stdout) == _guest_lines(res.stdout)


def test_docs_boot_trace_excerpt_is_true():
    """docs/boot-trace.md shows a captured trace; the stage lines must still be what pyvmm prints."""
    doc = (ROOT / "docs" / "boot-trace.md").read_text()
    res = pyvmm_cli("run", "guest/build/guest.elf", "-m", "64M", "--trace", "boot", "--append",
                    "scenario=selftest", "--balloon", "off")
    strip = lambda s: re.sub(r"^\s*[\d.]+\s+", "", s)      # noqa: E731 - the time column differs per run
    live = [strip(x) for x in res.stderr.splitlines() if "firmware stage" in x]
    documented = [strip(x) for x in doc.splitlines() if "firmware stage" in x]
    assert live and live == documented


def test_large_guest_has_ram_above_4g():
    """RAM below the 3 GiB hole and the rest above 4 GiB, both registered with KVM and in the e820."""
    code, out, m = run_guest("scenario=selftest", memory=4 << 30)
    assert code == 0, out
    assert [(r.gpa, r.size) for r in m.memory.regions] == [(0, 3 << 30), (4 << 30, 1 << 30)]
    assert "memmap: 0x000100000000-0x000140000000 type 1" in out
    assert re.search(r"pyvmm-guest: memory 409\d MiB", out)
