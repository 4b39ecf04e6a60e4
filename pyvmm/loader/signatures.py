"""The magic numbers by which pyvmm tells a kernel's boot protocol, without loading the protocol's module.

A start only imports the loader it needs: builder.py looks at the first 8 KiB of the file here, and only
a bzImage signature brings in loader/bzimage.py, only a Multiboot magic loader/multiboot.py.
"""

from __future__ import annotations

HDRS_MAGIC = 0x5372_6448                  # "HdrS" at 0x202: the Linux boot protocol's setup header
MULTIBOOT_HEADER_MAGIC = 0x1BADB002       # Multiboot 0.6.96, 3.1.1
MULTIBOOT_SEARCH = 8192                   # the header lies wholly within the image's first 8 KiB


def may_be_bzimage(head: bytes) -> bool:
    """True when head carries "HdrS" where a bzImage has it (loader/bzimage.py decides the rest)."""
    return len(head) >= 0x206 and int.from_bytes(head[0x202:0x206], "little") == HDRS_MAGIC


def may_be_multiboot(head: bytes) -> bool:
    """True when head holds the Multiboot magic anywhere (loader/multiboot.py checks alignment, checksum)."""
    return MULTIBOOT_HEADER_MAGIC.to_bytes(4, "little") in head
