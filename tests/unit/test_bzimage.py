"""The bzImage loader: struct layout, header validation, boot_params, on a synthetic image and the real one."""

from __future__ import annotations

import ctypes
import os
import struct
import warnings
from pathlib import Path

import pytest

from pyvmm.arch.x86 import layout
from pyvmm.errors import LoaderError
from pyvmm.loader import bzimage as bz
from tests.support.bzimages import synthetic_bzimage

REAL_BZIMAGE = Path(os.environ.get("PYVMM_CACHE", Path.home() / ".cache/pyvmm")) / "linux" / "bzImage"
MiB = 1 << 20


def test_struct_layout() -> None:
    assert ctypes.sizeof(bz.boot_params) == 4096
    assert ctypes.sizeof(bz.setup_header) == 0x26C - 0x1F1
    assert ctypes.sizeof(bz.boot_e820_entry) == 20
    assert bz.boot_params.hdr.offset == 0x1F1
    assert bz.boot_params.e820_table.offset == 0x2D0
    assert bz.boot_params.e820_entries.offset == 0x1E8
    assert bz.boot_params.acpi_rsdp_addr.offset == 0x70
    assert bz.boot_params.ext_cmd_line_ptr.offset == 0xC8
    assert bz.boot_params.sentinel.offset == 0x1EF
    assert bz.setup_header.header.offset == 0x202 - 0x1F1
    assert bz.setup_header.version.offset == 0x206 - 0x1F1
    assert bz.setup_header.xloadflags.offset == 0x236 - 0x1F1
    assert bz.setup_header.pref_address.offset == 0x258 - 0x1F1
    assert bz.setup_header.init_size.offset == 0x260 - 0x1F1


def test_parse_synthetic() -> None:
    data = synthetic_bzimage()
    image = bz.parse_bzimage(data)
    assert image.protocol == (2, 15)
    assert image.protected_mode_kernel == data[5 * 512:]
    assert image.load_address == layout.KERNEL_START
    assert image.entry_64 == layout.KERNEL_START + 0x200
    assert image.runtime_end == 0x100_0000 + 0x80_0000


def test_setup_sects_zero_means_four() -> None:
    data = bytearray(synthetic_bzimage(setup_sects=4))
    data[0x1F1] = 0
    assert bz.parse_bzimage(bytes(data)).protected_mode_kernel == data[5 * 512:]


@pytest.mark.parametrize("data, message", [
    (synthetic_bzimage(magic=b"Hdrs"), "no \"HdrS\""),
    (synthetic_bzimage(version=0x020B), "boot protocol 2.11 is too old"),
    (synthetic_bzimage(xloadflags=0), "not 64-bit capable"),
    (synthetic_bzimage(loadflags=0), "zImage"),
    (synthetic_bzimage()[:-16], "truncated"),
    (synthetic_bzimage()[:0x100], "truncated"),
    (b"\x7fELF" + bytes(0x1000), "is an ELF file"),
])
def test_bad_images(data: bytes, message: str) -> None:
    with pytest.raises(LoaderError, match=message) as info:
        bz.parse_bzimage(data, "bzImage")
    assert "\n" not in str(info.value) and str(info.value).startswith("bzImage: ")


def test_e820_map() -> None:
    assert bz.e820_map(256 * MiB) == [
        (0, 0x9FC00, bz.E820Type.E820_TYPE_RAM),
        (0x9FC00, 0x400, bz.E820Type.E820_TYPE_RESERVED),
        (0xE0000, 0x20000, bz.E820Type.E820_TYPE_RESERVED),
        (MiB, 255 * MiB, bz.E820Type.E820_TYPE_RAM),
    ]
    big = bz.e820_map(4 << 30)
    assert big[-1] == (1 << 32, 1 << 30, bz.E820Type.E820_TYPE_RAM)
    assert big[-2] == (MiB, 0xC000_0000 - MiB, bz.E820Type.E820_TYPE_RAM)


