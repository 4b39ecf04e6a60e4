"""The Ctrl-A console multiplexer on byte streams (tests/integration/test_console_pty.py drives a real terminal)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from pyvmm.monitor.hmp import MAX_HELD_OUTPUT, PROMPT, ConsoleMux
from tests.support.fake_machine import FakeMachine, MiB

ROOT = Path(__file__).resolve().parents[2]
CTRL_A = b"\x01"


class Rig:
    def __init__(self) -> None:
        self.machine = FakeMachine()
        self.to_guest = bytearray()
        self.out = io.BytesIO()
        self.mux = ConsoleMux(self.machine, self.to_guest.extend, self.out)

    def take(self) -> bytes:
        data = self.out.getvalue()
        self.out.seek(0)
        self.out.truncate()
        return data


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.machine.close()


def test_keys_go_to_the_guest_in_console_mode(rig):
    rig.mux.feed(b"ls -l\r")
    assert bytes(rig.to_guest) == b"ls -l\r"
    rig.mux.guest_output(b"total 0\r\n")
    assert rig.take() == b"total 0\r\n"


def test_ctrl_a_ctrl_a_sends_one_literal_ctrl_a(rig):
    rig.mux.feed(b"a" + CTRL_A + CTRL_A + b"b")
    assert bytes(rig.to_guest) == b"a\x01b"


def test_escape_split_across_reads(rig):
    rig.mux.feed(CTRL_A)
    rig.mux.feed(b"c")
    assert rig.mux.monitor and PROMPT in rig.take()
    assert bytes(rig.to_guest) == b""


def test_ctrl_a_c_toggles_to_the_monitor_and_back(rig):
    rig.mux.feed(CTRL_A + b"c")
    assert rig.mux.monitor
    assert rig.take().endswith(PROMPT)
    rig.mux.feed(b"info balloon\r")
    out = rig.take()
    assert b"balloon: actual=64\r\n" in out and out.endswith(PROMPT)
    assert bytes(rig.to_guest) == b""            # nothing typed in the monitor reaches the guest
    rig.mux.feed(CTRL_A + b"c")
    assert not rig.mux.monitor
    rig.mux.feed(b"x")
    assert bytes(rig.to_guest) == b"x"


def test_guest_output_is_held_while_the_monitor_is_shown(rig):
    rig.mux.feed(CTRL_A + b"c")
    rig.take()
    rig.mux.guest_output(b"while you were away\r\n")
    assert rig.take() == b""
    rig.mux.feed(CTRL_A + b"c")
    assert rig.take().endswith(b"while you were away\r\n")


def test_held_output_is_bounded(rig):
    rig.mux.feed(CTRL_A + b"c")
    rig.take()
    rig.mux.guest_output(b"a" * MAX_HELD_OUTPUT)
    rig.mux.guest_output(b"THE END")
    rig.mux.feed(CTRL_A + b"c")
    out = rig.take()
    assert b"7 bytes of guest output dropped" in out
    assert out.endswith(b"THE END") and out.count(b"a") <= MAX_HELD_OUTPUT


def test_line_editing_backspace_and_ctrl_c(rig):
    rig.mux.feed(CTRL_A + b"c")
    rig.take()
    rig.mux.feed(b"info statuz\x7fs\r")
    out = rig.take()
    assert b"\b \b" in out and b"VM status: running" in out
    rig.mux.feed(b"garbage\x03")
    assert rig.take().endswith(b"^C\r\n" + PROMPT)
    rig.mux.feed("zögus".encode() + b"\x7f\x7f\x7f\x7f\r")    # deletes the two-byte ö as one character
    assert b"unknown command: 'z'" in rig.take()


def test_monitor_commands_act_on_the_machine(rig):
    rig.mux.feed(CTRL_A + b"c" + b"stop\r")
    assert rig.machine.status() == "paused"
    rig.mux.feed(b"cont\rballoon 48\r")
    assert rig.machine.status() == "running"
    assert rig.machine.wait_actual(48 * MiB) == 48 * MiB


def test_ctrl_a_h_prints_help_in_both_modes(rig):
    rig.mux.feed(CTRL_A + b"h")
    assert b"C-a x    exit" in rig.take()
    rig.mux.feed(CTRL_A + b"c" + b"inf" + CTRL_A + b"h")
    assert rig.take().endswith(PROMPT + b"inf")          # the half-typed line is redrawn


def test_ctrl_a_x_quits_and_ignores_the_rest(rig):
    rig.mux.feed(b"ab" + CTRL_A + b"x" + b"cd")
    assert rig.machine.status() == "shutdown"
    assert bytes(rig.to_guest) == b"ab"
    assert b"terminating" in rig.take()


def test_unknown_escape_is_swallowed_as_qemu_does(rig):
    rig.mux.feed(CTRL_A + b"z" + b"k")
    assert bytes(rig.to_guest) == b"k"


def test_quit_from_the_monitor_prompt(rig):
    rig.mux.feed(CTRL_A + b"c" + b"quit\r")
    assert rig.machine.status() == "shutdown"


def test_stdin_reader_survives_an_exception_in_feed(caplog):
    import threading
    import time

    from pyvmm.monitor.hmp import stdio_console

    class Flaky:
        """A mux whose first feed() fails, as a bug would make it."""

        def __init__(self) -> None:
            self.quitting = False
            self.fed: list[bytes] = []
            self.second = threading.Event()

        def feed(self, data: bytes) -> None:
            self.fed.append(data)
            if len(self.fed) == 1:
                raise RuntimeError("bug")
            self.second.set()

    rfd, wfd = os.pipe()
    mux = Flaky()
    try:
        with caplog.at_level("ERROR", logger="pyvmm.monitor"), stdio_console(mux, stdin_fd=rfd) as t:
            os.write(wfd, b"a")
            while len(mux.fed) < 1:       # let the first read be a read of its own
                time.sleep(0.01)
            os.write(wfd, b"\x01x")
            assert mux.second.wait(10)
            assert t.is_alive() and mux.fed == [b"a", b"\x01x"]
            mux.quitting = True
            os.close(wfd)
            wfd = -1
            t.join(10)
        assert any(r.exc_info and "console input" in r.getMessage() for r in caplog.records)
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)


def test_a_debug_stop_opens_the_monitor_with_its_message(rig):
    rig.mux.guest_output(b"booting\n")
    rig.take()
    rig.mux.announce("vbreak 1: balloon0 QueueNotify <- 0 (inflateq)\n  QueueNotify: virtio-mmio register")
    out = rig.take()
    assert rig.mux.monitor
    assert b"vbreak 1: balloon0 QueueNotify <- 0 (inflateq)\r\n  QueueNotify: virtio-mmio register\r\n" in out
    assert out.endswith(b"(type cont to resume)\r\n" + PROMPT)
    rig.mux.guest_output(b"held back\n")                # the guest's console waits, as at any prompt
    assert rig.take() == b""
    rig.mux.feed(b"info st")
    rig.take()
    rig.mux.announce("vbreak 2: balloon0 Interrupt !! 0x1")   # already in the monitor: the line typed stays
    assert rig.take().endswith(PROMPT + b"info st")
