"""The Multiboot v1 loader on hand-made images: the spec's structures, both layouts, the boot
information in a bytearray's RAM, and a one-line error for every broken image."""

from __future__ import annotations

import ctypes
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.arch.x86 import layout
from pyvmm.errors import LoaderError
from pyvmm.loader import multiboot as mb
from pyvmm.memory import GuestMemory
from tests.support.multiboot_images import BASE, CODE, MEMORY_INFO, PAGE_ALIGN, aout_image, elf_image, header

MiB = 1 << 20


def _parse(data: bytes) -> mb.MultibootImage:
    return mb.parse_multiboot(data, "k.bin")


def _error(data: bytes, pattern: str, ram: int = 64 * MiB) -> str:
    with pytest.raises(LoaderError) as info:
        mb.check_placement(_parse(data), ram)
    text = str(info.value)
    assert "\n" not in text and "k.bin" in text
    import re

    assert re.search(pattern, text), text
    return text


# --- the spec's structures ---------------------------------------------------------------------------------

@pytest.mark.parametrize("struct_, size, offsets", [
    (mb.multiboot_header, 48, {"magic": 0, "flags": 4, "checksum": 8, "header_addr": 12, "load_addr": 16,
                               "load_end_addr": 20, "bss_end_addr": 24, "entry_addr": 28, "mode_type": 32,
                               "width": 36, "height": 40, "depth": 44}),
    (mb.multiboot_info, 120, {"flags": 0, "mem_lower": 4, "mem_upper": 8, "boot_device": 12, "cmdline": 16,
                              "mods_count": 20, "mods_addr": 24, "u": 28, "mmap_length": 44, "mmap_addr": 48,
                              "drives_length": 52, "drives_addr": 56, "config_table": 60,
                              "boot_loader_name": 64, "apm_table": 68, "vbe_control_info": 72,
                              "vbe_mode_info": 76, "vbe_mode": 80, "vbe_interface_seg": 82,
                              "vbe_interface_off": 84, "vbe_interface_len": 86, "framebuffer_addr": 88,
                              "framebuffer_pitch": 96, "framebuffer_width": 100, "framebuffer_height": 104,
                              "framebuffer_bpp": 108, "framebuffer_type": 109, "colors": 112}),
    (mb.multiboot_mmap_entry, 24, {"size": 0, "addr": 4, "len": 12, "type": 20}),
    (mb.multiboot_mod_list, 16, {"mod_start": 0, "mod_end": 4, "cmdline": 8, "pad": 12}),
    (mb.multiboot_aout_symbol_table, 16, {"tabsize": 0, "strsize": 4, "addr": 8, "reserved": 12}),
    (mb.multiboot_elf_section_header_table, 16, {"num": 0, "size": 4, "addr": 8, "shndx": 12}),
])
def test_structures_are_laid_out_as_multiboot_h(struct_, size: int, offsets: dict[str, int]) -> None:
    assert ctypes.sizeof(struct_) == size
    for name, offset in offsets.items():
        assert getattr(struct_, name).offset == offset, name


def test_the_typedef_names_of_multiboot_h() -> None:
    assert mb.multiboot_module_t is mb.multiboot_mod_list
    assert mb.multiboot_memory_map_t is mb.multiboot_mmap_entry
    assert mb.multiboot_info_t is mb.multiboot_info
    assert mb.MULTIBOOT_BOOTLOADER_MAGIC == 0x2BADB002 and mb.MULTIBOOT_HEADER_MAGIC == 0x1BADB002


# --- finding the header --------------------------------------------------------------------------------------

def test_header_found_at_a_4_byte_boundary_only() -> None:
    assert mb.find_header(bytes(64) + header(0)) == 64
    assert mb.find_header(bytes(62) + header(0) + bytes(8)) is None       # misaligned: not a header


