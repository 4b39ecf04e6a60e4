"""Sizes as people write them ("256M", "1G", QEMU's -m) and as pyvmm prints them (MiB, one decimal)."""

from __future__ import annotations

import re

from .errors import ConfigError

MiB = 1 << 20
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?\s*$")
_UNITS = {"": 1 << 20, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int, *, what: str = "size", default_unit: str = "M") -> int:
    """"256M", "1G", "512" (MiB by default, as QEMU's -m), "64k", "4096B" -> bytes; an int is bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ConfigError(f"{what} {text!r} is not a size (use e.g. 256M or 1G)")
    number, unit, suffix = m.groups()
    if not unit and suffix:      # "4096B": plain bytes
        mult = 1
    else:
        mult = _UNITS[(unit or default_unit).lower()] if unit or default_unit else 1
    value = float(number) * mult
    if value != int(value):
        raise ConfigError(f"{what} {text!r} is not a whole number of bytes")
    return int(value)


def format_size(n: int) -> str:
    """Bytes for people, in one style everywhere (CLI, monitor, demo): ``254.9 MiB``, ``0.2 MiB``."""
    return f"{n / MiB:.1f} MiB"
