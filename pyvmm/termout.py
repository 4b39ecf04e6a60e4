"""This process's standard output and error, shared by the guest's console and pyvmm's own lines.

The guest writes its serial console a byte at a time (one port write, one exit); pyvmm writes whole
lines (progress, trace, log) to standard error.  Written as they come, the two cut each other: a
status line drawn on a terminal is overwritten by a guest line, and a pipe that takes both gets a log
line in the middle of a guest line.  Everything here goes through one lock:

* ``GuestOutput`` writes the console.  To a terminal bytes go out as they come (a shell prompt has no
  newline), except while a status line is shown: then whole lines go above it.  A status line drawn
  over an unfinished guest line erases it from the screen, so that part is held again and goes out
  whole above the status line with the rest of its line, or back in place when the status line ends.
  To a pipe or file only whole lines go out, so nothing lands in the middle of one; a partial line
  goes out once it has waited PARTIAL_WAIT seconds (a prompt), or when the VM stops.
* ``StatusLine`` is one live line at the bottom of a terminal (rewritten in place, cleared when
  done); piped, it is a plain line at most every ``every`` seconds.
* ``emit_line`` writes one of pyvmm's own lines (logging, the trace, the reason the VM stopped) where
  it does not cut either: above a status line, and after a newline of its own when an unfinished
  guest line is the last thing on that terminal or pipe (a prompt, or a line the VM's stop cut).

rich's Live display does the same for Python-level writes, but the guest's bytes reach fd 1 from a
vCPU thread and the console may be a terminal in raw mode (no newline translation), which Live does
not draw for; the few escape sequences needed here are two (CR, erase line).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from collections.abc import Callable

PARTIAL_WAIT = 0.3           # seconds a piped partial line waits for its newline before going out
_lock = threading.RLock()
_status: StatusLine | None = None   # the status line on the terminal now, if any
_terminals: weakref.WeakSet[GuestOutput] = weakref.WeakSet()   # guest outputs to a terminal
# Files (st_dev, st_ino) whose last bytes are an unfinished guest line (a prompt, a line the VM's stop
# cut), with the output that wrote it: one of pyvmm's lines there starts with a newline.
_open_lines: dict[tuple[int, int], GuestOutput] = {}


def _is_tty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _file_key(fd: int) -> tuple[int, int] | None:
    """The open file behind fd, (st_dev, st_ino): two fds on one terminal or pipe have the same key."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _same_key(a: tuple[int, int] | None, b: tuple[int, int] | None) -> bool:
    return a is not None and a == b


def _same_file(a: int, b: int) -> bool:
    return _same_key(_file_key(a), _file_key(b))


def _write(fd: int, data: bytes) -> None:
    while data:
        try:
            n = os.write(fd, data)
        except InterruptedError:
            continue
        except OSError:
            return           # the terminal or the reader went away; the VM goes on
        data = data[n:]


