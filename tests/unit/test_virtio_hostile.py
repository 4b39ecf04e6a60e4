"""Property tests of a hostile driver: random register writes and ring contents never raise out of the
device model, never reach memory outside guest RAM, and leave the device working or needing a reset."""


from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.virtio.abi import Reg, Status
from pyvmm.virtio.balloon import BalloonOptions
from tests.fuzz.harness import ARENA, RAM, Machine
from tests.support.virtio_driver import BalloonDriver

offsets = st.one_of(st.sampled_from([int(r) for r in Reg]), st.integers(0, 0x20F))
accesses = st.lists(st.tuples(offsets, st.sampled_from([1, 2, 4, 8]), st.integers(0, 2**32 - 1)), max_size=60)
descs = st.lists(st.tuples(st.integers(0, 255), st.one_of(st.integers(0, RAM + 0x4000), st.integers(0, 2**64 - 1)),
                           st.integers(0, 2**32 - 1), st.integers(0, 7), st.integers(0, 300)), max_size=12)
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def usable_after_reset(m: Machine) -> None:
    good = BalloonDriver(m.dev, m.mem, arena=ARENA)
    good.start(accept=0)
    assert m.balloon.ballooned_pages == 0          # a reset gives every page back to the guest
    good.inflate([5])
    assert m.balloon.ballooned_pages == 1 and m.balloon.is_ballooned(5)
    assert good.drv.status == Status.ACKNOWLEDGE | Status.DRIVER | Status.DRIVER_OK | (
        Status.FEATURES_OK if m.dev.version == 2 else 0)


@SETTINGS
@given(version=st.sampled_from([1, 2]), writes=accesses)
def test_random_register_writes(version, writes):
    m = Machine(version, BalloonOptions(free_page_reporting=True))
    for off, size, value in writes:
        m.dev.write(off, size, value)
        m.dev.read(off, size)
        m.check_invariants()
    usable_after_reset(m)


@SETTINGS
@given(version=st.sampled_from([1, 2]), which=st.integers(0, 3), ring=descs,
       heads=st.lists(st.integers(0, 300), max_size=6), jump=st.one_of(st.none(), st.integers(0, 0xFFFF)))
def test_random_ring_contents(version, which, ring, heads, jump):
    m = Machine(version, BalloonOptions(free_page_reporting=True))
    drv = BalloonDriver(m.dev, m.mem, arena=ARENA)
    drv.start(stats=[(4, 1)])
    q = list(drv.q.values())[which % len(drv.q)]
    for i, addr, length, flags, nxt in ring:
        q.write_desc(i % q.size, addr, length, flags, nxt)
    for h in heads:
        q.push_avail(h)
    if jump is not None:
        q.set_avail_idx(jump)
    m.dev.write(Reg.QueueNotify, 4, q.index)
    m.check_invariants()
    status = m.dev.read(Reg.Status, 4)
    # Either the device still works (it consumed what it could) or it asks for a reset.
    assert status & Status.DRIVER_OK
    if not status & Status.DEVICE_NEEDS_RESET:
        drv.inflate([7])
        assert m.balloon.is_ballooned(7)
    else:
        assert m.dev.read(Reg.InterruptStatus, 4) & 2
    usable_after_reset(m)
