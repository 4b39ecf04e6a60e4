"""What a terminal shows for a stream of output, for tests of pyvmm's console and status line."""

from __future__ import annotations

import re


def render_terminal(stream: str) -> list[str]:
    """The lines a terminal shows for this output: CR returns to the column 0, ESC[K erases the rest."""
    lines: list[str] = []
    cur: list[str] = []
    col = 0
    for part in re.split(r"(\r\n|\n|\r|\x1b\[K|\x1b\[\d*[A-Za-z])", stream):
        if part in ("\r\n", "\n"):
            lines.append("".join(cur))
            cur, col = [], 0
        elif part == "\r":
            col = 0
        elif part == "\x1b[K":
            del cur[col:]
        elif part.startswith("\x1b["):
            continue
        else:
            for ch in part:
                if col < len(cur):
                    cur[col] = ch
                else:
                    cur.append(ch)
                col += 1
    lines.append("".join(cur))
    return lines