class GuestOutput:
    """The guest's console bytes on ``fd`` (default 1); a ConsoleLog sink (callable with bytes)."""

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self.tty = _is_tty(fd)
        self._partial = bytearray()
        self._partial_since = 0.0
        self._on_screen = bytearray()   # the unfinished line written out so far (a prompt, a cut line)
        self._flusher: threading.Thread | None = None
        self._closed = False
        self._key = _file_key(fd)       # its file: a status line or one of pyvmm's lines may share it
        if self.tty:
            _terminals.add(self)

    def __call__(self, data: bytes) -> None:
        self.write(data)

    def write(self, data: bytes) -> int:
        self._write_locked(data)
        return len(data)

    def _status_over(self) -> StatusLine | None:
        """The status line drawn on this output's terminal, if there is one (under the lock)."""
        status = _status
        if status is not None and status.tty and _same_key(status._key, self._key):
            return status
        return None

    def _above(self, status: StatusLine, lines: bytes) -> None:
        """Whole lines above the status line: the unfinished line's start, if still shown, ends with them."""
        status.above(lines)
        self._on_screen.clear()
        self._note_open_line()

    def _write_locked(self, data: bytes) -> None:
        with _lock:
            if self._closed:
                return            # a vCPU outlived the machine's close: its fd may be gone or reused
            status = self._status_over()
            if self.tty and status is None:
                if self._partial:
                    data, self._partial = bytes(self._partial) + data, bytearray()
                self._out(data)
                return
            self._partial += data
            cut = self._partial.rfind(b"\n") + 1
            if cut:
                lines = bytes(self._partial[:cut])
                del self._partial[:cut]
                if status is not None:
                    self._above(status, lines)
                else:
                    self._out(lines)
            if self._partial:
                if not self._partial_since:
                    self._partial_since = time.monotonic()
                if len(self._partial) >= 4096:
                    self._flush_partial()
                elif status is None:
                    self._start_flusher()
            else:
                self._partial_since = 0.0

    def _flush_partial(self) -> None:
        if self._partial:
            status = self._status_over()
            if status is not None:
                self._above(status, bytes(self._partial) + b"\n")   # it cannot stay beside the status line
            else:
                self._out(bytes(self._partial))
            self._partial.clear()
        self._partial_since = 0.0

    def _out(self, data: bytes) -> None:
        """Written to the fd, remembering what of an unfinished line is out there."""
        _write(self.fd, data)
        nl = data.rfind(b"\n")
        if nl >= 0:
            self._on_screen[:] = data[nl + 1 :]
        else:
            self._on_screen += data
        if len(self._on_screen) > 4096:        # a guest that never ends its line: keep its tail
            del self._on_screen[:-4096]
        self._note_open_line()

    def _note_open_line(self) -> None:
        """Whether this output's last bytes leave a line open on its file (whoever wrote the one
        before: a finished line ends an older machine's cut line too)."""
        if self._key is not None:
            if self._on_screen:
                _open_lines[self._key] = self
            else:
                _open_lines.pop(self._key, None)

    def _covered(self) -> None:
        """A status line is drawn over this terminal's last line: what of an unfinished guest line
        was there is gone from the screen, and is held again to go out whole."""
        if self._on_screen:
            self._partial[:0] = self._on_screen
            self._on_screen.clear()
            self._note_open_line()
            self._partial_since = self._partial_since or time.monotonic()

    def _uncovered(self) -> None:
        """The status line is gone: an unfinished line held meanwhile (a prompt) goes back in place."""
        if self._partial and not self._closed:
            self._flush_partial()

    def _start_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(target=self._flush_later, name="console-flush", daemon=True)
            self._flusher.start()

    def _flush_later(self) -> None:
        while True:
            time.sleep(PARTIAL_WAIT / 2)
            with _lock:
                if self._closed or not self._partial:
                    return
                if self._status_over() is not None:
                    continue          # held above the status line until its newline
                if time.monotonic() - self._partial_since >= PARTIAL_WAIT:
                    self._flush_partial()
                    return

    def flush(self) -> None:
        """Everything held, out now (the VM stopped, or a status line ends)."""
        with _lock:
            self._flush_partial()

    def close(self) -> None:
        with _lock:
            self._flush_partial()
            self._closed = True
            _terminals.discard(self)    # a later status line has nothing of this one to hold


