"""The minimal Linux with a user space: `pyvmm run --linux` in a terminal, busybox's shell on ttyS0,
reached through the syscall route of linux/patches/0003 on a kvm_pvm host.

Every test here shares ONE boot (the module's `shell` fixture, several minutes on this host): the CLI
runs in a pseudo-terminal driven by pexpect, so what is typed reaches the guest through pyvmm's 16550
exactly as a user's keys do, and Ctrl-A c on the same terminal reaches pyvmm's monitor.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import sys
import time

import pexpect
import pytest

from tests.support.guest import ROOT, MiB, qmp_connect, tmp_socket
from tests.support.linux import ensure_linux_built, linux_append

pytestmark = [pytest.mark.kvm, pytest.mark.linux]

RAM = 256 * MiB
PROMPT = "[pyvmm-linux "
BALLOON = "/machine/peripheral/balloon0"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Shell:
    """The guest's shell behind the pexpect'ed CLI, and a QMP client on its own event loop."""

    def __init__(self, child: pexpect.spawn, sock: str) -> None:
        self.child = child
        self.loop = asyncio.new_event_loop()
        self.qmp = self.loop.run_until_complete(qmp_connect(sock, "linux-shell", stats_interval=2))
        from qemu.qmp import EventListener

        self.events = EventListener(("BALLOON_CHANGE",))
        self.qmp.register_listener(self.events)
        self._n = itertools.count(1000)

    def type(self, text: str) -> None:
        """Type like a person (in small bursts): the 16550's receive FIFO holds 16 bytes."""
        for i in range(0, len(text), 8):
            self.child.send(text[i:i + 8])
            time.sleep(0.02)

    def run(self, command: str, timeout: float = 300) -> str:
        """Run one shell command line; return its output, found between two markers the shell computes
        (so the echo of what was typed, however the line editor redraws it, never matches them)."""
        n = next(self._n)
        self.type(f"echo @@$(({n}+0))@@; {command}; echo @@$(({n}+1))@@\r")
        self.child.expect_exact(f"@@{n}@@", timeout=60)
        self.child.expect_exact(f"@@{n + 1}@@", timeout=timeout)
        out = ANSI.sub("", self.child.before.replace("\r\n", "\n"))
        self.child.expect_exact(PROMPT, timeout=60)
        return out.strip("\n")

    def qmp_exec(self, cmd: str, args: dict | None = None):
        return self.loop.run_until_complete(self.qmp.execute(cmd, args or {}))

    def qom(self, prop: str):
        return self.qmp_exec("qom-get", {"path": BALLOON, "property": prop})

    def drain_events(self) -> list[dict]:
        got = []
        while not self.events._queue.empty():
            got.append(self.events._queue.get_nowait())
        return got

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.qmp.disconnect())
        except Exception:
            pass
        self.loop.close()


@pytest.fixture(scope="module")
def shell():
    ensure_linux_built()
    sock = tmp_socket("shell.qmp")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="dumb")
    args = ["-m", "pyvmm", "run", "--linux", "-m", "256M", "-append", linux_append(),
            "-device", "virtio-balloon-device,deflate-on-oom=on,free-page-reporting=on",
            "-qmp", f"unix:{sock},server,wait=off"]
    child = pexpect.spawn(sys.executable, args, cwd=str(ROOT), env=env, timeout=60, dimensions=(50, 200),
                          encoding="utf-8", codec_errors="replace")
    child.logfile_read = open(os.path.join(os.path.dirname(sock), "console.txt"), "w")  # noqa: SIM115
    sh = None
    try:
        child.expect_exact("pyvmm: user space: BusyBox", timeout=1500)
        child.expect_exact(PROMPT, timeout=300)
        sh = Shell(child, sock)
        yield sh
    finally:
        if sh is not None:
            sh.close()
        child.sendcontrol("a")
        child.send("x")
        try:
            child.expect(pexpect.EOF, timeout=30)
        finally:
            child.close(force=True)
            child.logfile_read.close()


def meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo lines -> bytes by name."""
    return {m[1]: int(m[2]) * 1024 for m in re.finditer(r"^(\w+):\s+(\d+) kB$", text, re.M)}


def test_shell_prompt_arithmetic_meminfo_and_virtio_devices(shell):
    """`pyvmm run --linux` reaches busybox's prompt; what is typed runs; /proc and /sys are mounted."""
    assert shell.run("echo $((6*7))") == "42"
    info = meminfo(shell.run("cat /proc/meminfo"))
    assert 200 * MiB < info["MemTotal"] <= RAM, info
    assert 0 < info["MemFree"] < info["MemTotal"] and "MemAvailable" in info
    assert shell.run("ls /sys/bus/virtio/devices").split() == ["virtio0"]
    assert shell.run("cat /sys/bus/virtio/devices/virtio0/device") == "0x0005"   # the balloon


def free_mib(text: str) -> tuple[int, int, int]:
    """`free -m`'s Mem: line -> (total, used, free)."""
    m = re.search(r"^Mem:\s+(\d+)\s+(\d+)\s+(\d+)", text, re.M)
    return int(m[1]), int(m[2]), int(m[3])


def monitor(shell, line: str, expect: str) -> str:
    """One line typed at the (pyvmm) monitor; the text up to `expect` (a regex)."""
    shell.type(line + "\r")
    shell.child.expect(expect, timeout=300)
    got = shell.child.before + shell.child.after
    shell.child.expect_exact("(pyvmm) ")
    return got


def test_ctrl_a_c_monitor_balloon_and_free_in_the_guest(shell):
    """The session docs/linux.md shows: `free -m`, Ctrl-A c, `balloon 224` at the monitor, back with
    Ctrl-A c, `free -m` again, the features Linux's driver accepted, `info balloon`.  With
    DEFLATE_ON_OOM Linux keeps ballooned pages in MemTotal (it may take them back), so the 32 MiB show
    as used, not as a smaller total."""
    total, used, free = free_mib(shell.run("free -m"))
    shell.child.send("\x01c")
    shell.child.expect_exact("(pyvmm) ")
    monitor(shell, "info balloon", r"balloon: actual=256\r\n")
    shell.type("balloon 224\r")
    shell.child.expect_exact("(pyvmm) ")
    deadline = time.monotonic() + 300
    while "actual=224" not in monitor(shell, "info balloon", r"balloon: actual=\d+"):
        assert time.monotonic() < deadline
        time.sleep(2)
    shell.child.send("\x01c")
    total2, used2, free2 = free_mib(shell.run("free -m"))
    assert total2 == total and used2 - used >= 30 and free - free2 >= 30, (total, used, free, used2, free2)
    features = shell.run("cat /sys/bus/virtio/drivers/virtio_balloon/virtio*/features")
    # One character per feature bit, bit 0 first: STATS_VQ (1), DEFLATE_ON_OOM (2), PAGE_REPORTING (5),
    # VERSION_1 (32), the ones this device offers and Linux's driver takes.
    assert re.fullmatch(r"[01]{64}", features), features
    assert [features[b] for b in (1, 2, 5, 32)] == ["1"] * 4, features
    shell.child.send("\x01c")
    shell.child.expect_exact("(pyvmm) ")
    monitor(shell, "info balloon", r"balloon: actual=224")
    shell.type("balloon 256\r")
    shell.child.expect_exact("(pyvmm) ")
    while "actual=256" not in monitor(shell, "info balloon", r"balloon: actual=\d+"):
        assert time.monotonic() < deadline + 300
        time.sleep(2)
    shell.child.send("\x01c")
    assert shell.run("echo back in $((2+3))") == "back in 5"
