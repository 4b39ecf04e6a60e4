"""The VGA text screen shown on the host without a display: redrawn in place on a terminal, or each
changed row printed once it is stable when the output is a pipe or a file.

The guest writes its text buffer as plain RAM, so nothing tells pyvmm that the screen changed: a
thread compares the 4000 bytes with the last look POLL_HZ times a second (a bytes copy and compare,
about 2 us; docs/toy-kernels.md has the measurement and why this beats trapping the writes).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from .devices.vga import COLUMNS, ROWS, VgaText, row_text

POLL_HZ = 20
STABLE_POLLS = 2          # piped: a row is printed once it has not changed for this many looks
PREFIX = "vga| "          # piped: what marks a screen row among the serial console's lines
# CGA colour i -> ANSI colour number (the two orders differ in red/blue and cyan/brown).
_ANSI = (0, 4, 2, 6, 1, 5, 3, 7)


def ansi_colour(attr: int) -> str:
    """The SGR sequence for a VGA attribute: 16 foreground colours, 8 background (bit 7 is blink)."""
    fg, bg = attr & 0x0F, (attr >> 4) & 0x07
    fg_code = (90 if fg & 8 else 30) + _ANSI[fg & 7]
    return f"\x1b[0;{fg_code};{40 + _ANSI[bg]}m"


def use_colour(fd: int = 1) -> bool:
    """ANSI colours when fd is a terminal that has them (not TERM=dumb, no NO_COLOR)."""
    return os.isatty(fd) and os.environ.get("TERM", "dumb") != "dumb" and "NO_COLOR" not in os.environ


class StableRows:
    """Piped output: which rows to print, given each new look at the screen.

    A row is printed once it differs from what was last printed for it and has kept its new text for
    STABLE_POLLS looks.  A screen that scrolled up by k rows (its top rows are the old ones moved up)
    prints only the rows that came in at the bottom.  Blank rows are not printed.
    """

    def __init__(self) -> None:
        self.printed = [""] * ROWS
        self.last = [""] * ROWS
        self.age = [0] * ROWS

    @property
    def settled(self) -> bool:
        """Nothing left to print until the screen changes."""
        return self.last == self.printed

    def look(self, rows: list[str], *, flush: bool = False) -> list[str]:
        shift = _scrolled(self.printed, rows)
        if shift:
            self.printed = self.printed[shift:] + [""] * shift
        out = []
        for r, text in enumerate(rows):
            self.age[r] = self.age[r] + 1 if text == self.last[r] else 0
            self.last[r] = text
            if text != self.printed[r] and (self.age[r] + 1 >= STABLE_POLLS or flush):
                self.printed[r] = text
                if text.strip():
                    out.append(text)
        return out


def _scrolled(old: list[str], new: list[str]) -> int:
    """k > 0 if new is old moved up by k rows (with text carried over, not just blanks), else 0."""
    for k in range(1, ROWS):
        kept = old[k:]
        if any(x.strip() for x in kept) and new[: ROWS - k] == kept:
            return k
    return 0


class VgaTerminal:
    """Shows a VgaText on this process's stdout until stop().

    On a terminal at least 80 columns wide and 29 rows high the screen takes the top 25 rows (a rule
    under it) and the serial console scrolls in the rows below, inside a scroll region; otherwise
    the screen's stable rows are printed as lines (PREFIX before each).  ``write`` is how bytes reach
    stdout (os.write on fd 1; the console multiplexer's lock is shared through ``lock``).
    """

    def __init__(self, vga: VgaText, *, write: Callable[[bytes], object] | None = None,
                 lock: threading.Lock | None = None, fd: int = 1, in_place: bool | None = None,
                 colour: bool | None = None, newline: bytes | None = None) -> None:
        self.vga = vga
        self.fd = fd
        self._write = write or (lambda data: os.write(fd, data))
        self.lock = lock or threading.Lock()
        size = _terminal_size(fd)
        self.in_place = in_place if in_place is not None else (
            size is not None and size[0] >= COLUMNS and size[1] >= ROWS + 4)
        self.rows_total = size[1] if size else ROWS + 4
        self.colour = use_colour(fd) if colour is None else colour
        self.newline = newline if newline is not None else (b"\r\n" if os.isatty(fd) else b"\n")
        self.stable = StableRows()
        self._last: bytes | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- life cycle --------------------------------------------------------------------------------

    def start(self) -> None:
        if self.in_place:
            # Clear, keep rows 1-26 for the screen and its rule, let the console scroll below them.
            first = ROWS + 2
            self._emit(f"\x1b[2J\x1b[{first};{self.rows_total}r\x1b[{first};1H".encode())
        self._thread = threading.Thread(target=self._run, name="vga-terminal", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling; print the last rows (piped) or give the terminal its whole height back."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1)
        self.poll(final=True)
        if self.in_place:
            self._emit(f"\x1b[r\x1b[{self.rows_total};1H".encode() + self.newline)

    def _run(self) -> None:
        while not self._stop.wait(1 / POLL_HZ):
            try:
                self.poll()
            except (OSError, ValueError):
                return        # stdout went away, or guest RAM was unmapped at teardown

    # --- one look ----------------------------------------------------------------------------------

    def poll(self, *, final: bool = False) -> None:
        cells = self.vga.snapshot()
        if self.in_place:
            if cells != self._last or final:
                self._redraw(cells, self._last)
                self._last = cells
            return
        if cells == self._last and not final and self.stable.settled:
            return
        self._last = cells
        rows = [row_text(cells, r) for r in range(ROWS)]
        lines = self.stable.look(rows, flush=final)
        if lines:
            self._emit(b"".join(PREFIX.encode() + line.encode() + self.newline for line in lines))

    def _redraw(self, cells: bytes, old: bytes | None) -> None:
        from .devices.cp437 import CP437

        cursor = self.vga.cursor()
        out = ["\x1b7"]                   # save the console's cursor
        for r in range(ROWS):
            a, b = r * COLUMNS * 2, (r + 1) * COLUMNS * 2
            if old is not None and old[a:b] == cells[a:b] and not (cursor and cursor[0] == r):
                continue
            out.append(f"\x1b[{r + 1};1H")
            attr = -1
            for c in range(COLUMNS):
                ch, at = cells[a + 2 * c], cells[a + 2 * c + 1]
                if self.colour:
                    if cursor == (r, c):
                        at = (at & 0x70) >> 4 | (at & 0x07) << 4          # the cursor: swap colours
                    if at != attr:
                        out.append(ansi_colour(at))
                        attr = at
                out.append(CP437[ch])
            if self.colour:
                out.append("\x1b[0m")
        out.append(f"\x1b[{ROWS + 1};1H\x1b[0m" + "─" * (COLUMNS - 22) + " VGA above, serial below")
        out.append("\x1b8")               # back to the console's cursor
        self._emit("".join(out).encode())

    def _emit(self, data: bytes) -> None:
        with self.lock:
            self._write(data)


def _terminal_size(fd: int) -> tuple[int, int] | None:
    try:
        if not os.isatty(fd):
            return None
        size = os.get_terminal_size(fd)
        return size.columns, size.lines
    except OSError:
        return None