class StatusLine:
    """A live status line on standard error (fd 2): ``update(text)`` often, ``done(text)`` once.

    On a terminal the line is rewritten in place and guest lines and pyvmm's lines go above it; piped,
    an update is written as a line at most every ``every`` seconds (0: never), and done() always."""

    def __init__(self, fd: int = 2, *, every: float = 1.0, raw: bool = False) -> None:
        self.fd = fd
        self.tty = _is_tty(fd)
        self._key = _file_key(fd)    # its file, to tell which guest outputs share its terminal
        self.every = every
        self.raw = raw               # the terminal is in raw mode: lines end with CR LF
        self.text = ""
        self._last_piped = time.monotonic()     # piped, the first line comes after `every` seconds
        self._shown = False

    def __enter__(self) -> StatusLine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        global _status
        with _lock:
            if self.tty and _status is None:
                _status = self

    def _width(self) -> int:
        try:
            return max(20, os.get_terminal_size(self.fd).columns - 1)
        except OSError:
            return 79

    def _draw(self) -> bytes:
        text = self.text.replace("\r", " ").replace("\n", " ")
        width = self._width()
        if len(text) > width:
            text = text[: width - 3] + "..."
        return b"\r\x1b[K" + text.encode("utf-8", "replace")

    def update(self, text: str) -> None:
        with _lock:
            self.text = text
            if self.tty:
                if _status is self:
                    if not self._shown:
                        self._each_output(GuestOutput._covered)
                    _write(self.fd, self._draw())
                    self._shown = True
            elif self.every and time.monotonic() - self._last_piped >= self.every:
                self._last_piped = time.monotonic()
                _write(self.fd, _end_guest_line(self.fd) + text.encode("utf-8", "replace") + b"\n")

    def above(self, lines: bytes) -> None:
        """Whole lines (ending in a newline) printed above the status line, which is drawn again."""
        with _lock:
            if self.raw:
                lines = lines.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            _write(self.fd, (b"\r\x1b[K" if self._shown else b"") + lines + (self._draw() if self._shown else b""))

    def _each_output(self, step: Callable[[GuestOutput], None]) -> None:
        for out in list(_terminals):
            if _same_key(out._key, self._key):
                step(out)

    def stop(self, final: bytes = b"") -> None:
        """Clear the line (writing ``final`` in its place) and let output flow again: a guest line
        held unfinished meanwhile goes back on the screen."""
        global _status
        with _lock:
            mine = _status is self
            if mine:
                _status = None
                if self._shown:
                    _write(self.fd, b"\r\x1b[K")
                    self._shown = False
            if final:
                _write(self.fd, _end_guest_line(self.fd) + final)
            if mine:
                self._each_output(GuestOutput._uncovered)

    def done(self, text: str) -> None:
        """The final state, as a line that stays."""
        self.stop(text.encode("utf-8", "replace") + (b"\r\n" if self.raw else b"\n"))


def _end_guest_line(fd: int) -> bytes:
    """The newline that puts one of pyvmm's lines on its own line when the last thing written to
    ``fd``'s file is an unfinished guest line (a prompt, a line cut by the VM's stop), or b"" (under
    the lock).  The guest's next bytes then go on after it, on the new line.  On a terminal it is
    CR LF: in raw mode (the interactive console) a bare LF would not go back to the first column."""
    key = _file_key(fd) if _open_lines else None
    out = _open_lines.pop(key, None) if key is not None else None
    if out is None:
        return b""
    out._on_screen.clear()
    return b"\r\n" if out.tty else b"\n"


def _stderr_elsewhere() -> bool:
    """sys.stderr is not this process's fd 2 (a notebook cell; a test capturing it in memory)."""
    stream = sys.stderr
    if stream is None:
        return False
    try:
        return not _same_file(stream.fileno(), 2)
    except (AttributeError, OSError, ValueError):
        return True


def emit_line(text: str, fd: int = 2) -> None:
    """One of pyvmm's own lines on ``fd`` (a log record, a trace line, why the VM stopped): above a
    status line on that terminal, else as one write, on a line of its own, so it does not land inside
    a guest line.  For fd 2 with sys.stderr put elsewhere (a notebook cell) it goes there."""
    if fd == 2 and _stderr_elsewhere():
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass             # the cell or the capture went away; the VM goes on
        return
    data = text.encode("utf-8", "replace")
    with _lock:
        status = _status
        if status is not None and _same_key(status._key, _file_key(fd)):
            # A status line started but not yet drawn leaves a prompt in place: end it first.
            status.above(_end_guest_line(fd) + (data if data.endswith(b"\n") else data + b"\n"))
        else:
            _write(fd, _end_guest_line(fd) + data)


class LineStream:
    """A text stream for the tracer and logging that writes through emit_line (one write per line)."""

    def __init__(self, fd: int = 2) -> None:
        self.fd = fd
        self._buf = ""

    def write(self, text: str) -> int:
        self._buf += text
        cut = self._buf.rfind("\n") + 1
        if cut:
            emit_line(self._buf[:cut], self.fd)
            self._buf = self._buf[cut:]
        return len(text)

    def flush(self) -> None:
        if self._buf:
            emit_line(self._buf, self.fd)
            self._buf = ""

    def isatty(self) -> bool:
        return _is_tty(self.fd)

    def fileno(self) -> int:
        return self.fd
