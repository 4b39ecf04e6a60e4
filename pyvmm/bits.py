"""Bit masks for people: the known bits of a value by their enum names, the rest in hex."""

from __future__ import annotations

from enum import IntFlag


def flag_names(flags: type[IntFlag], value: int) -> str:
    """``A|B|0x40`` for the bits of value; known bits by name, leftover bits in hex; "0" for none."""
    parts = []
    rest = value
    for member in flags:
        if member.value and value & member.value == member.value:
            parts.append(member.name or "")
            rest &= ~member.value
    if rest:
        parts.append(f"{rest:#x}")
    return "|".join(parts) if parts else "0"
