"""The balloon device through the transport and the Python driver: memory really given back, and every
kind of bad PFN, stats buffer and config write survived."""

import struct
import threading

import pytest

from pyvmm import hoststat
from pyvmm.config import parse_balloon_options
from pyvmm.errors import ConfigError
from pyvmm.virtio.abi import BalloonStat, Reg, Status
from pyvmm.virtio.balloon import BalloonOptions
from tests.support.virtio_driver import (
    DEFLATE_ON_OOM,
    MTH,
    PAGE_POISON,
    PAGE_REPORTING,
    STATS_VQ,
    Rig,
    encode_stats,
)

MiB = 1 << 20
S = BalloonStat


@pytest.fixture(params=[2, 1], ids=["v2", "v1"])
def rig(request):
    r = Rig(version=request.param)
    yield r
    r.close()


def dirty(mem, pfns):
    for p in pfns:
        mem.write(p << 12, b"\xa5" * 4096)


# --- inflate / deflate ---------------------------------------------------------------------------------

def test_inflated_pages_read_zero(rig):
    rig.driver.start()
    pfns = list(range(256, 512))
    dirty(rig.mem, pfns + [600])
    rig.driver.inflate(pfns)
    assert all(rig.mem.read(p << 12, 4096) == bytes(4096) for p in pfns)
    assert rig.mem.read(600 << 12, 4) == b"\xa5" * 4    # a page not inflated keeps its data
    assert rig.balloon.ballooned_pages == 256


def test_256_contiguous_pfns_are_one_discard(rig):
    rig.driver.start()
    rig.driver.inflate(list(range(1000, 1256))[::-1])   # order does not matter
    assert rig.discards == [(1000 << 12, 256 << 12)]


def test_scattered_pfns_are_sorted_and_merged():
    r = Rig()
    r.driver.start()
    r.driver.inflate([7, 3, 5, 4, 100, 101, 9])
    assert r.discards == [(3 << 12, 3 << 12), (7 << 12, 4096), (9 << 12, 4096), (100 << 12, 2 << 12)]


def test_anonymous_mmap_rss_falls_by_the_inflated_amount():
    r = Rig(anonymous=True, ram=64 * MiB)
    r.driver.start()
    pfns = list(range(2048, 2048 + 8192))    # 32 MiB at 8 MiB
    dirty(r.mem, pfns)
    r.driver.inflate(list(range(100, 356)))   # warm up: the driver's buffers are resident from here on
    before = hoststat.mapping_rss(r.mem)
    for i in range(0, len(pfns), 256):
        r.driver.inflate(pfns[i:i + 256])
    after = hoststat.mapping_rss(r.mem)
    assert before - after == 32 * MiB
    info = r.balloon.info()
    assert info.guest_ram_rss == after and info.discarded_bytes == 33 * MiB
    assert len(r.discards) == 33


def test_deflate_and_never_inflated(rig, caplog):
    rig.driver.start()
    rig.driver.inflate([10, 11, 12])
    rig.driver.deflate([11, 12, 13])
    b = rig.balloon
    assert b.ballooned_pages == 1 and b.is_ballooned(10) and not b.is_ballooned(11)
    assert b.never_inflated == 1
    assert any("never inflated" in r.getMessage() for r in caplog.records)
    rig.mem.write(11 << 12, b"reuse")                # the guest may use a deflated page again
    assert rig.mem.read(11 << 12, 5) == b"reuse"


def test_bad_pfns_are_counted_and_ignored(rig, caplog):
    rig.driver.start()
    ram_pfns = rig.mem.ram_size >> 12
    used = rig.driver.inflate([ram_pfns, ram_pfns + 5, 0xFFFF_FFFF, 20])
    b = rig.balloon
    assert used == [(0, 0)] or len(used) == 1
    assert b.bad_pfns == 3 and b.ballooned_pages == 1
    assert rig.discards == [(20 << 12, 4096)]
    assert not rig.drv.status & Status.DEVICE_NEEDS_RESET
    assert any("outside guest RAM" in r.getMessage() for r in caplog.records)


def test_pfn_in_the_hole_between_regions():
    r = Rig(layout=[(0, 8 * MiB), (16 * MiB, 8 * MiB)], ram=None)
    r.driver.start()
    hole = (12 * MiB) >> 12
    high = (16 * MiB) >> 12
    r.driver.inflate([hole, high, high + 1])
    assert r.balloon.bad_pfns == 1
    assert r.discards == [(16 * MiB, 8192)]


