"""A line editor for the human monitor, fed byte by byte: history, arrow keys, Tab completion.

The monitor shares one terminal with the guest's serial console (Ctrl-A c switches between them), and
a socket monitor reads from a client that is not this process's terminal.  GNU readline and
prompt_toolkit both own a terminal file descriptor and read it themselves; here the bytes come from
a multiplexer that has already taken what belongs to the guest, so the editor is a small state
machine over those bytes that returns what to echo.  It understands what terminals send (VT100/xterm
escape sequences) and the Emacs keys QEMU's monitor and readline have.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

HISTORY_MAX = 200

ESC = 0x1B
_CSI_KEYS = {"A": "up", "B": "down", "C": "right", "D": "left", "H": "home", "F": "end",
             "1~": "home", "7~": "home", "4~": "end", "8~": "end", "3~": "delete"}
_CTRL_KEYS = {0x01: "home", 0x05: "end", 0x02: "left", 0x06: "right", 0x10: "up", 0x0E: "down",
              0x0B: "kill", 0x15: "kill-line", 0x17: "kill-word", 0x04: "delete", 0x0C: "redraw",
              0x09: "tab", 0x7F: "backspace", 0x08: "backspace", 0x03: "interrupt"}

Completer = Callable[[str], Sequence[str]]


def _word_start(buf: str, pos: int) -> int:
    """Where the word before pos begins (spaces before it skipped), as readline's Alt-B and Ctrl-W."""
    while pos and buf[pos - 1] == " ":
        pos -= 1
    while pos and buf[pos - 1] != " ":
        pos -= 1
    return pos


def common_prefix(words: Sequence[str]) -> str:
    if not words:
        return ""
    lo, hi = min(words), max(words)
    n = 0
    while n < len(lo) and lo[n] == hi[n]:
        n += 1
    return lo[:n]


