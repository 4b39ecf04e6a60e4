"""Split virtqueues: chains, indirect tables, ring wrap, notification suppression, and hostile rings."""

import pytest

from pyvmm.memory import GuestMemory
from pyvmm.virtio.abi import Reg, Status
from pyvmm.virtio.queue import SplitQueue, VirtqueueError
from tests.support.virtio_driver import INDIRECT, NEXT, WRITE, Rig, VirtioDriver

RAM = 1 << 20


class _FakeDev:
    """Enough of a device for VirtioDriver to build rings without a transport."""

    def __init__(self):
        self.notified = []

    def write(self, offset, size, value):
        if offset == Reg.QueueNotify:
            self.notified.append(value)


def make_queue(size=8, event_idx=False, indirect=True):
    mem = GuestMemory.from_bytearray(RAM)
    drv = VirtioDriver(_FakeDev(), mem)
    drv.features = (1 << 29) if event_idx else 0
    from tests.support.virtio_driver import DriverQueue
    desc = drv.arena.alloc(16 * size, 16)
    avail = drv.arena.alloc(6 + 2 * size, 2)
    used = drv.arena.alloc(6 + 8 * size, 4)
    dq = DriverQueue(drv, 0, size, desc, avail, used)
    q = SplitQueue(mem, 0, 256)
    q.size, q.desc, q.avail, q.used = size, desc, avail, used
    assert q.check_layout() is None
    q.enable(event_idx, indirect)
    return mem, dq, q


def test_chain_with_readable_and_writable_parts():
    mem, dq, q = make_queue()
    head = dq.add([b"abc", b"defg"], [16, 8])
    chain = q.pop()
    assert chain.head == head
    assert [ln for _, ln in chain.readable] == [3, 4] and [ln for _, ln in chain.writable] == [16, 8]
    assert chain.read_all(mem) == b"abcdefg"
    assert q.pop() is None


def test_read_prefix_reads_no_more_than_its_limit():
    mem, dq, q = make_queue()
    dq.add([b"abc", b"defg", b"hij"], [16])
    chain = q.pop()
    assert chain.read_prefix(mem, 5) == b"abcde"
    assert chain.read_prefix(mem, 3) == b"abc"
    assert chain.read_prefix(mem, 100) == b"abcdefghij" == chain.read_all(mem)
    assert chain.read_prefix(mem, 0) == b""
    # A descriptor whose length is huge is cut to the limit before anything is copied.
    big = type(chain)(chain.head, [(0, RAM)], [])
    lengths = []
    real = mem.read
    mem.read = lambda gpa, n: lengths.append(n) or real(gpa, n)
    assert len(big.read_prefix(mem, 64)) == 64 and lengths == [64]


def test_indirect_chain():
    mem, dq, q = make_queue()
    dq.add([b"xy"], [32], indirect=True)
    chain = q.pop()
    assert chain.read_all(mem) == b"xy" and chain.writable_len == 32


