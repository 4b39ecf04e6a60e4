"""The monitor's line editor on bytes as terminals send them, and the monitor's completion and prefixes
(tests/integration/test_qemu_habits.py drives the same editor in a real pty)."""

from __future__ import annotations

import pytest

from pyvmm.monitor.hmp import complete_hmp, run_hmp
from pyvmm.monitor.lineedit import LineEditor
from tests.support.fake_machine import FakeMachine

UP, DOWN, LEFT, RIGHT, HOME, END, DELETE = (b"\x1b[A", b"\x1b[B", b"\x1b[D", b"\x1b[C", b"\x1b[H", b"\x1b[F",
                                            b"\x1b[3~")


def feed(ed: LineEditor, data: bytes) -> tuple[bytes, list[str]]:
    echo, lines = bytearray(), []
    for b in data:
        out, line = ed.feed(b)
        echo += out
        if line is not None:
            lines.append(line)
    return bytes(echo), lines


@pytest.fixture
def machine():
    m = FakeMachine()
    yield m
    m.close()


@pytest.fixture
def ed(machine):
    return LineEditor(b"(pyvmm) ", lambda text: complete_hmp(machine, text))


def test_enter_gives_the_line_and_plain_keys_echo(ed):
    echo, lines = feed(ed, b"info status\r")
    assert lines == ["info status"] and echo == b"info status\r\n"


def test_up_recalls_and_down_returns_to_the_draft(ed):
    feed(ed, b"info status\r")
    feed(ed, b"info balloon\r")
    echo, _ = feed(ed, b"draft" + UP)
    assert ed.buf == "info balloon" and echo.endswith(b"\r(pyvmm) info balloon\x1b[K")
    feed(ed, UP)
    assert ed.buf == "info status"
    feed(ed, UP)                       # nothing older: stays
    assert ed.buf == "info status"
    feed(ed, DOWN + DOWN)
    assert ed.buf == "draft"
    _, lines = feed(ed, b"\x15" + UP + b"\r")       # Ctrl-U clears, Up, Enter runs it again
    assert lines == ["info balloon"]
    assert ed.history == ["info status", "info balloon"]       # a repeat is not stored twice


def test_cursor_keys_insert_and_delete_in_the_middle(ed):
    feed(ed, b"info stus" + LEFT * 3 + b"ta")
    assert (ed.buf, ed.pos) == ("info status", 8)
    feed(ed, HOME + DELETE + b"I" + END + b"!")
    assert ed.buf == "Info status!"
    feed(ed, b"\x7f\x17")                  # backspace, then Ctrl-W kills the word before the cursor
    assert ed.buf == "Info "
    feed(ed, b"\x01\x0b")                  # Ctrl-A (home), Ctrl-K kills to the end
    assert ed.buf == ""


def test_tab_completes_commands_and_info_subcommands(ed):
    echo, _ = feed(ed, b"info bal\t")
    assert ed.buf == "info balloon " and echo.endswith(b"loon ")
    feed(ed, b"\x15sys\t")
    assert ed.buf == "system_reset "
    feed(ed, b"\x15info v\t")               # virtio, virtqueue, version: the common prefix only
    assert ed.buf == "info v"
    echo, _ = feed(ed, b"\t")
    assert b"version  virtio  virtqueue" in echo     # and the candidates listed
    feed(ed, b"\x15info virtqueue ba\t")
    assert ed.buf == "info virtqueue balloon0 "


def test_escape_sequences_split_and_unknown_ones_are_ignored(ed):
    for b in UP[:2]:
        ed.feed(b)
    ed.feed(UP[2])
    feed(ed, b"\x1b[5~abc")                 # Page Up: nothing
    assert ed.buf == "abc"


def test_ctrl_c_abandons_the_line(ed):
    echo, lines = feed(ed, b"junk\x03")
    assert echo.endswith(b"^C\r\n(pyvmm) ") and ed.buf == "" and not lines


def test_utf8_is_one_character(ed):
    feed(ed, "grüße".encode() + b"\x7f\x7f")
    assert ed.buf == "grü"


def test_unique_prefixes_run_the_command(machine):
    assert run_hmp(machine, "info bal").splitlines()[0] == "balloon: actual=64"
    assert run_hmp(machine, "i statu") == "VM status: running\n"
    assert "ambiguous: stats, status" in run_hmp(machine, "info sta")
    assert "ambiguous" in run_hmp(machine, "info v")
    assert "unknown command" in run_hmp(machine, "sys")       # resets and quits only in full
    assert "unknown command" in run_hmp(machine, "qui")
    assert machine.resets == 0 and machine.quits == 0