class LineEditor:
    """Edit one command line at a time.

    ``feed(b)`` takes one byte and returns ``(echo, line)``: the bytes to write to the terminal, and
    the finished line when Enter was pressed (else None).  ``completer(text_before_cursor)`` returns
    the candidate words for the last word of that text.
    """

    def __init__(self, prompt: bytes, completer: Completer | None = None, history_max: int = HISTORY_MAX) -> None:
        self.prompt = prompt
        self.completer = completer
        self.history: list[str] = []
        self.history_max = history_max
        self.buf = ""
        self.pos = 0
        self._hist_index: int | None = None   # which history entry is shown; None: the line being typed
        self._draft = ""
        self._esc: bytearray | None = None    # an escape sequence being read
        self._utf8 = bytearray()              # an unfinished UTF-8 character

    # --- input -------------------------------------------------------------------------------------

    def feed(self, b: int) -> tuple[bytes, str | None]:
        if self._esc is not None:
            return self._escape(b), None
        if b == ESC:
            self._esc = bytearray()
            return b"", None
        if b in (0x0D, 0x0A):
            return self._enter()
        key = _CTRL_KEYS.get(b)
        if key is not None:
            return self._key(key), None
        if b < 0x20:
            return b"", None
        self._utf8.append(b)
        try:
            ch = self._utf8.decode("utf-8")
        except UnicodeDecodeError:
            if len(self._utf8) < 4:
                return b"", None     # more bytes of this character to come
            ch = self._utf8.decode("utf-8", "replace")
        self._utf8.clear()
        return self._insert(ch), None

    def _escape(self, b: int) -> bytes:
        assert self._esc is not None
        self._esc.append(b)
        seq = self._esc.decode("latin-1")
        if seq in ("[", "O") or (seq[0] in "[O" and not seq[-1].isalpha() and seq[-1] != "~" and len(seq) < 8):
            return b""                         # the sequence goes on
        self._esc = None
        key = _CSI_KEYS.get(seq[1:]) if seq[0] in "[O" else None
        if seq in ("b", "B"):
            key = "word-left"
        elif seq in ("f", "F"):
            key = "word-right"
        return self._key(key) if key else b""

    # --- editing -----------------------------------------------------------------------------------

    def _insert(self, text: str) -> bytes:
        self.buf = self.buf[: self.pos] + text + self.buf[self.pos:]
        self.pos += len(text)
        if self.pos == len(self.buf):
            return text.encode()
        return self._redraw()

    def _set(self, text: str, pos: int | None = None) -> bytes:
        self.buf = text
        self.pos = len(text) if pos is None else pos
        return self._redraw()

    def _key(self, key: str) -> bytes:
        buf, pos = self.buf, self.pos
        if key == "left":
            if pos:
                self.pos -= 1
                return b"\b"
            return b""
        if key == "right":
            if pos < len(buf):
                self.pos += 1
                return buf[pos].encode()
            return b""
        if key == "home":
            return self._set(buf, 0)
        if key == "end":
            return self._set(buf)
        if key == "word-left":
            return self._set(buf, _word_start(buf, pos))
        if key == "word-right":
            i = pos
            while i < len(buf) and buf[i] == " ":
                i += 1
            while i < len(buf) and buf[i] != " ":
                i += 1
            return self._set(buf, i)
        if key == "backspace":
            if not pos:
                return b""
            if pos == len(buf):
                self.buf, self.pos = buf[:-1], pos - 1
                return b"\b \b"
            return self._set(buf[: pos - 1] + buf[pos:], pos - 1)
        if key == "delete":
            return self._set(buf[:pos] + buf[pos + 1:], pos) if pos < len(buf) else b""
        if key == "kill":
            return self._set(buf[:pos], pos)
        if key == "kill-line":
            return self._set(buf[pos:], 0)
        if key == "kill-word":
            i = _word_start(buf, pos)
            return self._set(buf[:i] + buf[pos:], i)
        if key == "redraw":
            return b"\r\n" + self._redraw()
        if key == "interrupt":
            self.buf, self.pos, self._hist_index = "", 0, None
            return b"^C\r\n" + self.prompt
        if key == "up":
            return self._history_move(-1)
        if key == "down":
            return self._history_move(+1)
        if key == "tab":
            return self._complete()
        return b""

    def _history_move(self, step: int) -> bytes:
        if not self.history:
            return b""
        if self._hist_index is None:
            if step > 0:
                return b""
            self._draft = self.buf
            index = len(self.history) - 1
        else:
            index = self._hist_index + step
            if index < 0:
                return b""
            if index >= len(self.history):
                self._hist_index = None
                return self._set(self._draft)
        self._hist_index = index
        return self._set(self.history[index])

    def _complete(self) -> bytes:
        if self.completer is None:
            return b""
        before = self.buf[: self.pos]
        word = before.rsplit(" ", 1)[-1]
        words = sorted(set(self.completer(before)))
        if not words:
            return b""
        if len(words) == 1:
            return self._insert(words[0][len(word):] + " ")
        prefix = common_prefix(words)
        if len(prefix) > len(word):
            return self._insert(prefix[len(word):])
        # Several candidates and nothing more in common: list them under the line, as readline does.
        return b"\r\n" + "  ".join(words).encode() + b"\r\n" + self._redraw()

    def _enter(self) -> tuple[bytes, str]:
        line = self.buf
        self.buf, self.pos, self._hist_index, self._draft = "", 0, None, ""
        if line.strip() and (not self.history or self.history[-1] != line):
            self.history.append(line)
            del self.history[: -self.history_max]
        return b"\r\n", line

    def _redraw(self) -> bytes:
        """The prompt and the line again, the rest of the terminal line cleared, the cursor in place."""
        tail = len(self.buf) - self.pos
        return b"\r" + self.prompt + self.buf.encode() + b"\x1b[K" + (f"\x1b[{tail}D".encode() if tail else b"")

    def reset(self) -> None:
        """A new line (the monitor shown again): the history stays."""
        self.buf, self.pos, self._hist_index, self._esc = "", 0, None, None
        self._utf8.clear()