def check_boot_params(image: bz.BzImage, source: bytes) -> None:
    """What build_boot_params must produce for any valid image."""
    initrd_gpa = bz.place_initrd(image, 0x1234, 256 * MiB)
    assert initrd_gpa % 4096 == 0 and initrd_gpa + 0x1234 <= 256 * MiB
    assert initrd_gpa >= image.runtime_end
    assert initrd_gpa + 0x1234 - 1 <= image.header.initrd_addr_max
    e820 = bz.e820_map(256 * MiB)
    raw = bz.build_boot_params(image, e820=e820, cmdline_gpa=layout.BOOT_CMDLINE, cmdline_len=20,
                               initrd_gpa=initrd_gpa, initrd_size=0x1234, acpi_rsdp_addr=0xE0000)
    assert len(raw) == 4096
    params = bz.boot_params.from_buffer_copy(raw)
    header_end = 0x202 + source[0x201]
    # The setup header is the image's, except for the fields a boot loader writes.
    written = {"type_of_loader", "loadflags", "heap_end_ptr", "cmd_line_ptr", "ramdisk_image", "ramdisk_size"}
    for name, _ in bz.setup_header._fields_:
        field = getattr(bz.setup_header, name)
        if name not in written and 0x1F1 + field.offset + field.size <= header_end:
            assert raw[0x1F1 + field.offset:0x1F1 + field.offset + field.size] == \
                source[0x1F1 + field.offset:0x1F1 + field.offset + field.size], name
    assert params.hdr.header == bz.HDRS_MAGIC
    assert params.hdr.type_of_loader == 0xFF
    assert params.hdr.loadflags & bz.LoadFlags.LOADED_HIGH
    assert params.hdr.cmd_line_ptr == layout.BOOT_CMDLINE
    assert (params.hdr.ramdisk_image, params.hdr.ramdisk_size) == (initrd_gpa, 0x1234)
    assert params.acpi_rsdp_addr == 0xE0000
    assert params.e820_entries == len(e820)
    assert [(e.addr, e.size, e.type) for e in params.e820_table[:len(e820)]] == e820
    # Everything outside the header and the fields we set stays zero (the sentinel in particular).
    assert params.sentinel == 0
    assert raw[0x2D0 + 20 * len(e820):] == bytes(4096 - 0x2D0 - 20 * len(e820))
    assert raw[:0x70] == bytes(0x70)


def test_boot_params_limits() -> None:
    image = bz.parse_bzimage(synthetic_bzimage())
    e820 = bz.e820_map(256 * MiB)
    with pytest.raises(LoaderError, match="command line"):
        bz.build_boot_params(image, e820=e820, cmdline_gpa=0x8000, cmdline_len=2048)
    with pytest.raises(LoaderError, match="initrd_addr_max"):
        bz.build_boot_params(image, e820=e820, cmdline_gpa=0x8000, cmdline_len=1,
                             initrd_gpa=0x8000_0000, initrd_size=4096)
    with pytest.raises(LoaderError, match="does not fit"):
        bz.place_initrd(image, 64 * MiB, 64 * MiB)


def test_images() -> None:
    """The synthetic image always, and the bzImage `make linux-guest` built whenever it is there."""
    images = [("synthetic", synthetic_bzimage())]
    if REAL_BZIMAGE.exists():
        images.append(("real", REAL_BZIMAGE.read_bytes()))
    else:
        warnings.warn(f"{REAL_BZIMAGE} is missing (run `make linux-guest`): tested the synthetic image only",
                      stacklevel=1)
    for name, data in images:
        image = bz.parse_bzimage(data, name)
        assert image.header.version >= bz.MIN_PROTOCOL
        assert image.header.xloadflags & bz.XLoadFlags.XLF_KERNEL_64
        check_boot_params(image, data)
        if name == "real":
            setup_size = ((image.header.setup_sects or 4) + 1) * 512
            assert len(image.protected_mode_kernel) == len(data) - setup_size
            assert image.header.init_size > len(image.protected_mode_kernel)
            # kernel_version points (from 0x200) at the version string `make` wrote.
            start = 0x200 + image.header.kernel_version
            assert data[start:start + 4] == b"6.1."
            assert struct.unpack_from("<I", data, 0x202)[0] == bz.HDRS_MAGIC
