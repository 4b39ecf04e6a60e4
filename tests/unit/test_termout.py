"""The guest's console and pyvmm's status line sharing one terminal (a pty), as `pyvmm run` does on
a user's terminal: every guest line stays whole on the screen, whenever the status line comes and goes."""

from __future__ import annotations

import os
import select
import tty as termios_tty

import pytest

from pyvmm import termout
from tests.support.terminal import render_terminal


@pytest.fixture
def tty():
    """A pty's two ends: pyvmm writes the slave, the test reads what the terminal got from the master."""
    master, slave = os.openpty()
    termout._open_lines.clear()      # a pty reuses an earlier one's inode: start with no open line
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


def _drain(fd: int) -> bytes:
    out = b""
    while select.select([fd], [], [], 0.05)[0]:
        out += os.read(fd, 65536)
    return out


def test_pyvmms_line_after_a_guest_line_cut_by_the_stop_starts_on_its_own_line():
    """`pyvmm run --demo 2>&1 | cat`: the VM stopped while the guest was in the middle of a line; that
    start goes out at the close, and pyvmm's closing line after it must not be glued to it."""
    r, w = os.pipe()
    try:
        guest = termout.GuestOutput(w)
        guest.write(b"balloon: config num_pages=0\nba")
        guest.close()
        termout.emit_line("pyvmm: demo finished\n", fd=w)
        termout.emit_line("pyvmm: and a second line\n", fd=w)
        assert _drain(r) == b"balloon: config num_pages=0\nba\npyvmm: demo finished\npyvmm: and a second line\n"
        guest.write(b"late bytes from a vCPU after the close\n")      # dropped: the fd may be gone
        assert _drain(r) == b""
    finally:
        os.close(r)
        os.close(w)


def test_a_log_line_beside_a_prompt_goes_on_the_next_line_and_typing_goes_on_after_it(tty):
    master, slave = tty
    guest = termout.GuestOutput(slave)
    guest.write(b"login ok\n# ")
    termout.emit_line("pyvmm: balloon target 64 MiB\n", fd=slave)
    guest.write(b"ls\n")
    assert screen(master) == ["login ok", "# ", "pyvmm: balloon target 64 MiB", "ls", ""]


def test_on_a_terminal_in_raw_mode_the_newline_before_pyvmms_line_is_cr_lf(tty):
    master, slave = tty
    termios_tty.setraw(slave)                          # as the interactive console puts it
    guest = termout.GuestOutput(slave)
    guest.write(b"# ")
    termout.emit_line("pyvmm: stopped\r\n", fd=slave)
    assert _drain(master).endswith(b"# \r\npyvmm: stopped\r\n")


def test_a_whole_guest_line_needs_no_newline_before_pyvmms():
    r, w = os.pipe()
    try:
        guest = termout.GuestOutput(w)
        guest.write(b"done\n")
        termout.emit_line("pyvmm: finished\n", fd=w)
        assert _drain(r) == b"done\npyvmm: finished\n"
    finally:
        guest.close()
        os.close(r)
        os.close(w)


def test_a_log_record_through_linestream_after_a_flushed_prompt_starts_on_its_own_line():
    """The CLI's logging writes through LineStream(2): a record after a prompt that went out must not
    be glued to it."""
    import logging

    r, w = os.pipe()
    log = logging.getLogger("pyvmm.test.termout")
    handler = logging.StreamHandler(termout.LineStream(w))
    handler.setFormatter(logging.Formatter("pyvmm: %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    try:
        guest = termout.GuestOutput(w)
        guest.write(b"login: ")
        guest.flush()                                   # a prompt waits for no newline
        log.warning("guest deflated 10 pages below the target")
        assert _drain(r) == b"login: \npyvmm: guest deflated 10 pages below the target\n"
    finally:
        log.removeHandler(handler)
        guest.close()
        os.close(r)
        os.close(w)


def test_pyvmms_lines_for_stderr_go_to_sys_stderr_when_it_is_not_fd_2(monkeypatch):
    """In a notebook sys.stderr is the cell's stream, not fd 2: the reason the VM stopped shows there."""
    import io

    cell = io.StringIO()
    monkeypatch.setattr("sys.stderr", cell)
    termout.emit_line("pyvmm: internal error on vCPU 0\n")
    assert cell.getvalue() == "pyvmm: internal error on vCPU 0\n"


def test_a_prompt_beside_a_status_line_not_yet_drawn_is_ended_before_pyvmms_line(tty):
    master, slave = tty
    guest = termout.GuestOutput(slave)
    guest.write(b"# ")
    status = termout.StatusLine(fd=slave)
    status.start()                                     # started, not yet drawn
    termout.emit_line("pyvmm: balloon target 64 MiB\n", fd=slave)
    status.stop()
    assert screen(master) == ["# ", "pyvmm: balloon target 64 MiB", ""]


def test_a_line_gone_above_the_status_line_leaves_no_open_line_behind(tty):
    master, slave = tty
    guest = termout.GuestOutput(slave)
    guest.write(b"memmap: ")
    status = termout.StatusLine(fd=slave)
    status.start()
    guest.write(b"0x0-0x9fc00\n")                      # above the status line: the line is ended
    status.stop()
    termout.emit_line("pyvmm: next\n", fd=slave)
    assert screen(master) == ["memmap: 0x0-0x9fc00", "pyvmm: next", ""]


def test_a_later_machines_whole_lines_end_an_earlier_machines_cut_line():
    r, w = os.pipe()
    try:
        first = termout.GuestOutput(w)
        first.write(b"ba")
        first.close()                                  # its VM stopped mid-line
        second = termout.GuestOutput(w)
        second.write(b"hello\n")
        termout.emit_line("pyvmm: z\n", fd=w)
        assert _drain(r) == b"bahello\npyvmm: z\n"
        second.close()
    finally:
        os.close(r)
        os.close(w)
