"""The toy Multiboot kernels under QEMU (a PC machine: microvm has no VGA) and under pyvmm, side by side:
the same binary, command line and module give the same screen, cell for cell, at the prompt and after
the same keys are sent.  Both are driven by the same qemu.qmp script (pmemsave of 0xB8000, send-key).

The kernels run with "poll" on their command line: QEMU on a host whose emulator cannot do a 32-bit
iretd (nested kvm_pvm) stops at the first interrupt return, which pyvmm finishes itself
(tests/integration/test_toy_kernels.py checks the interrupt path)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pyvmm.config import VmConfig
from pyvmm.devices.vga import screen_text
from pyvmm.vm import Machine
from tests.support.guest import ROOT, ensure_built, qmp_connect, qmp_disconnect, tmp_socket

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]

MiB = 1 << 20
APPEND = "hello=world poll"


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    ensure_built()
    if not (ROOT / "guest/build/toy/toy-aout.bin").exists():
        subprocess.run(["make", "-s", "-C", str(ROOT / "guest")], check=True)
    os.chdir(ROOT)


async def screens(sock: str, serial: Path, out: Path) -> tuple[bytes, bytes]:
    """The screen at the prompt, then after typing h, shift-i and !, through QMP."""
    qmp = await qmp_connect(sock)
    deadline = time.monotonic() + 60
    while b"ready for keys" not in (serial.read_bytes() if serial.exists() else b""):
        assert time.monotonic() < deadline, "the kernel never reached its prompt"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    await qmp.execute("pmemsave", {"val": 0xB8000, "size": 4000, "filename": str(out / "prompt.bin")})
    for keys in (["h"], ["shift", "i"], ["shift", "1"]):
        await qmp.execute("send-key", {"keys": [{"type": "qcode", "data": k} for k in keys], "hold-time": 50})
        await asyncio.sleep(0.3)
    deadline = time.monotonic() + 30
    while serial.read_bytes().count(b"toy: scancode") < 10:       # 5 makes and 5 breaks
        assert time.monotonic() < deadline, serial.read_text()[-500:]
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    await qmp.execute("pmemsave", {"val": 0xB8000, "size": 4000, "filename": str(out / "typed.bin")})
    await qmp.execute("quit")
    await qmp_disconnect(qmp)
    return (out / "prompt.bin").read_bytes(), (out / "typed.bin").read_bytes()


def run_qemu_toy(kernel: str, module: str, out: Path) -> tuple[bytes, bytes]:
    sock = tmp_socket("qemu-toy.sock")
    serial = out / "serial.txt"
    proc = subprocess.Popen(
        [shutil.which("qemu-system-x86_64") or "qemu-system-x86_64", "-M", "pc", "-accel", "kvm", "-m", "96",
         "-display", "none", "-no-user-config", "-kernel", kernel, "-append", APPEND, "-initrd", module,
         "-serial", f"file:{serial}", "-qmp", f"unix:{sock},server=on,wait=off", "-no-reboot"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        return asyncio.run(screens(sock, serial, out))
    finally:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_pyvmm_toy(kernel: str, module: str, out: Path) -> tuple[bytes, bytes]:
    sock = tmp_socket("pyvmm-toy.sock")
    serial = out / "serial.txt"
    m = Machine(VmConfig(kernel=Path(kernel), memory=96 * MiB, append=APPEND, initrd=Path(module),
                         console="none", qmp=(f"unix:{sock}",)))
    m.console_out = lambda data: serial.open("ab").write(data)
    m.start()
    try:
        return asyncio.run(screens(sock, serial, out))
    finally:
        m.close()


@pytest.mark.parametrize("kernel", ["guest/build/toy/toy.elf", "guest/build/toy/toy-aout.bin"],
                         ids=["elf", "aout"])
def test_the_screen_equals_qemus(kernel: str, tmp_path: Path) -> None:
    module = tmp_path / "m.txt"
    module.write_bytes(b"same module for both\n")
    spec = f"{module} arg"
    (tmp_path / "qemu").mkdir()
    (tmp_path / "pyvmm").mkdir()
    q_prompt, q_typed = run_qemu_toy(kernel, spec, tmp_path / "qemu")
    p_prompt, p_typed = run_pyvmm_toy(kernel, spec, tmp_path / "pyvmm")
    assert "memory: 96 MiB" in screen_text(q_prompt) and "keyboard> hI!" in screen_text(q_typed)
    assert screen_text(p_prompt) == screen_text(q_prompt)
    assert screen_text(p_typed) == screen_text(q_typed)
    assert p_prompt == q_prompt and p_typed == q_typed          # the attribute bytes too
