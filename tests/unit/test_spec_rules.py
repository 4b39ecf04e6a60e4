"""Spec rules an independent driver found the device breaking, each checked the way the spec states it.

A regression test per rule, driven through the registers by the Python driver on bytearray RAM:
- "Driver notifications" (virtqueues, VIRTIO_F_EVENT_IDX): a driver need not notify again for buffers
  it already made available, so every buffer of one notification must end up used.
- "Device Operation" (balloon): without MUST_TELL_HOST the driver may use a page again before the
  device has acted on its deflate; the device must not lose what the guest wrote there.
- "Free Page Reporting": reports are device-writable buffers, and a device MUST NOT write to a
  device-readable buffer (discarding a page is writing zeros to it).
- "Legacy Interface: Device Initialization": a transitional device must tolerate a driver that uses
  the device before DRIVER_OK; a modern device uses no buffer before DRIVER_OK.
- The balloon's `actual` is one 32-bit field: a 32-bit write of it sets the whole value at once.
"""

from __future__ import annotations

import struct
import threading
import time

import pytest

from pyvmm.virtio import notify
from pyvmm.virtio.abi import BalloonFeature, Reg, Status, TransportFeature
from pyvmm.virtio.balloon import BalloonOptions
from tests.support.virtio_driver import DEFLATE_ON_OOM, PAGE_REPORTING, STATS_VQ, WRITE, Rig

MiB = 1 << 20
EVENT_IDX = int(TransportFeature.VIRTIO_F_EVENT_IDX)