def test_header_must_lie_wholly_in_the_first_8_kib() -> None:
    assert mb.find_header(bytes(8192 - 12) + header(0)) == 8192 - 12
    assert mb.find_header(bytes(8192 - 8) + header(0)) is None
    # With the address fields the header is 32 bytes: at 8192 - 16 it would end past 8 KiB.
    assert mb.find_header(bytes(8192 - 16) + header(mb.MULTIBOOT_AOUT_KLUDGE, addrs=(0,) * 5)) is None


# --- the a.out kludge ----------------------------------------------------------------------------------------

def test_aout_kludge_layout() -> None:
    data = aout_image(pad=16)
    img = _parse(data)
    assert img.form == "a.out kludge" and img.header_offset == 16
    (seg,) = img.segments
    assert seg.paddr == BASE and seg.data == data and seg.memsz == len(data) + 0x1000
    assert img.entry == BASE + 16 + 32
    mb.check_placement(img, 64 * MiB)


def test_aout_kludge_load_end_zero_means_the_whole_file() -> None:
    data = aout_image(load_end=0, bss=0)
    (seg,) = _parse(data).segments
    assert seg.data == data and seg.memsz == len(data)


def test_aout_text_starts_at_header_offset_minus_the_address_difference() -> None:
    # 16 bytes of junk, then the image proper: header_addr - load_addr = 0 so the text starts at 16.
    data = b"J" * 16 + aout_image(pad=0, load_end=0, bss=0)
    img = _parse(data)
    assert img.segments[0].data == data[16:]


# --- ELF -------------------------------------------------------------------------------------------------------

def test_elf_loaded_by_its_program_headers() -> None:
    img = _parse(elf_image(extra_segments=[(0x200000, b"DATA", 0x2000)]))
    assert img.form == "ELF32" and img.entry == BASE + 12
    assert [(s.paddr, s.memsz) for s in img.segments] == [(BASE, 12 + len(CODE) + 0x1000), (0x200000, 0x2000)]


def test_elf64_with_low_addresses_is_accepted() -> None:
    assert _parse(elf_image(elfclass=64, machine=62)).form == "ELF64"


def test_higher_half_entry_is_translated_through_its_segment() -> None:
    from tests.support.elfs import make_elf

    text = header(PAGE_ALIGN) + CODE
    data = bytearray(make_elf([(BASE, text, len(text))], entry=0xC0100000 + 12))
    # Make the segment's virtual address 0xC0100000 (p_vaddr is the third word of an ELF32 phdr).
    struct.pack_into("<I", data, 52 + 8, 0xC0100000)
    assert _parse(bytes(data)).entry == BASE + 12


# --- the boot information --------------------------------------------------------------------------------------

