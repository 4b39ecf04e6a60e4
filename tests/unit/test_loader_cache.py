"""The parsed-ELF cache: a second load of the same file skips the parser; a changed file does not."""

import os

from pyvmm.loader import cache
from pyvmm.loader.elf import load_elf
from tests.support.elfs import write_pvh_elf


def test_cache_hit_and_invalidation(tmp_path, monkeypatch):
    monkeypatch.setenv("PYVMM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PYVMM_NO_CACHE", raising=False)
    elf = write_pvh_elf(tmp_path)
    calls = []

    def loader(path):
        calls.append(path)
        return load_elf(path)

    first = cache.load_cached(loader, elf, "kernel")
    second = cache.load_cached(loader, elf, "kernel")
    assert len(calls) == 1 and first == second and second.pvh_entry == 0x100000
    os.utime(elf, ns=(1, 1))                       # the file changed: parse again
    cache.load_cached(loader, elf, "kernel")
    assert len(calls) == 2
    monkeypatch.setenv("PYVMM_NO_CACHE", "1")
    cache.load_cached(loader, elf, "kernel")
    assert len(calls) == 3


def test_unwritable_cache_still_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("PYVMM_CACHE", "/proc/no-such-dir")
    elf = write_pvh_elf(tmp_path)
    assert cache.load_cached(load_elf, elf, "kernel").pvh_entry == 0x100000
