"""The VGA in 80x25 colour text mode: the text buffer at 0xB8000, the registers toy kernels touch, and
the screen as text, lines or an image (screendump).

The text buffer is guest RAM (the legacy hole below 1 MiB is RAM in a pyvmm machine), so the guest's
writes to it cost nothing and are never seen one by one; whoever shows the screen reads it (see
pyvmm/vgaterm.py and docs/toy-kernels.md for why, and what that costs).  The register block 0x3C0-0x3DF
is served here: the CRTC's cursor and start-address registers (0x3D4/0x3D5) are honoured, the
attribute controller, sequencer, graphics controller and DAC keep what is written and read it back,
the input status register (0x3DA) toggles its retrace bits so that wait-for-retrace loops end.  No
graphics mode is emulated.
"""

from __future__ import annotations

import struct
import threading
import zlib
from pathlib import Path

from ..arch.x86 import layout
from .cp437 import CP437

COLUMNS, ROWS = 80, 25
CELLS = COLUMNS * ROWS
BUFFER_SIZE = 0x8000                     # 0xB8000-0xBFFFF: the colour text window
FONT_WIDTH, FONT_HEIGHT = 8, 16

# Offsets in the 0x3C0-0x3DF block.
ATTR_INDEX = 0x00        # 0x3C0: attribute controller index/data (one port, a flip-flop)
ATTR_DATA_READ = 0x01    # 0x3C1
MISC_WRITE = 0x02        # 0x3C2: miscellaneous output (write); input status 0 (read)
SEQ_INDEX, SEQ_DATA = 0x04, 0x05
DAC_MASK, DAC_READ_INDEX, DAC_WRITE_INDEX, DAC_DATA = 0x06, 0x07, 0x08, 0x09
FEATURE_READ = 0x0A      # 0x3CA
MISC_READ = 0x0C         # 0x3CC
GC_INDEX, GC_DATA = 0x0E, 0x0F
CRTC_INDEX, CRTC_DATA = 0x14, 0x15       # 0x3D4/0x3D5
STATUS1 = 0x1A           # 0x3DA: input status 1 (read), feature control (write)

CRTC_CURSOR_START, CRTC_CURSOR_END = 0x0A, 0x0B
CRTC_START_HIGH, CRTC_START_LOW = 0x0C, 0x0D
CRTC_CURSOR_HIGH, CRTC_CURSOR_LOW = 0x0E, 0x0F
CURSOR_DISABLE = 0x20                    # in the cursor start register

STATUS1_DISPLAY_ENABLE = 0x01            # "display disabled": set in every blanking interval
STATUS1_VRETRACE = 0x08

# The registers of mode 3 (80x25, 16 colours, 9x16 cells, cursor on lines 13-14), as a BIOS leaves them.
_CRTC_MODE3 = bytes([0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F, 0x00, 0x4F, 0x0D, 0x0E, 0x00, 0x00,
                     0x00, 0x00, 0x9C, 0x8E, 0x8F, 0x28, 0x1F, 0x96, 0xB9, 0xA3, 0xFF])
_SEQ_MODE3 = bytes([0x03, 0x00, 0x03, 0x00, 0x02])
_GC_MODE3 = bytes([0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0E, 0x00, 0xFF])
_ATTR_MODE3 = bytes(list(range(6)) + [0x14, 0x07] + list(range(0x38, 0x40)) + [0x0C, 0x00, 0x0F, 0x08, 0x00])
MISC_MODE3 = 0x67                        # colour (ports at 0x3Dx), RAM enabled, 28 MHz clock

# The 16 text colours (the EGA/VGA default palette), RGB.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0x00, 0x00, 0x00), (0x00, 0x00, 0xAA), (0x00, 0xAA, 0x00), (0x00, 0xAA, 0xAA),
    (0xAA, 0x00, 0x00), (0xAA, 0x00, 0xAA), (0xAA, 0x55, 0x00), (0xAA, 0xAA, 0xAA),
    (0x55, 0x55, 0x55), (0x55, 0x55, 0xFF), (0x55, 0xFF, 0x55), (0x55, 0xFF, 0xFF),
    (0xFF, 0x55, 0x55), (0xFF, 0x55, 0xFF), (0xFF, 0xFF, 0x55), (0xFF, 0xFF, 0xFF),
)


