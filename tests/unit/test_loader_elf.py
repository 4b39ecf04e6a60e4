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