def wait_until(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def test_event_idx_every_buffer_of_one_notification_is_used(monkeypatch):
    """More buffers than the bounded rounds of one notification take: with EVENT_IDX the driver does not
    notify again for them (its avail_event rule), so the device must go on until the ring is drained."""
    monkeypatch.setattr(notify, "MAX_NOTIFY_ROUNDS", 2)        # 2 rounds x 64 chains per notification
    r = Rig(ram=16 * MiB)
    features = r.driver.start(accept=0)
    assert features & EVENT_IDX
    q = r.driver.q["inflateq"]
    n = 2 * 64 + 3                                           # more than the rounds take at once
    buf = q.buffer(0, 4)
    r.mem.write(buf, struct.pack("<I", 0x300))
    for i in range(n):
        q.write_desc(i, buf, 4)
        q.push_avail(i)
    assert q.kick()                                          # the one notification the driver makes
    assert wait_until(lambda: q.used_idx() == n), f"{q.used_idx()} of {n} buffers used"
    # The driver's own rule says it owes no further notification for these buffers.
    avail_event = r.mem.read_u16(q.used + 4 + 8 * q.size)
    assert not ((n - avail_event - 1) & 0xFFFF) < ((n - n) & 0xFFFF)
    r.close()


def test_without_must_tell_host_a_page_reused_before_its_deflate_is_seen_keeps_its_data():
    """8 KiB host pages, MUST_TELL_HOST not negotiated: PFN 600 was inflated and acked; the guest deflates
    it and writes to it before the device has looked at the deflate queue, then inflates PFN 601 of the
    same host page.  The host page must not be discarded: page 600 is in use again."""
    r = Rig(ram=16 * MiB, host_page_size=8192)
    features = r.driver.start(accept=STATS_VQ | DEFLATE_ON_OOM)      # no MUST_TELL_HOST
    assert not features & BalloonFeature.VIRTIO_BALLOON_F_MUST_TELL_HOST
    r.driver.inflate([600])
    dq = r.driver.q["deflateq"]
    dq.add([struct.pack("<I", 600)])                         # deflate posted, its kick not yet seen
    r.mem.write(600 << 12, b"guest data in 600")
    r.driver.inflate([601])
    assert r.mem.read(600 << 12, 17) == b"guest data in 600"
    assert r.discards == []
    dq.kick()
    assert wait_until(lambda: dq.used_idx() == 1)
    assert r.balloon.is_ballooned(601) and not r.balloon.is_ballooned(600)
    r.close()


def test_free_page_reporting_never_discards_a_device_readable_buffer(caplog):
    """A report whose chain has a device-readable buffer: the device leaves that memory alone (a guest
    error) and discards only the device-writable part."""
    r = Rig(ram=16 * MiB, options=BalloonOptions(free_page_reporting=True))
    r.driver.start(accept=PAGE_REPORTING | STATS_VQ)
    q = r.driver.q["reporting_vq"]
    readable, writable = 4 * MiB, 6 * MiB
    r.mem.write(readable, b"\xa5" * 4096)
    r.mem.write(writable, b"\x5a" * 4096)
    a, b = q.free.pop(), q.free.pop()
    q.write_desc(a, readable, 1 * MiB, 1, b)                 # NEXT, device-readable
    q.write_desc(b, writable, 1 * MiB, WRITE)
    q.chains[a] = [a, b]
    with caplog.at_level("WARNING", logger="pyvmm.guest"):
        q.push_avail(a)
        q.kick()
        assert wait_until(lambda: q.used_idx() == 1)
    assert r.mem.read(readable, 4096) == b"\xa5" * 4096
    assert r.mem.read(writable, 4096) == bytes(4096)
    assert r.discards == [(writable, 1 * MiB)] and r.balloon.reported_bytes == 1 * MiB
    assert "device-readable" in caplog.text
    r.close()


def _early_inflate(version: int) -> tuple[Rig, object]:
    """The driver sets up its queues and inflates a page before it sets DRIVER_OK."""
    r = Rig(version=version, ram=16 * MiB)
    drv = r.drv
    drv.probe()
    drv.reset()
    drv.negotiate(accept=STATS_VQ)
    q = drv.setup_queue(0)
    drv.setup_queue(1)
    drv.setup_queue(2)
    r.mem.write(0x300 << 12, b"\xee" * 4096)
    q.add([struct.pack("<I", 0x300)])
    q.kick(force=True)
    return r, q


def test_legacy_device_serves_a_driver_that_uses_it_before_driver_ok():
    r, q = _early_inflate(1)
    assert not r.dev.status & Status.DRIVER_OK
    assert q.used_idx() == 1 and r.balloon.is_ballooned(0x300)
    assert r.mem.read(0x300 << 12, 4096) == bytes(4096)
    r.drv.driver_ok()
    assert q.used_idx() == 1 and r.balloon.ballooned_pages == 1     # not served twice
    r.close()


def test_modern_device_uses_no_buffer_before_driver_ok_and_serves_it_then():
    r, q = _early_inflate(2)
    assert q.used_idx() == 0 and not r.balloon.is_ballooned(0x300)
    r.drv.driver_ok()
    assert wait_until(lambda: q.used_idx() == 1) and r.balloon.is_ballooned(0x300)
    r.close()


@pytest.mark.parametrize("narrow_offset", [0x104, 0x105, 0x106, 0x107])
def test_a_32_bit_write_of_actual_sets_all_of_it_after_a_narrow_one(narrow_offset):
    r = Rig(ram=16 * MiB)
    r.driver.start()
    r.dev.write(narrow_offset, 1, 1)                     # a (forbidden) narrow write, byte left pending
    r.dev.write(0x104, 4, 16)
    assert r.balloon.actual == 16 and r.balloon.info().actual == 16 * MiB - 16 * 4096
    assert r.dev.read(Reg.Config + 4, 4) == 16
    r.close()


def test_notifications_race_the_continuation_without_losing_buffers(monkeypatch):
    """Notifications from another thread while the device works through a long ring: all used, once."""
    monkeypatch.setattr(notify, "MAX_NOTIFY_ROUNDS", 1)
    r = Rig(ram=16 * MiB)
    r.driver.start(accept=0)
    q = r.driver.q["inflateq"]
    buf = q.buffer(0, 4)
    r.mem.write(buf, struct.pack("<I", 0x400))
    for i in range(200):
        q.write_desc(i, buf, 4)
        q.push_avail(i)
    kickers = [threading.Thread(target=q.kick, kwargs={"force": True}) for _ in range(4)]
    for t in kickers:
        t.start()
    for t in kickers:
        t.join()
    assert wait_until(lambda: q.used_idx() == 200)
    time.sleep(0.05)
    assert q.used_idx() == 200 and r.dev.guest_errors >= 199      # 199 duplicates of PFN 0x400
    r.close()
