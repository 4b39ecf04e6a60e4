"""The guest's console and pyvmm's status line sharing one terminal (a pty), as `pyvmm run` does on
a user's terminal: every guest line stays whole on the screen, whenever the status line comes and goes."""

from __future__ import annotations

import os
import select

import pytest

from pyvmm import termout
from tests.support.terminal import render_terminal


@pytest.fixture
def tty():
    """A pty's two ends: pyvmm writes the slave, the test reads what the terminal got from the master."""
    master, slave = os.openpty()
    yield master, slave
    assert termout._status is None
    os.close(slave)
    os.close(master)


def screen(master: int) -> list[str]:
    out = b""
    while select.select([master], [], [], 0.05)[0]:
        out += os.read(master, 65536)
    return render_terminal(out.decode())


def test_a_status_line_drawn_over_an_unfinished_guest_line_does_not_lose_its_start(tty):
    master, slave = tty
    guest = termout.GuestOutput(slave)
    guest.write(b"balloon: version 2 features offered")
    status = termout.StatusLine(fd=slave)
    status.start()
    status.update("inflate: 1 MiB")               # the status line's CR and erase wipe that start
    guest.write(b" 0x130000007 accepted\n")
    status.update("inflate: 2 MiB")
    status.done("inflate: reached")
    assert screen(master) == ["balloon: version 2 features offered 0x130000007 accepted", "inflate: reached", ""]


def test_a_prompt_covered_by_the_status_line_comes_back_when_it_ends(tty):
    master, slave = tty
    guest = termout.GuestOutput(slave)
    guest.write(b"hello\n# ")
    status = termout.StatusLine(fd=slave)
    status.start()
    status.update("booting")
    status.done("booted")
    assert screen(master) == ["hello", "booted", "# "]
    guest.write(b"ls\n")
    assert screen(master) == ["ls", ""]                # typed after the prompt, on its line


def test_a_line_finished_before_the_status_line_is_drawn_is_written_once(tty):
    master, slave = tty
    guest = termout.GuestOutput(slave)
    guest.write(b"memmap: ")
    status = termout.StatusLine(fd=slave)
    status.start()                                     # started, not yet drawn
    guest.write(b"0x0-0x9fc00\n")
    status.update("inflate")
    guest.write(b"next\n")
    status.stop()
    assert screen(master) == ["memmap: 0x0-0x9fc00", "next", ""]