def test_duplicate_pfns(rig):
    rig.driver.start()
    rig.driver.inflate([30, 30, 31])
    rig.driver.inflate([31])
    assert rig.balloon.duplicate_pfns == 2 and rig.balloon.ballooned_pages == 2
    assert rig.discards == [(30 << 12, 8192)]


def test_odd_sized_pfn_buffer_tolerated():
    r = Rig()
    r.driver.start()
    q = r.driver.q["inflateq"]
    q.add([struct.pack("<II", 40, 41) + b"\x01\x02"])
    q.kick()
    assert r.balloon.ballooned_pages == 2 and q.used_idx() == 1


def test_huge_host_pages_only_whole_pages_of_one_request_discarded():
    r = Rig(ram=16 * MiB, host_page_size=2 * MiB)
    r.driver.start()
    r.driver.inflate(list(range(512, 768)))            # first half of the host page at 2 MiB
    r.driver.inflate(list(range(768, 1024)))           # the second half, in another request
    assert r.discards == []                            # never combined across requests
    r.driver.inflate(list(range(1024, 1024 + 768)))    # 4 MiB..7 MiB in one request: one whole host page
    assert r.discards == [(4 * MiB, 2 * MiB)]
    assert r.balloon.ballooned_pages == 256 + 256 + 768


def test_deflate_on_oom_is_accepted_and_reported():
    r = Rig()
    events = []
    r.balloon.add_listener(lambda ev, data: events.append((ev, data)))
    r.driver.start()
    r.balloon.set_target((16 - 1) * MiB)           # 256 pages wanted
    r.driver.inflate(list(range(100, 356)))
    r.driver.deflate(list(range(100, 110)))        # the guest takes 10 back unasked
    assert r.balloon.unrequested_deflate_pages == 10
    assert ("DEFLATE_ON_OOM", {"pages": 10, "negotiated": True}) in events


def test_ballooned_set_is_a_bitmap():
    r = Rig(ram=64 * MiB)
    assert isinstance(r.balloon.pages.bitmap, bytearray)
    assert len(r.balloon.pages.bitmap) == (64 * MiB >> 12) // 8


def test_reset_returns_every_page_to_the_guest():
    r = Rig()
    r.driver.start()
    r.driver.inflate([1, 2, 3])
    r.driver.set_actual(3)
    r.drv.w(Reg.Status, 0)
    assert r.balloon.ballooned_pages == 0 and r.balloon.actual == 0 and not r.balloon.is_ballooned(2)


# --- config: num_pages, actual, legacy endianness ----------------------------------------------------------

def test_set_target_raises_config_interrupt_and_sets_num_pages(rig):
    rig.driver.start()
    rig.drv.ack_interrupt()
    rig.balloon.set_target(12 * MiB)
    assert rig.drv.ack_interrupt() == 2
    assert rig.driver.num_pages() == (4 * MiB) >> 12
    rig.balloon.set_target(64 * MiB)             # more than RAM: clamped, nothing to balloon
    assert rig.driver.num_pages() == 0
    rig.balloon.set_target(-5)
    assert rig.driver.num_pages() == (16 * MiB) >> 12


def test_legacy_config_is_little_endian_bytewise():
    r = Rig(version=1)
    r.driver.start()
    r.balloon.set_target(16 * MiB - 0x01020304 * 0 - (0x123 << 12))
    raw = bytes(r.dev.read(0x100 + i, 1) for i in range(4))
    assert raw == (0x123).to_bytes(4, "little")


def test_actual_only_after_all_four_bytes(rig):
    rig.driver.start()
    events = []
    rig.balloon.add_listener(lambda ev, data: events.append((ev, data)))
    for i, b in enumerate((0x34, 0x02, 0, 0)):
        rig.dev.write(0x104 + i, 1, b)
        assert rig.balloon.actual == (0x234 if i == 3 else 0)
    assert events == [("BALLOON_CHANGE", {"actual": 16 * MiB - (0x234 << 12)})]
    rig.driver.set_actual(7, bytewise=False)
    assert rig.balloon.actual == 7 and rig.driver.actual() == 7