class VgaText:
    """The VGA's register block (a BusDevice at 0x3C0) and its text screen, read from guest RAM.

    ``buffer`` is a view of the 32 KiB text window in guest RAM; the screen is the 4000 bytes (a
    character and an attribute per cell) from the CRTC's start address.
    """

    def __init__(self, buffer: memoryview) -> None:
        if len(buffer) < BUFFER_SIZE:
            raise ValueError("the VGA text window needs 32 KiB of guest RAM at 0xB8000")
        self.buffer = buffer
        self.lock = threading.Lock()
        self.guest_writes = 0                 # register writes, for `info` and tests
        self.reset()

    def reset(self) -> None:
        """The registers of text mode 3, as the BIOS sets them (a machine reset)."""
        self.crtc = bytearray(_CRTC_MODE3)
        self.seq = bytearray(_SEQ_MODE3)
        self.gc = bytearray(_GC_MODE3)
        self.attr = bytearray(_ATTR_MODE3)
        self.dac = bytearray(256 * 3)
        self.misc = MISC_MODE3
        self.crtc_index = self.seq_index = self.gc_index = self.attr_index = 0
        self.attr_flipflop = False            # False: the next 0x3C0 write is an index
        self.dac_read = self.dac_write = 0    # DAC indices, in colour components (index * 3 + rgb)
        self.dac_mask = 0xFF
        self._status_reads = 0

    # --- the register block --------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        if size != 1:                         # a 16-bit in of an index/data pair reads both bytes
            return self.read(offset, 1) | (self.read(offset + 1, size - 1) << 8)
        with self.lock:
            if offset == STATUS1:
                # Retrace comes and goes with every other read, so both "wait while" and "wait until"
                # loops finish; reading here also resets the attribute controller's flip-flop.
                self._status_reads += 1
                self.attr_flipflop = False
                return (STATUS1_VRETRACE | STATUS1_DISPLAY_ENABLE) if self._status_reads & 1 else 0
            if offset == CRTC_INDEX:
                return self.crtc_index
            if offset == CRTC_DATA:
                return self.crtc[self.crtc_index] if self.crtc_index < len(self.crtc) else 0xFF
            if offset == ATTR_INDEX:
                return self.attr_index
            if offset == ATTR_DATA_READ:
                return self.attr[self.attr_index & 0x1F] if (self.attr_index & 0x1F) < len(self.attr) else 0
            if offset == MISC_READ:
                return self.misc
            if offset == SEQ_INDEX:
                return self.seq_index
            if offset == SEQ_DATA:
                return self.seq[self.seq_index] if self.seq_index < len(self.seq) else 0xFF
            if offset == GC_INDEX:
                return self.gc_index
            if offset == GC_DATA:
                return self.gc[self.gc_index] if self.gc_index < len(self.gc) else 0xFF
            if offset == DAC_MASK:
                return self.dac_mask
            if offset == DAC_DATA:
                value = self.dac[self.dac_read % len(self.dac)]
                self.dac_read = (self.dac_read + 1) % len(self.dac)
                return value
            if offset == FEATURE_READ:
                return 0
            return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        if size != 1:                         # `outw %ax, $0x3d4`: index in AL, data in AH
            self.write(offset, 1, value & 0xFF)
            self.write(offset + 1, size - 1, value >> 8)
            return
        value &= 0xFF
        with self.lock:
            self.guest_writes += 1
            if offset == CRTC_INDEX:
                self.crtc_index = value
            elif offset == CRTC_DATA:
                if self.crtc_index < len(self.crtc):
                    self.crtc[self.crtc_index] = value
            elif offset == ATTR_INDEX:
                if self.attr_flipflop and (self.attr_index & 0x1F) < len(self.attr):
                    self.attr[self.attr_index & 0x1F] = value
                else:
                    self.attr_index = value
                self.attr_flipflop = not self.attr_flipflop
            elif offset == MISC_WRITE:
                self.misc = value
            elif offset == SEQ_INDEX:
                self.seq_index = value
            elif offset == SEQ_DATA:
                if self.seq_index < len(self.seq):
                    self.seq[self.seq_index] = value
            elif offset == GC_INDEX:
                self.gc_index = value
            elif offset == GC_DATA:
                if self.gc_index < len(self.gc):
                    self.gc[self.gc_index] = value
            elif offset == DAC_MASK:
                self.dac_mask = value
            elif offset == DAC_READ_INDEX:
                self.dac_read = value * 3
            elif offset == DAC_WRITE_INDEX:
                self.dac_write = value * 3
            elif offset == DAC_DATA:
                self.dac[self.dac_write % len(self.dac)] = value & 0x3F
                self.dac_write = (self.dac_write + 1) % len(self.dac)

    # --- the screen --------------------------------------------------------------------------------------

    @property
    def start(self) -> int:
        """The CRTC start address, in cells from 0xB8000."""
        return (self.crtc[CRTC_START_HIGH] << 8 | self.crtc[CRTC_START_LOW]) & 0x3FFF

    def cursor(self) -> tuple[int, int] | None:
        """(row, column) of the hardware cursor, or None when it is off or off the screen."""
        with self.lock:
            if self.crtc[CRTC_CURSOR_START] & CURSOR_DISABLE:
                return None
            pos = (self.crtc[CRTC_CURSOR_HIGH] << 8 | self.crtc[CRTC_CURSOR_LOW]) - self.start
        if not 0 <= pos < CELLS:
            return None
        return divmod(pos, COLUMNS)

    def cursor_shape(self) -> tuple[int, int]:
        """The cursor's first and last scan line in a 16-line cell."""
        return self.crtc[CRTC_CURSOR_START] & 0x1F, self.crtc[CRTC_CURSOR_END] & 0x1F

    def snapshot(self) -> bytes:
        """The 4000 bytes on screen: character, attribute, cell after cell (row by row)."""
        start = self.start * 2
        end = start + CELLS * 2
        if end <= BUFFER_SIZE:
            return bytes(self.buffer[start:end])
        return bytes(self.buffer[start:BUFFER_SIZE]) + bytes(self.buffer[: end - BUFFER_SIZE])   # wraps