def test_boot_information_in_guest_ram() -> None:
    ram = 96 * MiB
    mem = GuestMemory.from_bytearray(ram)
    img = _parse(elf_image())
    modules = [mb.Module(b"first module", b"mod0.txt arg"), mb.Module(b"x" * 5000, b"mod1.bin")]
    placed = mb.write_boot_info(mem, img, ram_size=ram, cmdline=b"k.elf hello", modules=modules)
    info = mb.multiboot_info.from_buffer_copy(mem.read(placed.info, ctypes.sizeof(mb.multiboot_info)))
    assert info.flags & mb.MULTIBOOT_INFO_MEMORY and info.flags & mb.MULTIBOOT_INFO_MEM_MAP
    assert (info.mem_lower, info.mem_upper) == (639, (ram - MiB) // 1024)
    assert _cstr(mem, info.cmdline) == b"k.elf hello"
    assert _cstr(mem, info.boot_loader_name) == b"pyvmm"
    entries = [mb.multiboot_mmap_entry.from_buffer_copy(mem.read(info.mmap_addr + i * 24, 24))
               for i in range(info.mmap_length // 24)]
    assert [(e.size, e.addr, e.len, e.type) for e in entries] == [(20, a, n, t) for a, n, t in layout.e820_map(ram)]
    assert info.mods_count == 2
    mods = [mb.multiboot_mod_list.from_buffer_copy(mem.read(info.mods_addr + 16 * i, 16)) for i in range(2)]
    assert mods[0].mod_start == (img.highest + 0xFFF) & ~0xFFF
    assert all(m.mod_start % 4096 == 0 for m in mods) and mods[1].mod_start >= mods[0].mod_end
    assert mem.read(mods[0].mod_start, 12) == b"first module" and mods[1].mod_end - mods[1].mod_start == 5000
    assert [_cstr(mem, m.cmdline) for m in mods] == [b"mod0.txt arg", b"mod1.bin"]
    assert mem.read(BASE, 12) == header(PAGE_ALIGN | MEMORY_INFO)
    assert mem.read(img.segments[0].paddr + len(img.segments[0].data), 16) == bytes(16)    # bss zeroed
    assert not info.flags & mb.MULTIBOOT_INFO_FRAMEBUFFER_INFO


def test_a_text_mode_request_gets_the_ega_text_framebuffer() -> None:
    img = _parse(aout_image(video=(1, 80, 25, 0)))
    assert img.wants_text_mode
    mem = GuestMemory.from_bytearray(8 * MiB)
    mb.write_boot_info(mem, img, ram_size=8 * MiB, cmdline=b"", modules=[])
    info = mb.multiboot_info.from_buffer_copy(mem.read(layout.BOOT_INFO, 120))
    assert info.flags & mb.MULTIBOOT_INFO_FRAMEBUFFER_INFO
    assert (info.framebuffer_addr, info.framebuffer_type, info.framebuffer_width, info.framebuffer_height,
            info.framebuffer_pitch) == (0xB8000, mb.MULTIBOOT_FRAMEBUFFER_TYPE_EGA_TEXT, 80, 25, 160)


def test_memory_sizes_follow_the_e820_map() -> None:
    assert mb.memory_sizes(layout.e820_map(4 << 30)) == (639, (3 << 30) // 1024 - 1024)   # stops at the hole


def _cstr(mem: GuestMemory, gpa: int) -> bytes:
    data = mem.read(gpa, 256)
    return data[:data.index(b"\0")]


# --- the module list (-initrd) ----------------------------------------------------------------------------------

def test_module_list_as_qemu_splits_it() -> None:
    assert mb.parse_module_list("a.bin arg1 arg2,b.bin") == [("a.bin", "a.bin arg1 arg2"), ("b.bin", "b.bin")]
    assert mb.parse_module_list("we,,ird.bin x") == [("we,ird.bin", "we,ird.bin x")]
    with pytest.raises(LoaderError, match="an empty module"):
        mb.parse_module_list("a.bin,,,")


def test_modules_that_do_not_fit_in_ram() -> None:
    mem = GuestMemory.from_bytearray(4 * MiB)
    with pytest.raises(LoaderError, match=r"module 0 \(4194304 bytes\) does not fit in guest RAM") as info:
        mb.write_boot_info(mem, _parse(elf_image()), ram_size=4 * MiB, cmdline=b"",
                           modules=[mb.Module(bytes(4 * MiB), b"big")])
    assert "\n" not in str(info.value)


def test_module_list_that_does_not_fit_its_pages() -> None:
    mem = GuestMemory.from_bytearray(64 * MiB)
    modules = [mb.Module(b"m", b"n" * 1000) for _ in range(40)]
    with pytest.raises(LoaderError, match=r"the module list does not fit: 40 modules") as info:
        mb.write_boot_info(mem, _parse(elf_image()), ram_size=64 * MiB, cmdline=b"", modules=modules)
    assert "\n" not in str(info.value)


# --- broken images: one line each ------------------------------------------------------------------------------

def test_bad_checksum() -> None:
    data = header(0, checksum=0x12345678) + CODE
    _error_parse(data, r"Multiboot header at offset 0x0 has a bad checksum")


def test_header_past_8_kib() -> None:
    data = bytes(9000) + aout_image()
    _error_parse(data, r"header at offset 0x2328 does not lie within the first 8192 bytes")


def test_no_header_at_all() -> None:
    _error_parse(bytes(100), r"no Multiboot header in the first 8192 bytes")


@pytest.mark.parametrize("base, pattern", [
    (0x8000, r"below 1 MiB, over pyvmm's boot information"),
    (0x3FF_8000, r"past the end of guest RAM \(64 MiB\): give the VM more memory with -m"),
    (0xD000_0000, r"in the MMIO hole above 3 GiB"),
    (0xFFFE_8000, r"over the boot ROM at 0xffff0000"),
])
def test_load_addresses_outside_ram_or_over_the_firmware(base: int, pattern: str) -> None:
    _error(aout_image(base=base, bss=0x10000), pattern)


def test_overlapping_segments() -> None:
    _error_parse(elf_image(extra_segments=[(BASE + 0x800, b"X", 0x10)]), r"segments at 0x100000\+0x1010 and "
                 r"0x100800\+0x10 overlap")


def test_truncated_aout_file() -> None:
    data = aout_image(load_end=BASE + 0x10000)
    _error_parse(data, r"truncated: the address fields load 65536 bytes from offset 0x0, the file has 36")


def test_truncated_elf_file() -> None:
    data = elf_image(extra_segments=[(0x200000, b"D" * 4000, 4000)])
    _error_parse(data[:-1000], r"truncated")


def test_truncated_header() -> None:
    data = header(mb.MULTIBOOT_AOUT_KLUDGE, addrs=(0,) * 5)[:20]
    _error_parse(data, r"truncated: the Multiboot header.s address fields run past the end of the file")


def test_graphics_modes_are_refused() -> None:
    _error_parse(aout_image(video=(0, 1024, 768, 32)), r"asks for a 1024x768x32 linear graphics mode \(flag 2\); "
                 r"pyvmm has only the 80x25 VGA text mode")
    _error_parse(aout_image(video=(1, 132, 43, 0)), r"asks for a 132x43 text mode")


def test_unknown_requirement_bits_are_refused() -> None:
    _error_parse(aout_image(flags=1 << 5), r"requires features pyvmm does not know \(flag bits 5\)")


def test_load_addr_above_header_addr() -> None:
    _error_parse(aout_image(header_addr=BASE - 4), r"load_addr 0x100000 is above header_addr 0xffffc")


def test_entry_outside_the_image() -> None:
    _error_parse(aout_image(entry=0x500000), r"the entry point 0x500000 is outside every loaded segment")


def test_not_elf_without_the_kludge() -> None:
    _error_parse(header(PAGE_ALIGN) + CODE, r"no address fields \(flag 16, the a.out kludge\) and the file is not "
                 r"an ELF")


def test_elf_for_another_machine() -> None:
    _error_parse(elf_image(machine=183), r"a 32-bit EM_AARCH64 ELF; a Multiboot kernel is an x86 ELF")


def _error_parse(data: bytes, pattern: str) -> None:
    import re

    with pytest.raises(LoaderError) as info:
        _parse(data)
    text = str(info.value)
    assert "\n" not in text and text.startswith("kernel k.bin: ")
    assert re.search(pattern, text), text


# --- fuzzing the parser ---------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([aout_image(), elf_image(), aout_image(video=(1, 0, 0, 0))]),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=8), st.integers(0, 400))
def test_mutated_images_give_a_loader_error_or_a_sane_image(base: bytes, flips, cut: int) -> None:
    from tests.fuzz.multiboot_harness import check_image

    data = bytearray(base)
    for at, value in flips:
        if at < len(data):
            data[at] = value
    check_image(bytes(data[:max(1, len(data) - cut)] if cut < len(data) else data))