def test_num_pages_is_read_only(rig, caplog):
    rig.driver.start()
    rig.balloon.set_target(15 * MiB)
    rig.drv.config_write(0, 4, 5)
    assert rig.driver.num_pages() == 256
    assert any("num_pages" in r.getMessage() for r in caplog.records)


def test_info_and_agree():
    r = Rig()
    r.driver.start()
    r.balloon.set_target(15 * MiB)
    r.driver.inflate(list(range(100, 356)))
    assert not r.balloon.info().agree
    r.driver.set_actual(256)
    info = r.balloon.info()
    assert info.agree and info.actual_pages == 256 and info.num_pages == 256
    assert info.target == info.actual == 15 * MiB
    assert info.ballooned_pages == 256 and info.discarded_bytes == MiB and info.guest_ram_rss is None
    assert "VIRTIO_BALLOON_F_STATS_VQ" in info.features


# --- queue numbering ------------------------------------------------------------------------------------

@pytest.mark.parametrize("accept, names", [
    (0, ["inflateq", "deflateq"]),
    (STATS_VQ, ["inflateq", "deflateq", "statsq"]),
    (PAGE_REPORTING, ["inflateq", "deflateq", "reporting_vq"]),
    (STATS_VQ | PAGE_REPORTING, ["inflateq", "deflateq", "statsq", "reporting_vq"]),
])
def test_dense_queue_numbering(accept, names):
    r = Rig(options=BalloonOptions(free_page_reporting=True))
    r.driver.start(accept=accept)
    assert r.dev.active_queue_names == names
    r.drv.w(Reg.QueueSel, len(names))
    assert r.drv.r(Reg.QueueSizeMax) == 0


# --- free page reporting --------------------------------------------------------------------------------

@pytest.mark.parametrize("indirect", [False, True])
def test_reported_ranges_are_discarded_and_returned(indirect):
    r = Rig(options=BalloonOptions(free_page_reporting=True))
    r.driver.start(accept=PAGE_REPORTING | STATS_VQ)
    dirty(r.mem, range(64, 64 + 1024))
    used = r.driver.report([(64 << 12, 2 * MiB), (2 * MiB + (64 << 12), 2 * MiB)], indirect=indirect)
    assert len(used) == 1
    assert r.discards == [(64 << 12, 2 * MiB), (2 * MiB + (64 << 12), 2 * MiB)]
    assert r.mem.read(64 << 12, 8) == bytes(8)
    assert r.balloon.reported_bytes == 4 * MiB and r.balloon.ballooned_pages == 0


def test_reporting_with_nonzero_poison_keeps_pages():
    r = Rig(options=BalloonOptions(free_page_reporting=True))
    r.driver.start(accept=PAGE_REPORTING | PAGE_POISON, poison_val=0xAAAAAAAA)
    assert r.balloon.poison_val == 0xAAAAAAAA
    dirty(r.mem, [64])
    assert len(r.driver.report([(64 << 12, 4096)])) == 1
    assert r.discards == [] and r.mem.read(64 << 12, 1) == b"\xa5"


def test_page_poison_offered_with_reporting_only_by_default():
    assert not BalloonOptions().features() & PAGE_POISON
    assert BalloonOptions(free_page_reporting=True).features() & PAGE_POISON
    assert not BalloonOptions(free_page_reporting=True, page_poison=False).features() & PAGE_POISON


# --- stats ----------------------------------------------------------------------------------------------

def test_stats_decoded_by_name_with_unknown_tags_ignored():
    r = Rig()
    events = []
    r.balloon.add_listener(lambda ev, data: events.append((ev, data)))
    r.driver.start(stats=[(S.VIRTIO_BALLOON_S_MEMFREE, 1 << 30), (S.VIRTIO_BALLOON_S_MEMTOT, 2 << 30),
                          (777, 5), (S.VIRTIO_BALLOON_S_DIRECT_RECLAIM, 9), (S.VIRTIO_BALLOON_S_AVAIL, 3)])
    b = r.balloon
    assert b.stats == {"memfree": 1 << 30, "memtot": 2 << 30, "direct_reclaim": 9, "avail": 3}
    assert b.unknown_stats == 1 and b.stats_updated is not None
    assert events[-1] == ("STATS", b.stats)
    assert r.balloon.info().stats_age is not None