def test_used_ring_and_wrap_around():
    mem, dq, q = make_queue(size=4)
    seen = []
    for i in range(70000 // 1000):   # enough round trips to wrap the ring many times
        for _ in range(3):
            dq.add([bytes([i & 0xFF])])
        while (c := q.pop()) is not None:
            seen.append(c.read_all(mem)[0])
            q.add_used(c.head, 5)
        assert [ln for _, ln in dq.reap()] == [5, 5, 5]
    assert len(seen) == 210 and q.last_avail == 210 and q.next_used == 210


def test_16_bit_index_wrap():
    mem, dq, q = make_queue(size=4)
    start = 0xFFFE
    q.last_avail = q.next_used = start
    dq.avail_idx = dq.last_used = start
    mem.write_u16(dq.used + 2, start)
    for _ in range(4):
        dq.add([b"z"])
        c = q.pop()
        q.add_used(c.head, 1)
        assert len(dq.reap()) == 1
    assert q.last_avail == 2 and dq.used_idx() == 2


def test_no_interrupt_flag_suppresses_notification():
    _mem, dq, q = make_queue()
    dq.add([b"a"])
    q.add_used(q.pop().head, 0)
    assert q.should_notify()
    dq.no_interrupt(True)
    dq.add([b"b"])
    q.add_used(q.pop().head, 0)
    assert not q.should_notify()


def test_event_idx_suppression():
    _mem, dq, q = make_queue(size=8, event_idx=True)
    for _ in range(4):
        dq.add([b"a"])
    dq.set_used_event(2)       # the driver wants an interrupt once the 3rd buffer is used
    assert q.pop() is not None
    q.add_used(0, 0)
    assert q.should_notify()   # the first check always notifies (nothing signalled before)
    c = q.pop()
    q.add_used(c.head, 0)      # used idx 2: used_event 2 not yet passed
    assert not q.should_notify()
    c = q.pop()
    q.add_used(c.head, 0)      # used idx 3: crossed used_event
    assert q.should_notify()
    c = q.pop()
    q.add_used(c.head, 0)
    assert not q.should_notify()


def test_event_idx_device_publishes_avail_event():
    mem, dq, q = make_queue(size=8, event_idx=True)
    dq.add([b"a"])
    dq.add([b"b"])
    while q.pop() is not None:
        pass
    assert mem.read_u16(dq.used + 4 + 8 * 8) == 2    # avail_event = next index the device wants


def test_no_notify_flag():
    _mem, dq, q = make_queue()
    q.set_no_notify(True)
    dq.add([b"a"])
    assert not dq.kick()
    q.set_no_notify(False)
    assert dq.kick()


# --- hostile rings ---------------------------------------------------------------------------------------

def test_descriptor_loop_is_an_error():
    _mem, dq, q = make_queue()
    dq.write_desc(0, 0x1000, 4, NEXT, 1)
    dq.write_desc(1, 0x1000, 4, NEXT, 0)
    dq.push_avail(0)
    with pytest.raises(VirtqueueError, match="longer than the queue"):
        q.pop()


def test_chain_longer_than_queue_via_indirect():
    _mem, dq, q = make_queue(size=4)
    table = 0x2000
    for k in range(8):
        dq.write_desc(k, 0x1000, 4, NEXT if k < 7 else 0, k + 1, table=table)
    dq.write_desc(0, table, 16 * 8, INDIRECT)
    dq.push_avail(0)
    with pytest.raises(VirtqueueError, match="longer than the queue"):
        q.pop()


def test_nested_indirect_is_an_error():
    _mem, dq, q = make_queue()
    dq.write_desc(0, 0x3000, 16, INDIRECT, table=0x2000)
    dq.write_desc(0, 0x2000, 16, INDIRECT)
    dq.push_avail(0)
    with pytest.raises(VirtqueueError, match="inside an indirect"):
        q.pop()


def test_indirect_without_feature_is_an_error():
    _mem, dq, q = make_queue(indirect=False)
    dq.add([b"a"], indirect=True)
    with pytest.raises(VirtqueueError, match="without VIRTIO_F_INDIRECT_DESC"):
        q.pop()


@pytest.mark.parametrize("addr, length", [(RAM - 2, 4), (RAM, 1), (0xFFFF_FFFF_FFFF_F000, 0x2000), (0, 0xFFFF_FFFF)])
def test_buffer_outside_ram_is_an_error(addr, length):
    _mem, dq, q = make_queue()
    dq.write_desc(0, addr, length, 0)
    dq.push_avail(0)
    with pytest.raises(VirtqueueError, match="outside guest RAM"):
        q.pop()


def test_indirect_table_outside_ram_or_misshapen():
    _mem, dq, q = make_queue()
    dq.write_desc(0, RAM - 16, 32, INDIRECT)
    dq.write_desc(1, 0x1000, 24, INDIRECT)
    dq.push_avail(0)
    dq.push_avail(1)
    with pytest.raises(VirtqueueError, match="outside guest RAM"):
        q.pop()
    q.last_avail = 1
    with pytest.raises(VirtqueueError, match="multiple of 16"):
        q.pop()


def test_head_index_beyond_queue_and_next_beyond_table():
    _mem, dq, q = make_queue(size=8)
    dq.push_avail(9)
    with pytest.raises(VirtqueueError, match="head descriptor index 9"):
        q.pop()
    _mem2, dq2, q2 = make_queue(size=8)
    dq2.write_desc(0, 0x1000, 4, NEXT, 200)
    dq2.push_avail(0)
    with pytest.raises(VirtqueueError, match="next 200"):
        q2.pop()


def test_avail_idx_jumping_past_queue_size():
    _mem, dq, q = make_queue(size=8)
    dq.set_avail_idx(9)
    with pytest.raises(VirtqueueError, match="more than queue size"):
        q.pop()


def test_readable_after_writable_is_an_error():
    _mem, dq, q = make_queue()
    dq.write_desc(0, 0x1000, 4, WRITE | NEXT, 1)
    dq.write_desc(1, 0x1000, 4, 0)
    dq.push_avail(0)
    with pytest.raises(VirtqueueError, match="after a device-writable"):
        q.pop()


def test_ring_error_through_the_transport_sets_needs_reset_not_an_exception(caplog):
    rig = Rig(version=2)
    rig.driver.start(accept=0)
    q = rig.driver.q["inflateq"]
    q.write_desc(0, 0x1000, 4, NEXT, 0)   # a one-descriptor loop
    q.push_avail(0)
    q.kick()
    status = rig.drv.status
    assert status & Status.DEVICE_NEEDS_RESET
    assert rig.drv.r(Reg.InterruptStatus) & 2    # config change tells the driver
    assert any("inflateq" in r.getMessage() and "loops" in r.getMessage() for r in caplog.records)
    # Nothing more is consumed until a reset.
    q.add([b"\x01\0\0\0"])
    q.kick()
    assert q.used_idx() == 0
