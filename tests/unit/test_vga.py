"""The VGA text console on a bytearray's RAM: registers, the screen as text and images, the terminal
renderer's two modes, and screendump/sendkey through the monitors' commands (no KVM)."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import pytest

from pyvmm.devices import vga as V
from pyvmm.memory import GuestMemory
from pyvmm.monitor import commands as C
from pyvmm.monitor.commands import CommandError
from pyvmm.monitor.hmp import run_hmp
from pyvmm.vgaterm import PREFIX, StableRows, VgaTerminal, ansi_colour

MiB = 1 << 20


@pytest.fixture
def screen():
    mem = GuestMemory.from_bytearray(2 * MiB)
    return mem, V.VgaText(V.attach_buffer(mem))


def put(mem: GuestMemory, row: int, text: str, attr: int = 0x07, col: int = 0) -> None:
    data = b"".join(bytes([ord(ch), attr]) for ch in text)
    mem.write(0xB8000 + (row * 80 + col) * 2, data)


def test_text_is_read_from_ram_with_the_attributes(screen) -> None:
    mem, vga = screen
    put(mem, 0, "hello", 0x1F)
    put(mem, 3, "\x01 \xc9\xcd\xbb")                          # a smiley and box drawing in code page 437
    cells = vga.snapshot()
    assert len(cells) == 4000 and cells[:4] == b"h\x1fe\x1f"
    lines = V.text_lines(cells)
    assert lines[0] == "hello" and lines[3] == "☺ ╔═╗" and len(lines) == 25


def test_crtc_cursor_and_start_address_through_the_ports(screen) -> None:
    mem, vga = screen
    vga.write(V.CRTC_INDEX, 2, 0x0E | (0x01 << 8))            # outw: index 0x0E, cursor high 1
    vga.write(V.CRTC_INDEX, 1, 0x0F)
    vga.write(V.CRTC_DATA, 1, 0x90)                           # cell 0x190 = 400 = row 5, column 0
    assert vga.cursor() == (5, 0)
    vga.write(V.CRTC_INDEX, 1, 0x0F)
    assert vga.read(V.CRTC_DATA, 1) == 0x90
    vga.write(V.CRTC_INDEX, 1, V.CRTC_CURSOR_START)
    vga.write(V.CRTC_DATA, 1, 0x20)
    assert vga.cursor() is None                               # cursor disabled
    put(mem, 1, "second row")
    vga.write(V.CRTC_INDEX, 2, V.CRTC_START_LOW | (80 << 8))  # the screen starts one row down
    assert V.text_lines(vga.snapshot())[0] == "second row"


def test_status_register_toggles_retrace(screen) -> None:
    _, vga = screen
    seen = {vga.read(V.STATUS1, 1) & V.STATUS1_VRETRACE for _ in range(4)}
    assert seen == {0, V.STATUS1_VRETRACE}                    # wait-for-retrace loops end
    assert vga.read(V.MISC_READ, 1) == V.MISC_MODE3
    vga.write(V.ATTR_INDEX, 1, 0x10)
    vga.write(V.ATTR_INDEX, 1, 0x0C)
    vga.write(V.ATTR_INDEX, 1, 0x10)                          # flip-flop: index, data, index
    assert vga.read(V.ATTR_DATA_READ, 1) == 0x0C


def test_ppm_and_png_render_the_font(screen, tmp_path: Path) -> None:
    mem, vga = screen
    put(mem, 0, "A", 0x1E)                                    # yellow on blue
    assert V.screendump(vga, tmp_path / "s.ppm") == "ppm"
    data = (tmp_path / "s.ppm").read_bytes()
    assert data.startswith(b"P6\n640 400\n255\n") and len(data) == 15 + 640 * 400 * 3
    rgb = data[15:]
    first_rows = {rgb[(y * 640 + x) * 3:(y * 640 + x) * 3 + 3] for y in range(16) for x in range(8)}
    assert first_rows == {bytes(V.PALETTE[0xE]), bytes(V.PALETTE[0x1])}   # glyph pixels and background
    assert V.screendump(vga, tmp_path / "s.png", "png") == "png"
    png = (tmp_path / "s.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and struct.unpack(">II", png[16:24]) == (640, 400)
    idat = png[png.index(b"IDAT") + 4: png.index(b"IEND") - 8]
    assert zlib.decompress(idat)[1:1 + 640 * 3] == rgb[:640 * 3]
    assert V.screendump(vga, tmp_path / "s.txt") == "txt"
    assert (tmp_path / "s.txt").read_text().splitlines()[0] == "A"
    with pytest.raises(ValueError, match="pyvmm writes ppm, png"):
        V.screendump(vga, tmp_path / "s.bmp", "bmp")


def test_the_font_is_complete() -> None:
    from pyvmm.devices.vgafont import GLYPHS

    assert len(GLYPHS) == 4096
    assert GLYPHS[16 * 0x20:16 * 0x21] == bytes(16)            # space is blank
    assert all(any(GLYPHS[16 * c:16 * c + 16]) for c in range(0x21, 0x7F))   # every printable glyph has ink


# --- the terminal renderer -------------------------------------------------------------------------------

def test_stable_rows_print_once_and_scrolling_prints_only_new_rows() -> None:
    rows = StableRows()
    screen = ["line one", "line two"] + [""] * 23
    assert rows.look(screen) == []                              # not yet stable
    assert rows.look(screen) == ["line one", "line two"]
    assert rows.look(screen) == []
    full = [f"row {i}" for i in range(25)]
    rows.look(full)
    assert rows.look(full) == full
    scrolled = full[1:] + ["row 25"]                            # the screen scrolled up by one
    rows.look(scrolled)
    assert rows.look(scrolled) == ["row 25"]
    assert rows.look(["changed"] + [""] * 24, flush=True) == ["changed"]


def test_piped_terminal_prints_prefixed_rows(screen) -> None:
    mem, vga = screen
    out: list[bytes] = []
    term = VgaTerminal(vga, write=out.append, in_place=False, colour=False, newline=b"\n")
    put(mem, 0, "boot: ok")
    term.poll()
    term.poll()
    assert b"".join(out) == f"{PREFIX}boot: ok\n".encode()
    put(mem, 1, "typed")
    term.stop()                                                 # the final look flushes what changed
    assert b"".join(out).endswith(f"{PREFIX}typed\n".encode())


def test_in_place_terminal_redraws_rows_with_colours(screen) -> None:
    mem, vga = screen
    out: list[bytes] = []
    term = VgaTerminal(vga, write=out.append, in_place=True, colour=True, newline=b"\r\n")
    term.rows_total = 40
    term.start()
    put(mem, 2, "red", 0x04)
    term.poll(final=True)
    term.stop()
    text = b"".join(out).decode()
    assert text.startswith("\x1b[2J\x1b[27;40r")                # the console scrolls below the screen
    assert "\x1b[3;1H" in text and ansi_colour(0x04) + "red" in text
    assert text.endswith("\x1b[r\x1b[40;1H\r\n")                # the whole terminal given back
    assert ansi_colour(0x1E) == "\x1b[0;93;44m"                 # CGA yellow on blue -> ANSI 93/44


# --- the monitors' commands -----------------------------------------------------------------------------

class FakeConsoleMachine:
    def __init__(self, vga) -> None:
        self.vga = vga
        self.sent: list[tuple[list[str], int]] = []

    def send_keys(self, keys: list[str], hold_ms: int) -> None:
        self.sent.append((keys, hold_ms))

    def screendump(self, path: str, fmt: str | None = None) -> str:
        return V.screendump(self.vga, path, fmt)


def test_hmp_sendkey_and_screendump(screen, tmp_path: Path) -> None:
    mem, vga = screen
    m = FakeConsoleMachine(vga)
    assert run_hmp(m, "sendkey ctrl-alt-delete") == ""          # type: ignore[arg-type]
    assert run_hmp(m, "sendkey 0x1e 250") == ""                 # type: ignore[arg-type]
    assert m.sent == [(["ctrl", "alt", "delete"], 100), (["a"], 250)]
    assert run_hmp(m, "sendkey ctrl-nokey") == "Error: invalid parameter: nokey\n"   # type: ignore[arg-type]
    put(mem, 0, "on screen")
    assert run_hmp(m, f"screendump {tmp_path / 'a.txt'}") == ""  # type: ignore[arg-type]
    assert (tmp_path / "a.txt").read_text().startswith("on screen\n")
    assert run_hmp(m, f"screendump {tmp_path / 'b'} -f png") == ""  # type: ignore[arg-type]
    assert (tmp_path / "b").read_bytes().startswith(b"\x89PNG")


def test_qmp_key_values_and_errors(screen) -> None:
    assert C.resolve_key({"type": "qcode", "data": "a"}) == "a"
    assert C.resolve_key({"type": "number", "data": 0x9C}) == "kp_enter"
    with pytest.raises(CommandError, match="Parameter 'data' does not accept value 'xyz'"):
        C.resolve_key({"type": "qcode", "data": "xyz"})
    with pytest.raises(CommandError, match="There is no QemuConsole I can screendump from"):
        C.screendump(FakeConsoleMachine(None), "x.ppm")         # type: ignore[arg-type]
    with pytest.raises(CommandError, match=re.escape("failed to open file '/nonexistent/x.ppm'")):
        C.screendump(FakeConsoleMachine(screen[1]), "/nonexistent/x.ppm")   # type: ignore[arg-type]
