"""The toy Multiboot kernels (guest/toy/) under KVM: both forms, through the ROM and directly; what they
print (memory equal to -m, the command line, the module's bytes); keys from sendkey, QMP send-key and
the console's terminal; and the CLI's one-line errors for kernels pyvmm cannot boot."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from pyvmm.config import DEFAULT_FIRMWARE, VmConfig
from pyvmm.monitor.hmp import run_hmp
from pyvmm.vm import Machine
from tests.support.guest import ROOT, ensure_built, pyvmm_cli, qmp_connect, qmp_disconnect, tmp_socket

pytestmark = pytest.mark.kvm

MiB = 1 << 20
TOY_ELF = Path("guest/build/toy/toy.elf")              # relative, as a user types it: it is in the cmdline
TOY_AOUT = Path("guest/build/toy/toy-aout.bin")
MODULE_BYTES = b"module bytes 0123\n"


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    ensure_built()
    if not (ROOT / TOY_ELF).exists() or not (ROOT / TOY_AOUT).exists():
        subprocess.run(["make", "-s", "-C", str(ROOT / "guest")], check=True)
    os.chdir(ROOT)


@pytest.fixture(scope="module")
def module_file() -> Path:
    # A short path of a fixed length, so that the kernel's module line fits one screen row.
    path = Path("guest/build/toy/test-module.txt")
    (ROOT / path).write_bytes(MODULE_BYTES)
    return path


def boot(kernel: Path, *, memory: int = 96 * MiB, append: str = "hello=world", initrd: str | None = None,
         firmware: bool = True, **kw) -> Machine:
    m = Machine(VmConfig(kernel=kernel, memory=memory, append=append, initrd=Path(initrd) if initrd else None,
                         console="none", balloon=None, firmware=DEFAULT_FIRMWARE if firmware else None, **kw))
    m.start()
    try:
        m.wait_for_console(r"ready for keys", timeout=30)
    except BaseException:
        m.close()
        raise
    return m


def wait_screen(m: Machine, pattern: str, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = m.screen_text()
        if re.search(pattern, text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"the screen never showed {pattern!r}:\n{text}")
        time.sleep(0.05)


@pytest.mark.parametrize("firmware", [True, False], ids=["rom", "direct"])
@pytest.mark.parametrize("kernel, form", [(TOY_ELF, "ELF32"), (TOY_AOUT, "a.out kludge (flag 16)")],
                         ids=["elf", "aout"])
def test_toy_kernel_boots_and_prints_its_boot_information(kernel: Path, form: str, firmware: bool,
                                                          module_file: Path) -> None:
    m = boot(kernel, initrd=f"{module_file} first arg", firmware=firmware)
    try:
        screen = m.screen_text()
        serial = m.console_text()
    finally:
        m.close()
    rows = screen.splitlines()
    assert len(rows) == 25 and rows[0] == " pyvmm toy kernel"
    assert f"boot: Multiboot, magic 0x2badb002, {form}" in rows
    assert "memory: 96 MiB" in rows                                        # equal to -m
    assert f"cmdline: {kernel} hello=world" in rows                        # file name and -append, as QEMU
    assert f'  0: {module_file} first arg ({len(MODULE_BYTES)} bytes) "module bytes 0123."' in rows
    assert rows[rows.index("modules: 1") + 3] == "keyboard>"
    # The serial port has what the screen leaves out.
    assert "toy: mem_lower 639 KiB, mem_upper 97280 KiB" in serial         # (96 - 1) MiB from 1 MiB up
    assert "toy: boot loader pyvmm" in serial
    assert "toy: mmap 0x100000-0x6000000 type 1" in serial
    assert re.search(r"toy: module 0 at 0x[0-9a-f]+000-0x[0-9a-f]+ \(page-aligned\)", serial)


def test_attributes_are_kept(module_file: Path) -> None:
    m = boot(TOY_ELF)
    try:
        cells = m.vga.snapshot()                          # type: ignore[union-attr]
    finally:
        m.close()
    assert cells[1] == 0x1F and cells[2 * 80 * 2 + 1] == 0x0E      # title white on blue, "boot:" yellow


def test_sendkey_a_reaches_the_kernel_by_irq_1() -> None:
    m = boot(TOY_ELF)
    try:
        assert run_hmp(m, "sendkey a") == ""
        assert run_hmp(m, "sendkey shift-b 10") == ""
        wait_screen(m, r"keyboard> aB\n")
        m.wait_for_console(r"toy: scancode 0xaa", timeout=10)    # shift released after its 10 ms hold
        m.type_text(b"c!\r")
        screen = wait_screen(m, r"keyboard> aBc!\nkeyboard>")
        m.wait_for_console(r"toy: scancode 0x9e", timeout=10)    # a's break, after its 100 ms hold
        serial = m.console_text()
        fixups = dict(m.emulation_fixups)
    finally:
        m.close()
    assert "toy: scancode 0x1e" in serial and "toy: scancode 0x9e" in serial    # make and break, set 1
    assert screen.count("keyboard>") == 2
    # On a host that cannot emulate a 32-bit iretd pyvmm finishes it; elsewhere none is needed.
    assert set(fixups) <= {"iretd (32-bit) done by pyvmm"}


def test_qmp_send_key_and_screendump(tmp_path: Path) -> None:
    sock = tmp_socket("toy.sock")
    m = boot(TOY_ELF, qmp=(f"unix:{sock}",))

    async def drive() -> None:
        qmp = await qmp_connect(sock)
        await qmp.execute("send-key", {"keys": [{"type": "qcode", "data": "h"}, ], "hold-time": 20})
        await qmp.execute("send-key", {"keys": [{"type": "number", "data": 0x17}]})     # i
        await asyncio.sleep(1)
        await qmp.execute("screendump", {"filename": str(tmp_path / "screen.txt")})
        await qmp.execute("screendump", {"filename": str(tmp_path / "screen.ppm")})
        await qmp.execute("quit")
        await qmp_disconnect(qmp)

    try:
        asyncio.run(drive())
    finally:
        m.close()
    assert "keyboard> hi" in (tmp_path / "screen.txt").read_text()
    assert (tmp_path / "screen.ppm").read_bytes().startswith(b"P6\n640 400\n255\n")


def serial_beside_repaints(*parts: bytes) -> re.Pattern[bytes]:
    """The serial output parts in order, with any number of VGA repaints (ESC 7 ... ESC 8) between them."""
    repaint = rb"(?:\x1b7(?:(?!\x1b8).)*\x1b8)*"       # one repaint never spans another's end
    return re.compile(repaint.join(re.escape(p) for p in parts), re.DOTALL)


def test_typed_keys_on_the_console_reach_the_keyboard(tmp_path: Path) -> None:
    child = pexpect.spawn(sys.executable, ["-m", "pyvmm", "run", str(TOY_ELF), "-m", "64M", "--balloon", "off"],
                          cwd=str(ROOT), timeout=30, dimensions=(40, 100))
    try:
        child.expect_exact("ready for keys")
        child.send("ok")
        # k, typed on the terminal, as set 1; the kernel writes the VGA cell before it echoes k on COM1, so
        # the screen's repaint (cursor saved, rows drawn, cursor restored) may come between the serial
        # line and the echo: the serial bytes are whole once repaints are set aside.
        child.expect(serial_beside_repaints(b"toy: scancode 0x25\r\n", b"k"))
        child.send("\x01c")
        child.expect_exact("(pyvmm) ")
        child.send(f"screendump {tmp_path / 's.txt'}\r")
        child.expect_exact("(pyvmm) ")
        child.send("quit\r")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert "keyboard> ok" in (tmp_path / "s.txt").read_text()


def test_piped_output_shows_the_screen_rows() -> None:
    res = pyvmm_cli("run", str(TOY_AOUT), "-m", "64M", "-append", "exit", "--balloon", "off")
    assert res.returncode == 0, res.stderr
    assert "vga| memory: 64 MiB" in res.stdout.splitlines()
    assert f"vga| cmdline: {TOY_AOUT} exit" in res.stdout.splitlines()


# --- kernels pyvmm cannot boot ----------------------------------------------------------------------------

def _one_line(res: subprocess.CompletedProcess, pattern: str) -> None:
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert re.search(pattern, lines[0]), lines[0]


def test_a_kernel_with_no_header_names_the_three_formats(tmp_path: Path) -> None:
    flat = tmp_path / "flat.bin"
    flat.write_bytes(b"\x90" * 4096)
    _one_line(pyvmm_cli("run", str(flat)), r"pyvmm boots three kinds of kernel: a Linux bzImage .*, a Multiboot "
              r"v1 kernel .* and a PVH ELF")
    from tests.support.elfs import make_elf

    elf = tmp_path / "plain.elf"
    elf.write_bytes(make_elf([(0x100000, b"\xf4", 1)]))
    _one_line(pyvmm_cli("run", str(elf)), r"an ELF with neither a PVH entry note nor a Multiboot header; pyvmm "
              r"boots three kinds of kernel")


def test_bad_multiboot_images_on_the_command_line(tmp_path: Path, module_file: Path) -> None:
    from tests.support.multiboot_images import aout_image, header

    bad = tmp_path / "badsum.bin"
    bad.write_bytes(header(0, checksum=1) + bytes(64))
    _one_line(pyvmm_cli("run", str(bad)), r"the Multiboot header at offset 0x0 has a bad checksum")
    big = tmp_path / "big.bin"
    big.write_bytes(aout_image(bss=200 * MiB))
    _one_line(pyvmm_cli("run", str(big), "-m", "64M"), r"past the end of guest RAM \(64 MiB\)")
    _one_line(pyvmm_cli("run", str(TOY_ELF), "-initrd", f"{module_file},{tmp_path / 'missing.bin'}"),
              r"module .*missing.bin: no such file")


# --- docs/toy-kernels.md stays true ------------------------------------------------------------------------

DOC = ROOT / "docs" / "toy-kernels.md"


def _doc_block(after: str) -> str:
    text = DOC.read_text()
    return text.split(after, 1)[1].split("```\n", 1)[1].split("```", 1)[0]


def test_the_documented_screenshot_is_true(tmp_path: Path) -> None:
    Path("/tmp/readme.txt").write_bytes(b"hello from a module\n")
    m = boot(TOY_ELF, memory=128 * MiB, initrd="/tmp/readme.txt")
    try:
        m.type_text(b"Hi pyvmm!")
        wait_screen(m, r"keyboard> Hi pyvmm!")
        m.screendump(str(tmp_path / "toy.txt"))
        serial = m.console_text()
    finally:
        m.close()
    assert (tmp_path / "toy.txt").read_text().rstrip("\n") == _doc_block("## A screenshot, as text").rstrip("\n")
    for line in _doc_block("what the screen leaves out:").strip().splitlines():
        assert line in serial, line


def test_the_documented_no_header_line_is_true(tmp_path: Path) -> None:
    flat = tmp_path / "flat.bin"
    flat.write_bytes(b"\x90" * 4096)
    res = pyvmm_cli("run", str(flat))
    documented = _doc_block("of the three gets one line naming them:").strip()
    assert res.stderr.strip() == documented.replace("kernel flat.bin", f"kernel {flat}")
