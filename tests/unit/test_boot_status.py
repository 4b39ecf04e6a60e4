"""The status line while Linux boots (pyvmm run on a terminal): elapsed time, exits and the console's last
line, gone once the kernel starts user space (a fake machine; the terminal is a pipe said to be one)."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

from pyvmm import cli_run, termout


class _Console:
    def __init__(self) -> None:
        self.buf = ""

    def text(self) -> str:
        return self.buf


def test_boot_status_follows_the_console_and_ends_at_user_space(monkeypatch):
    r, w = os.pipe()
    monkeypatch.setattr(termout, "_is_tty", lambda fd: True)
    real_init = termout.StatusLine.__init__

    def on_pipe(self, fd=2, **kw):
        real_init(self, w, **kw)

    monkeypatch.setattr(termout.StatusLine, "__init__", on_pipe)
    console = _Console()
    machine = SimpleNamespace(kernel=SimpleNamespace(protocol="linux", image=None), console=console,
                              serial=SimpleNamespace(received=0), vcpus=[SimpleNamespace(exits=41203)],
                              stopped=threading.Event(), status=lambda: "running")
    assert cli_run._is_linux(machine)
    cli_run._boot_status(machine, raw=False)
    try:
        console.buf = "[    0.000000] Linux version 6.1\n[    2.345678] ACPI: Core revision\n"
        deadline = time.monotonic() + 5
        drawn = b""
        while b"ACPI: Core revision" not in drawn and time.monotonic() < deadline:
            drawn += os.read(r, 65536)
        assert b"pyvmm: booting Linux" in drawn and b"41203 exits" in drawn
        assert b"[    2.345678] ACPI: Core revision" in drawn
        console.buf += "[    9.000000] Run /init as init process\n"
        deadline = time.monotonic() + 5
        while termout._status is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert termout._status is None                 # the line is gone: the guest has the terminal
    finally:
        machine.stopped.set()
        os.close(w)
        os.close(r)


def test_not_shown_for_other_kernels():
    machine = SimpleNamespace(kernel=SimpleNamespace(protocol="pvh", image=SimpleNamespace(is_linux=False)))
    assert not cli_run._is_linux(machine)
