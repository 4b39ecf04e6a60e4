"""Helpers for end-to-end tests: boot the tiny guest under pyvmm (API) or QEMU microvm (reference)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pyvmm.config import DEFAULT_FIRMWARE, DEFAULT_GUEST, VmConfig
from pyvmm.vm import Machine

ROOT = Path(__file__).resolve().parents[2]
GUEST = DEFAULT_GUEST
MiB = 1 << 20
BANNER = re.compile(r"pyvmm-guest: memory \d+ MiB [^\r\n]*")


def ensure_built() -> None:
    """The suite runs after `make build`; building here too keeps `pytest` alone working."""
    if not GUEST.exists() or not DEFAULT_FIRMWARE.exists():
        subprocess.run(["make", "-s", "-C", str(ROOT / "guest")], check=True)
        subprocess.run(["make", "-s", "-C", str(ROOT / "firmware")], check=True)


@contextlib.contextmanager
def machine(append: str = "scenario=selftest", *, memory: int = 128 * MiB, setup=None, **kw):
    """A started pyvmm Machine running the tiny guest; closed on exit. ``setup(m)`` runs before start."""
    ensure_built()
    kw.setdefault("console", "none")
    m = Machine(VmConfig(kernel=GUEST, memory=memory, append=append, **kw))
    try:
        if setup is not None:
            setup(m)
        m.start()
        yield m
    finally:
        m.close()


def run_guest(append: str = "scenario=selftest", *, timeout: float = 60, **kw) -> tuple[int | None, str, Machine]:
    with machine(append, **kw) as m:
        code = m.wait(timeout)
        return code, m.console_text(), m


def pyvmm_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    ensure_built()
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, cwd=ROOT)


def qemu_cmd(append: str, *, memory: str = "128M", balloon: str | None = None, qmp: str | None = None,
             extra: tuple[str, ...] = ()) -> list[str]:
    cmd = [shutil.which("qemu-system-x86_64") or "qemu-system-x86_64", "-M", "microvm,acpi=off",
           "-enable-kvm", "-m", memory, "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
           "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", str(GUEST), "-append", append]
    if balloon is not None:
        cmd += ["-device", balloon]
    if qmp is not None:
        cmd += ["-qmp", f"unix:{qmp},server,wait=off"]
    return cmd + list(extra)


def run_qemu(append: str, *, timeout: float = 120, **kw) -> tuple[int, str]:
    """Run the guest under QEMU; returns the guest's own exit code (QEMU exits with (code << 1) | 1)."""
    ensure_built()
    res = subprocess.run(qemu_cmd(append, **kw), capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL)
    code = res.returncode >> 1 if res.returncode & 1 else -res.returncode
    return code, res.stdout


def tmp_socket(name: str) -> str:
    return os.path.join(tempfile.mkdtemp(prefix="pyvmm-"), name)


async def qmp_connect(sock: str, name: str = "pyvmm-test", *, stats_interval: int | None = None,
                      tries: int = 200):
    """A qemu.qmp client connected to sock (waiting for the VMM to create it), optionally with the
    balloon's stats polling switched on."""
    import asyncio

    from qemu.qmp import QMPClient

    qmp = QMPClient(name)
    for _ in range(tries):
        try:
            await qmp.connect(sock)
            break
        except Exception:  # qemu.qmp wraps the OSError in ConnectError until the socket exists
            await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"could not connect to QMP at {sock}")
    if stats_interval is not None:
        await qmp.execute("qom-set", {"path": "/machine/peripheral/balloon0",
                                      "property": "guest-stats-polling-interval", "value": stats_interval})
    return qmp


async def qmp_disconnect(qmp) -> None:
    """Disconnect after `quit`: the VMM may hang up first (QEMU does too), which qemu.qmp reports as
    EOFError from disconnect(); that is the expected end, not a failure."""
    try:
        await qmp.disconnect()
    except EOFError:
        pass
