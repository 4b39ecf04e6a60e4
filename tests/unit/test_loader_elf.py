"""The ELF loader: PT_LOAD placement, the PVH note, and one-line errors for bad files."""

import pytest

from pyvmm.errors import LoaderError
from pyvmm.loader.elf import load_elf, place_segments
from pyvmm.memory import GuestMemory
from tests.support.elfs import EM_AARCH64, make_elf, write_pvh_elf


def test_loads_segments_and_pvh_note(tmp_path):
    img = load_elf(write_pvh_elf(tmp_path))
    assert img.pvh_entry == 0x100000
    assert img.lowest == 0x100000
    mem = GuestMemory.from_bytearray(4 << 20)
    place_segments(img, mem)
    assert mem.read(0x100000, 1) == b"\xbe"        # mov $0, %esi


def test_bss_is_zeroed(tmp_path):
    (tmp_path / "bss.elf").write_bytes(make_elf([(0x200000, b"\x90" * 16, 0x3000)]))
    mem = GuestMemory.from_bytearray(4 << 20)
    mem.write(0x200000, b"\xaa" * 0x3000)
    place_segments(load_elf(tmp_path / "bss.elf"), mem)
    assert mem.read(0x200000, 16) == b"\x90" * 16 and mem.read(0x200010, 0x2FF0) == bytes(0x2FF0)


def test_no_pvh_note(tmp_path):
    assert load_elf(write_pvh_elf(tmp_path, pvh=False)).pvh_entry is None


def _file(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing.elf", "no such file"),
    (lambda p: p, "is a directory"),
    (lambda p: _file(p / "t.txt", b"hello"), "not an ELF file"),
    (lambda p: _file(p / "t.elf", b"\x7fELF" + b"\0" * 8), "corrupt ELF"),
])
def test_bad_files(tmp_path, make, message):
    with pytest.raises(LoaderError, match=message) as e:
        load_elf(make(tmp_path))
    assert "\n" not in str(e.value)


def test_wrong_architecture(tmp_path):
    arm = write_pvh_elf(tmp_path, "arm.elf", machine=EM_AARCH64)
    with pytest.raises(LoaderError, match="not x86-64"):
        load_elf(arm)


def test_segment_outside_ram(tmp_path):
    img = load_elf(write_pvh_elf(tmp_path))
    with pytest.raises(LoaderError, match="does not fit"):
        place_segments(img, GuestMemory.from_bytearray(1 << 20))


def _pvh_note(entry):
    import struct

    from tests.support.elfs import note

    return note(b"Xen", 18, struct.pack("<I", entry))


@pytest.mark.parametrize("segments, entry, message", [
    ([(0x100000, b"\x90" * 16, 0x2000), (0x101000, b"\x90" * 16, 16)], 0x100000, "segments overlap"),
    ([(0x100000, b"\x90" * 16, 16)], 0x300000, "PVH entry 0x300000 lies outside its loadable segments"),
])
def test_kernels_the_loader_refuses(tmp_path, segments, entry, message):
    (tmp_path / "k.elf").write_bytes(make_elf(segments, entry=entry, notes=_pvh_note(entry)))
    with pytest.raises(LoaderError, match=message) as e:
        load_elf(tmp_path / "k.elf")
    assert "\n" not in str(e.value)


def test_truncated_segment_and_garbled_note(tmp_path):
    image = make_elf([(0x100000, b"\x90" * 256, 256)], notes=_pvh_note(0x100000))
    (tmp_path / "short.elf").write_bytes(image[:-40])          # the note survives, the segment does not
    with pytest.raises(LoaderError, match="truncated|corrupt ELF"):
        load_elf(tmp_path / "short.elf")
    garbled = bytearray(image)
    garbled[-20:-16] = b"\xff\xff\xff\x7f"                         # the note's name size
    (tmp_path / "note.elf").write_bytes(bytes(garbled))
    with pytest.raises(LoaderError, match="corrupt ELF"):
        load_elf(tmp_path / "note.elf")


def test_error_messages_stay_on_one_line(tmp_path):
    path = tmp_path / "two\nlines.elf"
    with pytest.raises(LoaderError) as e:
        load_elf(path)
    assert "\n" not in str(e.value) and "two\\nlines.elf" in str(e.value)