def text_lines(cells: bytes) -> list[str]:
    """The 25 rows of a snapshot as text (code page 437), trailing blanks dropped."""
    return [row_text(cells, r) for r in range(ROWS)]


def row_text(cells: bytes, row: int) -> str:
    chars = cells[row * COLUMNS * 2:(row + 1) * COLUMNS * 2:2]
    return "".join(CP437[c] for c in chars).rstrip()


def screen_text(cells: bytes) -> str:
    """The screen as a text file: 25 lines, blanks at the end of each line dropped."""
    return "\n".join(text_lines(cells)) + "\n"


def render_rgb(cells: bytes, cursor: tuple[int, int] | None = None,
               cursor_shape: tuple[int, int] = (13, 14)) -> tuple[int, int, bytes]:
    """The screen drawn with the built-in 8x16 font: (width, height, RGB bytes), 640x400.

    Attribute bits 0-3 are the foreground colour, 4-6 the background; bit 7 (blink, the VGA's
    default meaning) is drawn steady.
    """
    from .vgafont import GLYPHS

    width, height = COLUMNS * FONT_WIDTH, ROWS * FONT_HEIGHT
    colours = [bytes(c) for c in PALETTE]
    # One 8-pixel strip per (glyph row bits, fg, bg) is built on demand: a screen has few of them.
    strips: dict[tuple[int, int, int], bytes] = {}
    out = bytearray()
    for r in range(ROWS):
        row_cells = [(cells[(r * COLUMNS + c) * 2], cells[(r * COLUMNS + c) * 2 + 1]) for c in range(COLUMNS)]
        for y in range(FONT_HEIGHT):
            line = bytearray()
            for c, (ch, attr) in enumerate(row_cells):
                bits = GLYPHS[ch * FONT_HEIGHT + y]
                if cursor == (r, c) and cursor_shape[0] <= y <= cursor_shape[1]:
                    bits = 0xFF
                key = (bits, attr & 0x0F, (attr >> 4) & 0x07)
                strip = strips.get(key)
                if strip is None:
                    fg, bg = colours[key[1]], colours[key[2]]
                    strip = b"".join(fg if bits & (0x80 >> x) else bg for x in range(FONT_WIDTH))
                    strips[key] = strip
                line += strip
            out += line
    return width, height, bytes(out)


def ppm(width: int, height: int, rgb: bytes) -> bytes:
    """A binary PPM (P6), what QEMU's screendump writes."""
    return b"P6\n%d %d\n255\n" % (width, height) + rgb


def png(width: int, height: int, rgb: bytes) -> bytes:
    """A PNG (8-bit RGB, no filter), for screendump's format=png."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    stride = width * 3
    raw = b"".join(b"\0" + rgb[y * stride:(y + 1) * stride] for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def screendump(vga: VgaText, path: str | Path, fmt: str | None = None) -> str:
    """Write the screen to path: a .txt suffix gives text, else fmt "ppm" (default) or "png".
    Returns the format written; OSError if the file cannot be written, ValueError for a bad format."""
    path = Path(path)
    cells = vga.snapshot()
    if fmt is None:
        fmt = "txt" if path.suffix.lower() == ".txt" else "png" if path.suffix.lower() == ".png" else "ppm"
    if fmt == "txt":
        path.write_text(screen_text(cells), encoding="utf-8")
        return fmt
    if fmt not in ("ppm", "png"):
        raise ValueError(f"screendump: format {fmt!r}: pyvmm writes ppm, png, or text for a .txt file")
    w, h, rgb = render_rgb(cells, vga.cursor(), vga.cursor_shape())
    path.write_bytes(ppm(w, h, rgb) if fmt == "ppm" else png(w, h, rgb))
    return fmt


def attach_buffer(mem) -> memoryview:
    """The text window of guest RAM (GuestMemory), for VgaText."""
    return mem.view(layout.VGA_TEXT_BUFFER, BUFFER_SIZE)