def test_stats_buffer_held_and_returned_on_request():
    r = Rig()
    r.driver.start(stats=[(S.VIRTIO_BALLOON_S_MEMFREE, 1)])
    q = r.driver.q["statsq"]
    assert q.used_idx() == 0                        # held, not returned
    assert r.balloon.request_stats()
    assert r.drv.r(Reg.InterruptStatus) & 1
    assert r.driver.answer_stats([(S.VIRTIO_BALLOON_S_MEMFREE, 2), (S.VIRTIO_BALLOON_S_SWAP_IN, 3)])
    assert r.balloon.stats == {"memfree": 2, "swap_in": 3}
    assert not r.driver.answer_stats([])           # nothing returned yet: the device holds it again


def test_short_and_odd_stats_buffers():
    r = Rig()
    r.driver.start(stats=[])
    assert r.balloon.stats == {}
    r.balloon.request_stats()
    r.driver.answer_stats(encode_stats([(S.VIRTIO_BALLOON_S_MINFLT, 42)]) + b"\x01\x02\x03")
    assert r.balloon.stats == {"minflt": 42}
    r.balloon.request_stats()
    r.driver.answer_stats(b"\x04\x00")               # shorter than one entry
    assert r.balloon.stats == {}


def test_legacy_first_stats_buffer_ignored():
    r = Rig(version=1)
    r.driver.start(stats=[(S.VIRTIO_BALLOON_S_MEMFREE, 123)])
    assert r.balloon.stats == {} and r.balloon.stats_updated is None
    r.balloon.request_stats()
    r.driver.answer_stats([(S.VIRTIO_BALLOON_S_MEMFREE, 456)])
    assert r.balloon.stats == {"memfree": 456}


def test_stats_polling_timer_returns_the_buffer_and_stops_on_close():
    r = Rig()
    r.driver.start(stats=[(S.VIRTIO_BALLOON_S_MEMFREE, 1)])
    fired = threading.Event()
    r.irq.set_level = lambda level, _orig=r.irq.set_level: (_orig(level), level and fired.set())
    r.balloon.stats_interval = 0.01
    assert fired.wait(10)
    assert r.driver.q["statsq"].used_idx() == 1
    r.balloon.close()
    assert not r.balloon._stats.polling


def test_stats_interval_zero_means_no_timer():
    r = Rig(options=BalloonOptions(stats_interval=0))
    r.driver.start()
    assert not r.balloon._stats.polling
    r.balloon.stats_interval = 5
    assert r.balloon._stats.polling and r.balloon._stats._timer.daemon
    r.balloon.stats_interval = 0
    assert not r.balloon._stats.polling


# --- options ----------------------------------------------------------------------------------------------

def test_options_parse():
    o = parse_balloon_options("deflate-on-oom=off,stats-interval=2,free-page-reporting=on,must-tell-host=on")
    assert (o.deflate_on_oom, o.stats_interval, o.free_page_reporting, o.must_tell_host) == (False, 2.0, True, True)
    assert parse_balloon_options("") == BalloonOptions()
    d = BalloonOptions()
    assert (d.must_tell_host, d.stats, d.stats_interval, d.deflate_on_oom, d.free_page_reporting) == \
        (True, True, 0, True, False)
    assert d.features() == MTH | STATS_VQ | DEFLATE_ON_OOM


@pytest.mark.parametrize("text", ["bogus=on", "stats=maybe", "stats-interval=-1", "stats-interval=x",
                                  "deflate-on-oom"])
def test_options_parse_errors(text):
    with pytest.raises(ConfigError):
        parse_balloon_options(text)


def test_features_switchable():
    r = Rig(options=BalloonOptions(must_tell_host=False, stats=False, deflate_on_oom=False))
    assert r.drv.device_features() & 0xFF == 0


def test_monitor_thread_and_vcpu_thread_share_the_lock():
    r = Rig(options=BalloonOptions(stats_interval=0.001))
    r.driver.start(stats=[(S.VIRTIO_BALLOON_S_MEMFREE, 1)])
    stop = threading.Event()
    errors = []

    def monitor():
        try:
            while not stop.is_set():
                r.balloon.set_target(8 * MiB)
                info = r.balloon.info()
                assert info.ballooned_pages <= info.ram_size >> 12
        except Exception as e:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(e)

    t = threading.Thread(target=monitor)
    t.start()
    try:
        for i in range(0, 2048, 64):
            r.driver.inflate(list(range(i, i + 64)))
            r.driver.answer_stats([(S.VIRTIO_BALLOON_S_MEMFREE, i)])
    finally:
        stop.set()
        t.join()
        r.close()
    assert errors == []
    assert r.balloon.ballooned_pages == 2048
    assert sum(x.bit_count() for x in r.balloon.pages.bitmap) == 2048


