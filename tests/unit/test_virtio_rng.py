"""virtio-rng (device ID 4) on the device API, driven by the Python driver on a bytearray memory."""

from __future__ import annotations

import pytest

from pyvmm.irq import RecordingIrqLine
from pyvmm.memory import GuestMemory
from pyvmm.virtio.abi import Reg, Status
from pyvmm.virtio.mmio import VirtioMmio
from pyvmm.virtio.rng import RngOptions, SplitMix64, VirtioRng
from tests.support.virtio_driver import VirtioDriver


def rig(version: int = 2, options: RngOptions | None = None, clock=None):
    mem = GuestMemory.from_bytearray(8 << 20)
    rng = VirtioRng(options, clock=clock) if clock else VirtioRng(options)
    irq = RecordingIrqLine()
    dev = VirtioMmio(rng, mem, irq, version=version, name="rng0")
    drv = VirtioDriver(dev, mem)
    return rng, dev, drv, irq, mem


def read_buffer(drv, q, length: int) -> tuple[int, bytes]:
    head = q.add(in_lens=[length])
    gpa = q.buffer(q.chains[head][0], length)
    q.kick(force=True)
    used = q.reap()
    assert [h for h, _ in used] == [head]
    n = used[0][1]
    return n, drv.mem.read(gpa, n)


def test_splitmix64_known_values():
    # splitmix64 from seed 0: its first output is the generator's published first value.
    assert SplitMix64(0).next64() == 0xE220A8397B1DCDAF
    a = SplitMix64(1)
    assert a.read(3) + a.read(13) == SplitMix64(1).read(16)


@pytest.mark.parametrize("version", [1, 2])
def test_seeded_bytes_fill_buffers(version):
    rng, dev, drv, irq, mem = rig(version, RngOptions(seed=1))
    assert drv.probe() == 4
    (q,) = drv.init(nqueues=1)
    assert drv.r(Reg.QueueSizeMax) == 64
    expected = SplitMix64(1).read(64 + 100)
    n1, b1 = read_buffer(drv, q, 64)
    n2, b2 = read_buffer(drv, q, 100)
    assert (n1, n2) == (64, 100)
    assert b1 + b2 == expected
    assert irq.raised >= 1 and rng.bytes_served == 164 and rng.buffers_served == 2


def test_urandom_bytes_are_not_constant():
    rng, dev, drv, irq, mem = rig()
    drv.probe()
    (q,) = drv.init(nqueues=1)
    n, data = read_buffer(drv, q, 256)
    assert n == 256 and len(set(data)) > 1


def test_chain_of_several_writable_pieces():
    rng, dev, drv, irq, mem = rig(options=RngOptions(seed=7))
    drv.probe()
    (q,) = drv.init(nqueues=1)
    head = q.add(in_lens=[5, 11])
    d0, d1 = q.chains[head]
    q.kick(force=True)
    assert q.reap() == [(head, 16)]
    expected = SplitMix64(7).read(16)
    assert mem.read(q.buffer(d0, 5), 5) + mem.read(q.buffer(d1, 11), 11) == expected


def test_rate_limit_partial_then_waits_for_the_next_period():
    now = [100.0]
    rng, dev, drv, irq, mem = rig(options=RngOptions(seed=3, max_bytes=40, period_ms=1000), clock=lambda: now[0])
    drv.probe()
    (q,) = drv.init(nqueues=1)
    h1 = q.add(in_lens=[32])
    h2 = q.add(in_lens=[32])
    h3 = q.add(in_lens=[32])
    q.kick(force=True)
    # 40 bytes this period: the first buffer whole, the second 8 bytes, the third waits.
    assert q.reap() == [(h1, 32), (h2, 8)]
    assert rng._timer is not None
    rng._timer.cancel()
    rng._timer = None
    now[0] += 1.0
    rng.serve(0)                     # what the timer does at the period's end
    assert q.reap() == [(h3, 32)]
    rng.close()


def test_readable_buffer_is_a_guest_error_but_served():
    rng, dev, drv, irq, mem = rig(options=RngOptions(seed=1))
    drv.probe()
    (q,) = drv.init(nqueues=1)
    head = q.add(out=[b"xx"], in_lens=[8])
    q.kick(force=True)
    assert q.reap() == [(head, 8)]
    assert dev.guest_errors == 1
    assert not drv.status & Status.DEVICE_NEEDS_RESET


def test_qdev_properties_use_qemus_names():
    assert VirtioRng(RngOptions(seed=2, max_bytes=10, period_ms=5)).qdev_properties() == {
        "max-bytes": 10, "period": 5, "seed": 2}
