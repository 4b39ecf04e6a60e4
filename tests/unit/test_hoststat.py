"""Host-side memory accounting: mincore RSS of guest RAM and the process RSS."""

from pyvmm import hoststat
from pyvmm.memory import GuestMemory

MiB = 1 << 20


def test_mapping_rss_follows_touch_and_discard():
    mem = GuestMemory.anonymous([(0, 32 * MiB), (64 * MiB, 8 * MiB)])
    try:
        assert hoststat.mapping_rss(mem) == 0
        mem.write(MiB, b"x" * (4 * MiB))
        mem.write(64 * MiB, b"y")
        assert hoststat.mapping_rss(mem) == 4 * MiB + 4096
        assert hoststat.mapping_rss(mem.regions[1]) == 4096
        mem.discard(MiB, 2 * MiB)
        assert hoststat.mapping_rss(mem) == 2 * MiB + 4096
    finally:
        mem.close()


def test_mapping_rss_of_a_bytearray_counts_its_pages():
    mem = GuestMemory.from_bytearray(MiB)
    assert MiB <= hoststat.mapping_rss(mem) <= MiB + 8192


def test_process_rss_grows_with_touched_memory():
    mem = GuestMemory.anonymous([(0, 64 * MiB)])
    try:
        before = hoststat.process_rss()
        mem.write(0, b"z" * (32 * MiB))
        assert hoststat.process_rss() - before >= 30 * MiB
    finally:
        mem.close()
