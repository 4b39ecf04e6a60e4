"""Small ELF files made on the fly for loader and CLI tests (gcc and ld, as the Makefile uses)."""

from __future__ import annotations

import subprocess
from pathlib import Path

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
