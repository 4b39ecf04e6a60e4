"""The Ctrl-A console multiplexer in a real terminal driven by pexpect (a fake machine, no KVM)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def term():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = pexpect.spawn(sys.executable, ["-m", "tests.support.mux_pty"], cwd=str(ROOT), env=env,
                          timeout=20, dimensions=(40, 160))
    child.expect_exact("guest: booted")
    yield child
    child.close(force=True)


def test_terminal_console_monitor_virtqueue_and_quit(term):
    term.send("hello\r")
    term.expect_exact("guest: hello")
    term.send("\x01c")
    term.expect_exact("(pyvmm) ")
    term.send("info virtqueue balloon0 inflateq\r")
    term.expect_exact("balloon0 queue 0 (inflateq): size 16 (max 256), ready")
    term.expect_exact("descriptor table")
    term.expect_exact("(pyvmm) ")
    term.send("info virtqueue balloon0 2\r")
    term.expect(r"in flight 1")                      # the stats buffer the device holds
    term.expect_exact("<- in flight")
    term.expect_exact("(pyvmm) ")
    term.send("balloon 32\r")
    term.expect_exact("(pyvmm) ")
    term.send("info balloon\r")
    term.expect(r"balloon: actual=(32|64)\r\n")      # the guest may still be inflating
    term.expect_exact("(pyvmm) ")
    term.send("x/2xw 0x100000\r")
    term.expect(r"0000000000100000: 0x[0-9a-f]{8} 0x[0-9a-f]{8}\r\n")
    term.send("\x01c")                              # back to the guest console
    term.send("again\r")
    term.expect_exact("guest: again")
    term.send("\x01\x01")
    term.expect_exact("<guest got C-a>")
    term.send("\x01x")
    term.expect_exact("mux: machine shut down")
    term.expect(pexpect.EOF)
    term.close()
    assert term.exitstatus == 0


def test_terminal_is_raw_so_ctrl_c_reaches_the_monitor_line(term):
    term.send("\x01c")
    term.expect_exact("(pyvmm) ")
    term.send("junk\x03")                           # raw mode: no SIGINT, the mux clears the line
    term.expect_exact("^C")
    term.send("info status\r")
    term.expect_exact("VM status: running")
    term.send("quit\r")
    term.expect_exact("mux: machine shut down")
    term.expect(pexpect.EOF)


