"""Small ELF files made on the fly: written byte by byte in Python (make_elf, for the unit tier and the
fuzzers), or assembled with gcc and ld as the Makefile does (for guests that really run)."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

EM_386, EM_X86_64, EM_AARCH64 = 3, 62, 183
PT_LOAD, PT_NOTE = 1, 4
XEN_ELFNOTE_PHYS32_ENTRY = 18


def note(owner: bytes, ntype: int, desc: bytes) -> bytes:
    """One ELF note: namesz, descsz, type, then name and desc each padded to 4 bytes."""
    name = owner + b"\0"
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def make_elf(segments: list[tuple[int, bytes, int]], *, entry: int = 0x100000, notes: bytes = b"",
             machine: int = EM_386, elfclass: int = 32) -> bytes:
    """An executable ELF: each (paddr, data, memsz) a PT_LOAD, ``notes`` one PT_NOTE (if any)."""
    is64 = elfclass == 64
    ehsize, phentsize = (64, 56) if is64 else (52, 32)
    phnum = len(segments) + (1 if notes else 0)
    offset = ehsize + phentsize * phnum
    body = b""
    phdrs = b""

    def phdr(ptype: int, off: int, addr: int, filesz: int, memsz: int, flags: int) -> bytes:
        if is64:
            return struct.pack("<IIQQQQQQ", ptype, flags, off, addr, addr, filesz, memsz, 4096)
        return struct.pack("<IIIIIIII", ptype, off, addr, addr, filesz, memsz, flags, 4096)

    for paddr, data, memsz in segments:
        phdrs += phdr(PT_LOAD, offset + len(body), paddr, len(data), memsz, 7)
        body += data + bytes(-len(data) % 16)
    if notes:
        phdrs += phdr(PT_NOTE, offset + len(body), 0, len(notes), len(notes), 4)
        body += notes
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1, 1]) + bytes(9)
    fmt = "<HHIQQQIHHHHHH" if is64 else "<HHIIIIIHHHHHH"
    header = ident + struct.pack(fmt, 2, machine, 1, entry, ehsize, 0, 0, ehsize, phentsize, phnum, 0, 0, 0)
    return header + phdrs + body


def make_pvh_elf(code: bytes = b"\xbe\x00\x00\x00\x00\xf4", *, base: int = 0x100000, pvh: bool = True,
                 machine: int = EM_386) -> bytes:
    """A kernel with one PT_LOAD of code at base and, with pvh, the Xen PVH entry note pointing at it."""
    notes = note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", base)) if pvh else b""
    return make_elf([(base, code, len(code))], entry=base, notes=notes, machine=machine)


def write_pvh_elf(tmp: Path, name: str = "k.elf", **kw) -> Path:
    path = tmp / name
    path.write_bytes(make_pvh_elf(**kw))
    return path

PVH_NOTE_S = r"""
    .section .note.Xen, "a"
    .p2align 2
    .long 4, 4, 18
    .asciz "Xen"
    .long _start32
    .text
    .code32
    .globl _start32
_start32:
"""

HELLO_S = PVH_NOTE_S + r"""
    mov $msg, %esi
1:  lodsb
    test %al, %al
    jz 2f
    mov $0x3f8, %dx
    out %al, %dx
    jmp 1b
2:  mov $EXITCODE, %eax
    mov $0xf4, %dx
    out %eax, %dx
    hlt
    .data
msg: .asciz "hello from pvh\n"
"""

LINK_LD = "ENTRY(_start32)\nSECTIONS { . = 0x100000; .text : { *(.text) } .data : { *(.data) } " \
          ".note : { *(.note.Xen) } }\n"


def build_pvh_elf(tmp: Path, *, note: bool = True, exit_code: int = 0, name: str = "hello") -> Path:
    """A 32-bit PVH ELF that prints "hello from pvh" and exits with exit_code through port 0xf4."""
    src = HELLO_S.replace("EXITCODE", str(exit_code))
    if not note:
        src = src.split(".text", 1)[1]
        src = "    .text" + src
    (tmp / f"{name}.S").write_text(src)
    (tmp / "link.ld").write_text(LINK_LD)
    subprocess.run(["gcc", "-m32", "-c", f"{name}.S", "-o", f"{name}.o"], cwd=tmp, check=True)
    subprocess.run(["ld", "-m", "elf_i386", "--no-warn-rwx-segments", "-T", "link.ld", f"{name}.o",
                    "-o", f"{name}.elf"], cwd=tmp, check=True)
    return tmp / f"{name}.elf"


def with_machine(elf: Path, out: Path, e_machine: int) -> Path:
    """A copy of elf with its e_machine field changed (e.g. 183 = AArch64)."""
    data = bytearray(elf.read_bytes())
    data[18:20] = e_machine.to_bytes(2, "little")
    out.write_bytes(bytes(data))
    return out


STRING_IO_S = PVH_NOTE_S + r"""
    cld
    mov $msg, %esi              /* rep outsb: the whole message in one exit per byte, one KVM_RUN */
    mov $msglen, %ecx
    mov $0x3f8, %dx
    rep outsb
    mov $0x3ff, %dx             /* the scratch register holds 'Z' ... */
    mov $'Z', %al
    out %al, %dx
    mov $buf, %edi              /* ... and rep insb reads it four times into buf */
    mov $4, %ecx
    rep insb
    mov $buf, %esi
    mov $5, %ecx
    mov $0x3f8, %dx
    rep outsb
    mov $0, %eax
    mov $0xf4, %dx
    out %eax, %dx
    hlt
    .data
msg: .ascii "string I/O works\n"
    .set msglen, . - msg
buf: .ascii "....\n"
"""


def build_string_io_elf(tmp: Path) -> Path:
    """A PVH ELF that prints with rep outsb and reads the UART's scratch register with rep insb."""
    (tmp / "strio.S").write_text(STRING_IO_S)
    (tmp / "link.ld").write_text(LINK_LD)
    subprocess.run(["gcc", "-m32", "-c", "strio.S", "-o", "strio.o"], cwd=tmp, check=True)
    subprocess.run(["ld", "-m", "elf_i386", "--no-warn-rwx-segments", "-T", "link.ld", "strio.o",
                    "-o", "strio.elf"], cwd=tmp, check=True)
    return tmp / "strio.elf"