# --- bounded work per notification -------------------------------------------------------------------

def _count_reads(mem, cap):
    """Wrap mem.read to add up the bytes the device copies out of guest RAM; fail past cap at once."""
    real = mem.read
    seen = []

    def read(gpa, length):
        seen.append(length)
        assert sum(seen) <= cap, f"the device read {sum(seen)} bytes of guest RAM"
        return real(gpa, length)

    mem.read = read
    return seen


def test_huge_descriptors_are_read_only_up_to_the_pfn_bound(caplog):
    from pyvmm.virtio.balloon import MAX_PFN_BYTES

    r = Rig(ram=16 * MiB)
    r.driver.start()
    q = r.driver.q["inflateq"]
    data = 1 * MiB
    r.mem.write(data, struct.pack("<1024I", *range(1024, 2048)))   # then zeros: PFN 0 over and over
    for i in range(64):                 # 64 descriptors of 8 MiB each: 512 MiB readable in one chain
        q.write_desc(i, data, 8 * MiB, 1 if i < 63 else 0, i + 1)
    q.push_avail(0)
    seen = _count_reads(r.mem, cap=2 * MiB)
    q.kick()
    assert sum(n for n in seen if n > 16) <= MAX_PFN_BYTES   # 16: descriptors and ring entries
    assert q.used_idx() == 1 and r.balloon.ballooned_pages == 1025
    assert r.balloon.duplicate_pfns == (MAX_PFN_BYTES // 4) - 1025
    assert any("PFNs in one buffer" in x.getMessage() for x in caplog.records)


def test_huge_stats_buffer_is_read_only_up_to_its_bound():
    from pyvmm.virtio.stats import MAX_STATS_BYTES

    r = Rig(ram=16 * MiB)
    r.driver.start(stats=[])
    r.balloon.request_stats()
    q = r.driver.q["statsq"]
    q.reap()
    r.mem.write(MiB, encode_stats([(S.VIRTIO_BALLOON_S_MEMFREE, 77)]))
    q.write_desc(0, MiB, 8 * MiB, 1, 1)
    q.write_desc(1, MiB, 8 * MiB, 0, 0)
    q.push_avail(0)
    seen = _count_reads(r.mem, cap=MiB)
    q.kick()
    assert sum(n for n in seen if n > 16) <= MAX_STATS_BYTES
    assert r.balloon.stats["memfree"] == 77


def test_one_notify_is_served_in_bounded_rounds():
    from pyvmm.virtio.balloon import MAX_CHAINS_PER_CALL

    r = Rig()
    r.driver.start()
    q = r.driver.q["inflateq"]
    per_call = []
    real = r.balloon.process_queue

    def counting(index):
        before = r.dev.queues[index].last_avail
        real(index)
        per_call.append((r.dev.queues[index].last_avail - before) & 0xFFFF)

    r.balloon.process_queue = counting
    for i in range(150):                # 150 buffers of one PFN, one kick
        q.add([struct.pack("<I", 1000 + i)])
    q.kick(force=True)
    assert sum(per_call) == 150 and max(per_call) <= MAX_CHAINS_PER_CALL and len(per_call) >= 3
    assert q.used_idx() == 150 and r.balloon.ballooned_pages == 150


def test_stats_buffer_not_returned_into_a_stopped_queue(rig):
    rig.driver.start(stats=[(S.VIRTIO_BALLOON_S_MEMFREE, 1)])
    q = rig.driver.q["statsq"]
    sq = rig.dev.queues[2]
    used_ring = rig.mem.read(q.used, 6 + 8 * q.size)
    rig.drv.w(Reg.QueueSel, 2)
    rig.drv.w(Reg.QueueReady if rig.dev.version == 2 else Reg.QueuePFN, 0)   # the driver stops statsq
    assert not sq.ready
    assert not rig.balloon.request_stats()
    assert rig.mem.read(q.used, 6 + 8 * q.size) == used_ring and sq.next_used == 0
    assert not rig.drv.r(Reg.InterruptStatus) & 1
