"""Multiboot kernels made byte by byte in Python: an a.out-kludge flat image or an ELF carrying the header,
for the unit tier and the Multiboot fuzzer."""

from __future__ import annotations

import struct

from tests.support.elfs import make_elf

MAGIC = 0x1BADB002
PAGE_ALIGN, MEMORY_INFO, VIDEO_MODE, AOUT_KLUDGE = 0x1, 0x2, 0x4, 0x10000
BASE = 0x100000
CODE = b"\xfa\xf4\xeb\xfd"          # cli; hlt; jmp back


def header(flags: int, *, addrs: tuple[int, int, int, int, int] | None = None,
           video: tuple[int, int, int, int] | None = None, checksum: int | None = None) -> bytes:
    """magic, flags, checksum, then the address fields (flag 16) and the graphics fields (flag 2)."""
    csum = (-(MAGIC + flags)) & 0xFFFF_FFFF if checksum is None else checksum
    out = struct.pack("<III", MAGIC, flags, csum)
    if addrs is not None or video is not None:
        out += struct.pack("<5I", *(addrs or (0, 0, 0, 0, 0)))
    if video is not None:
        out += struct.pack("<4I", *video)
    return out


def aout_image(*, base: int = BASE, pad: int = 0, code: bytes = CODE, bss: int = 0x1000,
               flags: int = PAGE_ALIGN | MEMORY_INFO, video: tuple[int, int, int, int] | None = None,
               load_end: int | None = None, entry: int | None = None, header_addr: int | None = None) -> bytes:
    """A flat a.out-kludge image: ``pad`` bytes, the header, then code; loaded at base from file offset 0."""
    hdr_len = 48 if video is not None else 32
    size = pad + hdr_len + len(code)
    h_addr = base + pad if header_addr is None else header_addr
    end = base + size if load_end is None else load_end
    ent = base + pad + hdr_len if entry is None else entry
    flags |= AOUT_KLUDGE | (VIDEO_MODE if video is not None else 0)
    hdr = header(flags, addrs=(h_addr, base, end, (base + size + bss) if bss else 0, ent), video=video)
    return bytes(pad) + hdr + code


def elf_image(*, base: int = BASE, flags: int = PAGE_ALIGN | MEMORY_INFO, extra_segments=(), bss: int = 0x1000,
              entry: int | None = None, elfclass: int = 32, machine: int = 3) -> bytes:
    """An ELF whose first PT_LOAD starts with the Multiboot header (flag 16 clear) followed by code."""
    text = header(flags) + CODE
    segments = [(base, text, len(text) + bss), *extra_segments]
    return make_elf(segments, entry=base + 12 if entry is None else entry, elfclass=elfclass, machine=machine)
