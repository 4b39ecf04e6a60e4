"""The minimal Linux with its busybox shell, driven as a user drives it: `pyvmm run --linux` in a
pseudo-terminal (pexpect), keys typed through pyvmm's 16550, and a QMP client beside it.

A module boots it once (`boot_shell` in a module-scoped fixture, several minutes on a kvm_pvm host)
and its tests share the shell; tests/e2e/test_linux_shell.py and test_linux_oom.py use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import sys
import time
from collections.abc import Iterator

import pexpect

from tests.support.guest import ROOT, MiB, qmp_connect, tmp_socket
from tests.support.linux import ensure_linux_built, linux_append

PROMPT = "[pyvmm-linux "
BALLOON = "/machine/peripheral/balloon0"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A kernel message on the console ("[ 1043.345657] random: crng init done"): printk writes to ttyS0
# whenever it likes, at the start of a line or in the middle of a command's output.
KERNEL_LINE = re.compile(r"\[ *\d+\.\d{6}\] [^\n]*\n?")


class Shell:
    """The guest's shell behind the pexpect'ed CLI, and a QMP client on its own event loop."""

    def __init__(self, child: pexpect.spawn, sock: str, stats_interval: int | None) -> None:
        self.child = child
        self.loop = asyncio.new_event_loop()
        self.qmp = self.loop.run_until_complete(qmp_connect(sock, "linux-shell", stats_interval=stats_interval))
        from qemu.qmp import EventListener

        self.events = EventListener(("BALLOON_CHANGE",))
        self.qmp.register_listener(self.events)
        self._n = itertools.count(1000)
        self.kernel: list[str] = []     # the kernel's messages printed during the last run()

    def type(self, text: str) -> None:
        """Type like a person (in small bursts): the 16550's receive FIFO holds 16 bytes."""
        for i in range(0, len(text), 8):
            self.child.send(text[i:i + 8])
            time.sleep(0.02)

    def run(self, command: str, timeout: float = 300) -> str:
        """Run one shell command line; return its output, found between two markers the shell computes
        (so the echo of what was typed, however the line editor redraws it, never matches them).  The
        kernel's messages printed meanwhile are taken out of it and kept in ``self.kernel``."""
        n = next(self._n)
        self.type(f"echo @@$(({n}+0))@@; {command}; echo @@$(({n}+1))@@\r")
        self.child.expect_exact(f"@@{n}@@", timeout=60)
        self.child.expect_exact(f"@@{n + 1}@@", timeout=timeout)
        out = ANSI.sub("", self.child.before.replace("\r\n", "\n"))
        self.child.expect_exact(PROMPT, timeout=60)
        self.kernel = [m[0].rstrip("\n") for m in KERNEL_LINE.finditer(out)]
        return KERNEL_LINE.sub("", out).strip("\n")

    def expect(self, pattern: str, timeout: float = 300) -> str:
        """Wait for a regex on the console; the text before it and the match."""
        self.child.expect(pattern, timeout=timeout)
        return ANSI.sub("", self.child.before + self.child.after).replace("\r\n", "\n")

    def qmp_exec(self, cmd: str, args: dict | None = None):
        return self.loop.run_until_complete(self.qmp.execute(cmd, args or {}))

    def qom(self, prop: str):
        return self.qmp_exec("qom-get", {"path": BALLOON, "property": prop})

    def balloon_to(self, mib: int, timeout: float = 600) -> float:
        """Set the balloon's target over QMP and wait until `actual` reaches it; seconds taken."""
        t0 = time.monotonic()
        self.qmp_exec("balloon", {"value": mib * MiB})
        while self.qmp_exec("query-balloon")["actual"] != mib * MiB:
            assert time.monotonic() - t0 < timeout, f"actual={self.qmp_exec('query-balloon')} never reached {mib} MiB"
            time.sleep(0.5)
        return time.monotonic() - t0

    def recover(self, ram_mib: int) -> None:
        """After a failed test: whatever it left running in the foreground (memhog, say) is stopped with
        Ctrl-C, the shell answers again, and the balloon is back at ram_mib, so that one failure does not
        fail the tests that share this boot after it."""
        self.child.sendcontrol("c")
        self.run("echo recovered", timeout=600)
        if self.qom("target") != ram_mib * MiB or self.qmp_exec("query-balloon")["actual"] != ram_mib * MiB:
            self.balloon_to(ram_mib)
        self.drain_events()

    def drain_events(self) -> list:
        got = []
        while not self.events._queue.empty():
            got.append(self.events._queue.get_nowait())
        return got

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.qmp.disconnect())
        self.loop.close()


@contextlib.contextmanager
def boot_shell(device: str, *, ram_mib: int = 256, stats_interval: int | None = None,
               name: str = "shell") -> Iterator[Shell]:
    """`pyvmm run --linux -m RAM -device DEVICE` in a pty, up to the shell's prompt; Ctrl-A x at the end.
    The console's whole text is kept beside the QMP socket (console.txt) for a failing test to show."""
    ensure_linux_built()
    sock = tmp_socket(f"{name}.qmp")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="dumb")
    args = ["-m", "pyvmm", "run", "--linux", "-m", f"{ram_mib}M", "-append", linux_append(),
            "-device", device, "-qmp", f"unix:{sock},server,wait=off"]
    child = pexpect.spawn(sys.executable, args, cwd=str(ROOT), env=env, timeout=60, dimensions=(50, 200),
                          encoding="utf-8", codec_errors="replace")
    child.logfile_read = open(os.path.join(os.path.dirname(sock), "console.txt"), "w")  # noqa: SIM115
    sh = None
    try:
        child.expect_exact("pyvmm: user space: BusyBox", timeout=1500)
        child.expect_exact(PROMPT, timeout=300)
        sh = Shell(child, sock, stats_interval)
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


def vmstat(text: str) -> dict[str, int]:
    """/proc/vmstat lines -> counts by name."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+) (\d+)$", text, re.M)}
