"""Code page 437, the VGA text mode's character set, as 256 Unicode characters."""

from __future__ import annotations

# 0x01-0x1F and 0x7F are pictures on a VGA, not control characters; NUL shows as a blank cell.
_LOW = " ☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼"
CP437: str = _LOW + bytes(range(0x20, 0x7F)).decode("ascii") + "⌂" + bytes(range(0x80, 0x100)).decode("cp437")
assert len(CP437) == 256
