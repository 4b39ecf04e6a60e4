"""Synthetic bzImages for the loader's tests and fuzzers: the setup header as `make bzImage` lays it out."""

from __future__ import annotations

import ctypes

from pyvmm.loader import bzimage as bz


def synthetic_bzimage(*, version: int = 0x020F, xloadflags: int = 1, loadflags: int = 1,
                      setup_sects: int = 4, kernel_size: int = 0x2000, magic: bytes = b"HdrS") -> bytes:
    """A bzImage as `make bzImage` lays it out, with a recognisable protected-mode kernel."""
    setup_size = (setup_sects + 1) * 512
    image = bytearray(setup_size + kernel_size)
    hdr = bz.setup_header(
        setup_sects=setup_sects, syssize=kernel_size // 16, boot_flag=0xAA55,
        jump=0xEB | ((0x26C - 0x202) << 8),         # jmp over the header: its byte gives the header's length
        version=version, loadflags=loadflags, initrd_addr_max=0x7FFF_FFFF, kernel_alignment=0x20_0000,
        relocatable_kernel=1, xloadflags=xloadflags, cmdline_size=2047, pref_address=0x100_0000,
        init_size=0x80_0000,
    )
    image[0x1F1:0x1F1 + ctypes.sizeof(hdr)] = bytes(hdr)
    image[0x202:0x206] = magic
    image[setup_size:] = bytes(range(256)) * (kernel_size // 256)
    return bytes(image)
