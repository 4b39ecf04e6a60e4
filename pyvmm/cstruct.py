"""struct.Struct formats derived from ctypes Structures, so that each ABI layout is written down once.

The ctypes Structure, named and laid out as in the kernel header or the spec, is the definition; hot
paths that want ``unpack_from`` on a buffer get a ``struct.Struct`` computed from it here, with the
same size and offsets (padding becomes ``x`` bytes).  A test pins both against the header's numbers.
"""

from __future__ import annotations

import ctypes
import struct

_CODES = {
    ctypes.c_uint8: "B", ctypes.c_int8: "b", ctypes.c_uint16: "H", ctypes.c_int16: "h",
    ctypes.c_uint32: "I", ctypes.c_int32: "i", ctypes.c_uint64: "Q", ctypes.c_int64: "q",
    ctypes.c_char: "c",
}


def _code(ctype: type) -> str:
    if ctype in _CODES:
        return _CODES[ctype]
    length = getattr(ctype, "_length_", None)
    elem = getattr(ctype, "_type_", None)
    if length is not None and elem in (ctypes.c_uint8, ctypes.c_char):
        return f"{length}s"                       # a byte array reads as bytes
    if length is not None and elem in _CODES:
        return _CODES[elem] * length
    raise TypeError(f"no struct code for {ctype!r}")


def format_of(cls: type[ctypes.Structure], fields: tuple[str, ...] | None = None) -> str:
    """The little-endian struct format of cls (all fields, or the leading ``fields`` only)."""
    out = ["<"]
    pos = 0
    names = [name for name, *_ in cls._fields_]
    wanted = names if fields is None else list(fields)
    if names[: len(wanted)] != wanted:
        raise ValueError(f"{cls.__name__}: {wanted} are not its leading fields {names}")
    for name in wanted:
        desc = getattr(cls, name)
        ctype = dict((n, t) for n, t, *_ in cls._fields_)[name]
        if desc.offset > pos:
            out.append(f"{desc.offset - pos}x")
        out.append(_code(ctype))
        pos = desc.offset + desc.size
    if fields is None and ctypes.sizeof(cls) > pos:
        out.append(f"{ctypes.sizeof(cls) - pos}x")
    return "".join(out)


def struct_of(cls: type[ctypes.Structure], fields: tuple[str, ...] | None = None) -> struct.Struct:
    """A struct.Struct that unpacks cls (or its leading ``fields``) from a buffer, as a tuple."""
    return struct.Struct(format_of(cls, fields))


def field_of(cls: type[ctypes.Structure], name: str) -> tuple[struct.Struct, int]:
    """(a struct.Struct of the one field, its offset in cls): unpack_from(buf, offset)[0] reads it."""
    ctype = dict((n, t) for n, t, *_ in cls._fields_)[name]
    return struct.Struct("<" + _code(ctype)), getattr(cls, name).offset
