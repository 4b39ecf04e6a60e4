"""The virtio-mmio transport register by register: values, the status table, bad accesses, interrupts."""

import logging

import pytest

from pyvmm.virtio.abi import VIRTIO_MMIO_MAGIC_VALUE, InterruptBit, Reg, Status
from pyvmm.virtio.legacy import LEGACY
from pyvmm.virtio.mmio import VirtioMmio
from pyvmm.virtio.registers import MODERN
from tests.support.virtio_driver import VERSION_1, Rig

A, D, FOK, DOK = Status.ACKNOWLEDGE, Status.DRIVER, Status.FEATURES_OK, Status.DRIVER_OK
NEEDS_RESET, FAILED = Status.DEVICE_NEEDS_RESET, Status.FAILED


@pytest.fixture(params=[2, 1], ids=["v2", "v1"])
def rig(request):
    r = Rig(version=request.param)
    yield r
    r.close()


@pytest.fixture
def v2():
    r = Rig(version=2)
    yield r
    r.close()


def guest_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "pyvmm.guest"]


def test_constants():
    assert VirtioMmio.QUEUE_NOTIFY_OFFSET == 0x50
    assert VirtioMmio.WINDOW_SIZE == 0x200


def test_identity_registers(rig):
    d = rig.drv
    assert d.r(Reg.MagicValue) == VIRTIO_MMIO_MAGIC_VALUE
    assert d.r(Reg.Version) == rig.dev.version
    assert d.r(Reg.DeviceID) == 5
    assert d.r(Reg.VendorID) == int.from_bytes(b"pyvm", "little")


def test_device_features_windows(rig):
    d = rig.drv
    feats = d.device_features()
    assert feats & 0x7 == 0x7  # MUST_TELL_HOST, STATS_VQ, DEFLATE_ON_OOM by default
    assert bool(feats & VERSION_1) == (rig.dev.version == 2)
    d.w(Reg.DeviceFeaturesSel, 2)
    assert d.r(Reg.DeviceFeatures) == 0
    d.w(Reg.DeviceFeaturesSel, 0xFFFF_FFFF)
    assert d.r(Reg.DeviceFeatures) == 0


def test_shm_registers_say_no_region(v2):
    d = v2.drv
    d.w(Reg.SHMSel, 0)
    for reg in (Reg.SHMLenLow, Reg.SHMLenHigh, Reg.SHMBaseLow, Reg.SHMBaseHigh):
        assert d.r(reg) == 0xFFFF_FFFF


def test_config_generation_changes_on_config_change(v2):
    d = v2.drv
    g0 = d.r(Reg.ConfigGeneration)
    v2.balloon.set_target(8 << 20)
    assert d.r(Reg.ConfigGeneration) != g0


def test_full_handshake_v2_and_v1(rig):
    rig.driver.start()
    assert rig.drv.status == A | D | DOK | (FOK if rig.dev.version == 2 else 0)
    assert rig.dev.live


def test_queue_registers_v2(v2):
    d = v2.drv
    d.probe()
    d.reset()
    d.negotiate()
    d.w(Reg.QueueSel, 0)
    assert d.r(Reg.QueueSizeMax) == 256
    assert d.r(Reg.QueueReady) == 0
    q = d.setup_queue(0, size=16)
    dq = v2.dev.queues[0]
    assert (dq.size, dq.desc, dq.avail, dq.used, dq.ready) == (16, q.desc, q.avail, q.used, True)
    assert d.r(Reg.QueueReady) == 1
    d.w(Reg.QueueSel, 7)
    assert d.r(Reg.QueueSizeMax) == 0  # no such queue
    d.w(Reg.QueueSel, 2)
    assert d.r(Reg.QueueSizeMax) == 256  # statsq exists: STATS_VQ was accepted
    d.w(Reg.QueueSel, 0)
    d.w(Reg.QueueReady, 0)
    assert d.r(Reg.QueueReady) == 0


def test_queue_count_follows_accepted_features(v2):
    d = v2.drv
    d.probe()
    d.reset()
    d.negotiate(accept=0)  # neither stats nor reporting
    d.w(Reg.QueueSel, 2)
    assert d.r(Reg.QueueSizeMax) == 0


def test_queue_size_checks(v2, caplog):
    d = v2.drv
    d.probe()
    d.reset()
    d.negotiate()
    d.w(Reg.QueueSel, 0)
    d.w(Reg.QueueSize, 512)
    d.w(Reg.QueueSize, 100)
    d.w(Reg.QueueSize, 0)
    lines = guest_lines(caplog)
    assert any("QueueSize 512 > QueueSizeMax 256" in x for x in lines)
    assert any("QueueSize 100 is not a power of 2" in x for x in lines)
    assert v2.dev.queues[0].size == 256


def test_queue_ready_with_ring_outside_ram_needs_reset(v2, caplog):
    d = v2.drv
    d.probe()
    d.reset()
    d.negotiate()
    d.w(Reg.QueueSel, 0)
    d.w(Reg.QueueDescLow, 0xFFFF_0000)
    d.w(Reg.QueueReady, 1)
    assert d.r(Reg.QueueReady) == 0
    assert d.status & NEEDS_RESET
    assert any("outside guest RAM" in x for x in guest_lines(caplog))
    d.reset()
    assert d.status == 0


def test_queue_registers_refused_after_driver_ok(v2, caplog):
    v2.driver.start()
    d = v2.drv
    d.w(Reg.QueueSel, 0)
    d.w(Reg.QueueSize, 16)
    assert v2.dev.queues[0].size == 256
    assert any("QueueSize written after DRIVER_OK" in x for x in guest_lines(caplog))


def test_queue_address_refused_while_ready(v2, caplog):
    d = v2.drv
    d.probe()
    d.reset()
    d.negotiate()
    d.setup_queue(0)
    d.w(Reg.QueueSel, 0)
    d.w(Reg.QueueDescLow, 0x1000)
    assert v2.dev.queues[0].desc != 0x1000
    assert any("QueueDescLow written while inflateq is enabled" in x for x in guest_lines(caplog))


@pytest.mark.parametrize("reg", [Reg.QueueSel, Reg.QueueNotify, Reg.InterruptACK, Reg.DriverFeatures,
                                 Reg.QueueDescLow, Reg.SHMSel])
def test_read_of_write_only_register_is_logged(v2, caplog, reg):
    assert v2.drv.r(reg) == 0
    assert any(f"read of write-only register {reg.name}" in x for x in guest_lines(caplog))


@pytest.mark.parametrize("reg", [Reg.MagicValue, Reg.Version, Reg.DeviceID, Reg.DeviceFeatures,
                                 Reg.QueueSizeMax, Reg.InterruptStatus, Reg.ConfigGeneration, Reg.SHMLenLow])
def test_write_of_read_only_register_is_logged(v2, caplog, reg):
    v2.drv.w(reg, 1)
    assert v2.drv.r(Reg.MagicValue) == VIRTIO_MMIO_MAGIC_VALUE
    assert any(f"write of read-only register {reg.name}" in x for x in guest_lines(caplog))


def test_wrong_width_and_unaligned(v2, caplog):
    assert v2.dev.read(Reg.Status, 2) == 0
    v2.dev.write(Reg.Status + 1, 4, 1)
    v2.dev.write(Reg.QueueSel, 1, 1)
    lines = guest_lines(caplog)
    assert any("2-byte read of Status" in x for x in lines)
    assert any("unaligned write at 0x71 (Status)" in x for x in lines)
    assert any("1-byte write of QueueSel" in x for x in lines)
    assert v2.drv.status == 0


def test_legacy_registers_absent_in_v2_and_v2_absent_in_legacy(caplog):
    r2, r1 = Rig(version=2), Rig(version=1)
    r2.drv.w(Reg.GuestPageSize, 4096)
    assert r1.drv.r(Reg.QueueReady) == 0
    assert r1.drv.r(Reg.ConfigGeneration) == 0
    lines = guest_lines(caplog)
    assert any("GuestPageSize, which is not a version 2 register" in x for x in lines)
    assert any("QueueReady, which is not a version 1 register" in x for x in lines)


def test_offsets_outside_window_are_guest_errors(v2, caplog):
    assert v2.dev.read(0x200, 4) == 0
    v2.dev.write(0x1FC, 8, 0)
    assert len(guest_lines(caplog)) == 2


# --- the status table -----------------------------------------------------------------------------------

def test_transition_tables():
    assert (0, A) in MODERN.transitions and (A | D, A | D | FOK) in MODERN.transitions
    assert (A | D, A | D | DOK) not in MODERN.transitions
    assert (A | D, A | D | DOK) in LEGACY.transitions
    assert all(not new & FOK for _, new in LEGACY.transitions)


@pytest.mark.parametrize("sequence, final", [
    ([A, A | D, A | D | FOK, A | D | FOK | DOK], A | D | FOK | DOK),
    ([D], 0),                               # skipping ACKNOWLEDGE
    ([A, A | D | FOK], A),                  # skipping DRIVER
    ([A, A | D, A | D | DOK], A | D),       # DRIVER_OK without FEATURES_OK (v2)
    ([A, A | D, A], A | D),                 # clearing a bit
    ([A, A | D, A | D | FAILED], A | D | FAILED),
    ([A, A | D | FAILED, A | D | FAILED | FOK], A | FAILED),  # FAILED is ORed in; then only reset
    ([A, Status.SUSPEND | A], A),
])
def test_status_sequences_v2(v2, sequence, final):
    v2.drv.w(Reg.DriverFeaturesSel, 1)
    for value in sequence:
        if value == A | D:
            v2.drv.w(Reg.Status, value)
            v2.drv.w(Reg.DriverFeaturesSel, 1)
            v2.drv.w(Reg.DriverFeatures, 1)   # VERSION_1
            continue
        v2.drv.w(Reg.Status, value)
    assert v2.drv.status == final


def test_features_ok_refused_for_unoffered_bits(v2, caplog):
    d = v2.drv
    d.w(Reg.Status, A)
    d.w(Reg.Status, A | D)
    d.w(Reg.DriverFeaturesSel, 1)
    d.w(Reg.DriverFeatures, 1 | 0x100)  # VERSION_1 and bit 40 (RING_RESET, never offered)
    d.w(Reg.Status, A | D | FOK)
    assert not d.status & FOK
    assert any("never offered" in x for x in guest_lines(caplog))


def test_features_ok_refused_without_version_1(v2):
    d = v2.drv
    d.w(Reg.Status, A)
    d.w(Reg.Status, A | D)
    d.w(Reg.DriverFeatures, 1)
    d.w(Reg.Status, A | D | FOK)
    assert not d.status & FOK


def test_features_only_in_driver_state(v2, caplog):
    d = v2.drv
    d.w(Reg.DriverFeatures, 1)           # status 0
    assert v2.dev.driver_features == 0
    v2.driver.start(accept=0)
    accepted = v2.dev.driver_features
    d.w(Reg.DriverFeatures, 0x7)
    assert v2.dev.driver_features == accepted and not accepted & 0x7
    assert sum("not in the DRIVER state" in x for x in guest_lines(caplog)) == 2


def test_status_write_back_with_needs_reset_is_not_a_transition(v2):
    v2.driver.start()
    v2.dev.guest_error("test", fatal=True)
    s = v2.drv.status
    assert s & NEEDS_RESET and s & DOK
    v2.drv.w(Reg.Status, s)    # a driver ORing in nothing and writing back what it read
    assert v2.drv.status == s


def test_needs_reset_with_driver_ok_raises_config_interrupt(v2):
    v2.driver.start()
    v2.drv.ack_interrupt()
    v2.dev.guest_error("test", fatal=True)
    assert v2.drv.r(Reg.InterruptStatus) == InterruptBit.CONFIG_CHANGE
    assert v2.irq.level


def test_needs_reset_before_driver_ok_raises_nothing(v2):
    v2.dev.guest_error("test", fatal=True)
    assert v2.drv.status & NEEDS_RESET
    assert v2.drv.r(Reg.InterruptStatus) == 0 and not v2.irq.level


def test_reset_clears_interrupts_and_queues(rig):
    rig.driver.start()
    rig.balloon.set_target(8 << 20)
    assert rig.irq.level
    rig.drv.w(Reg.Status, 0)
    assert rig.drv.r(Reg.InterruptStatus) == 0 and not rig.irq.level
    assert not any(q.ready for q in rig.dev.queues)
    rig.drv.w(Reg.QueueSel, 0)
    if rig.dev.version == 1:
        assert rig.drv.r(Reg.QueuePFN) == 0
    else:
        assert rig.drv.r(Reg.QueueReady) == 0


def test_device_usable_after_reset(rig):
    rig.driver.start()
    rig.dev.guest_error("boom", fatal=True)
    rig.driver.q.clear()
    rig.driver.start()
    rig.driver.inflate([10, 11])
    assert rig.balloon.ballooned_pages == 2


# --- legacy specifics -----------------------------------------------------------------------------------

def test_legacy_queue_pfn_layout_and_readback():
    r = Rig(version=1)
    d = r.drv
    d.probe()
    d.reset()
    d.negotiate()
    q = d.setup_queue(0, size=64)
    dq = r.dev.queues[0]
    assert (dq.desc, dq.avail, dq.used) == (q.desc, q.avail, q.used)
    assert dq.used == (q.avail + 6 + 2 * 64 + 4095) & ~4095
    d.w(Reg.QueueSel, 0)
    assert d.r(Reg.QueuePFN) == q.desc >> 12
    d.w(Reg.QueuePFN, 0)
    assert d.r(Reg.QueuePFN) == 0 and not dq.ready


def test_legacy_guest_page_size_scales_pfn_and_survives_reset():
    r = Rig(version=1)
    d = r.drv
    d.w(Reg.GuestPageSize, 0x10000)
    d.reset()
    d.negotiate()
    d.w(Reg.QueueSel, 0)
    d.w(Reg.QueueSize, 16)
    d.w(Reg.QueuePFN, 0x80)
    assert r.dev.queues[0].desc == 0x80 * 0x10000


def test_legacy_status_zero_clears_queue_pfn():
    r = Rig(version=1)
    r.driver.start()
    r.drv.w(Reg.Status, 0)
    for i in range(3):
        r.drv.w(Reg.QueueSel, i)
        assert r.drv.r(Reg.QueuePFN) == 0


def test_legacy_queue_align_must_be_power_of_two(caplog):
    r = Rig(version=1)
    r.drv.probe()
    r.drv.reset()
    r.drv.negotiate()
    r.drv.w(Reg.QueueSel, 0)
    r.drv.w(Reg.QueueAlign, 3000)
    assert any("QueueAlign 3000 is not a power of 2" in x for x in guest_lines(caplog))


# --- notifications and interrupts --------------------------------------------------------------------------

def test_no_buffer_consumed_before_driver_ok_then_served(v2):
    d = v2.drv
    d.probe()
    d.reset()
    d.negotiate()
    q = d.setup_queue(0)
    d.setup_queue(1)
    q.add([(5).to_bytes(4, "little")])
    q.kick()
    assert q.used_idx() == 0 and v2.balloon.ballooned_pages == 0 and not v2.irq.level
    d.driver_ok()
    assert q.used_idx() == 1 and v2.balloon.ballooned_pages == 1 and v2.irq.level


def test_interrupt_level_follows_status_and_is_reasserted(v2):
    v2.driver.start(accept=0, accept_transport=VERSION_1)   # no event idx: every used buffer interrupts
    q = v2.driver.q["inflateq"]
    q.add([(5).to_bytes(4, "little")])
    q.kick()
    q.add([(6).to_bytes(4, "little")])
    q.kick()
    # set_level(True) on each event even though the line was already high.
    assert v2.irq.history[-2:] == [True, True]
    assert v2.drv.r(Reg.InterruptStatus) == InterruptBit.USED_BUFFER
    v2.drv.w(Reg.InterruptACK, InterruptBit.USED_BUFFER)
    assert v2.irq.level is False and v2.drv.r(Reg.InterruptStatus) == 0


def test_partial_ack_keeps_line_high(v2):
    v2.driver.start(accept=0)
    v2.balloon.set_target(1 << 20)
    q = v2.driver.q["inflateq"]
    q.add([(5).to_bytes(4, "little")])
    q.kick()
    assert v2.drv.r(Reg.InterruptStatus) == 3
    v2.drv.w(Reg.InterruptACK, 1)
    assert v2.irq.level and v2.drv.r(Reg.InterruptStatus) == 2
    v2.drv.w(Reg.InterruptACK, 2)
    assert not v2.irq.level


def test_queue_notify_entry_point_matches_register(v2):
    v2.driver.start(accept=0)
    q = v2.driver.q["inflateq"]
    q.add([(5).to_bytes(4, "little")])
    v2.dev.queue_notify(0)
    assert q.used_idx() == 1


def test_notify_of_unknown_queue_is_logged(v2, caplog):
    v2.driver.start(accept=0)
    v2.drv.w(Reg.QueueNotify, 9)
    assert any("QueueNotify <- 9" in x for x in guest_lines(caplog))
    assert not v2.drv.status & NEEDS_RESET


def test_guest_errors_are_rate_limited(v2, caplog):
    caplog.set_level(logging.WARNING, logger="pyvmm.guest")
    for _ in range(200):
        v2.drv.r(Reg.QueueSel)
    assert len(guest_lines(caplog)) <= 12
    assert v2.dev.guest_errors == 200


def test_config_space_access(v2, caplog):
    v2.driver.start()
    v2.balloon.set_target(15 << 20)
    assert v2.dev.read(0x100, 4) == 256
    assert v2.dev.read(0x100, 2) == 256      # served, but logged as the wrong width in v2
    assert any("2-byte config read of num_pages" in x for x in guest_lines(caplog))
    assert v2.dev.read(0x101, 2) == 0        # unaligned: refused
    assert v2.dev.read(0x1FC, 4) == 0        # beyond the balloon's fields: zero


def test_legacy_driver_cannot_accept_features_never_offered(caplog):
    from tests.support.virtio_driver import PAGE_REPORTING, STATS_VQ

    r = Rig(version=1)            # PAGE_REPORTING is off by default; legacy never offers VERSION_1
    d = r.drv
    d.probe()
    d.reset()
    d.add_status(A)
    d.add_status(D)
    assert not d.device_features() & (PAGE_REPORTING | VERSION_1)
    d.w(Reg.DriverFeaturesSel, 1)
    d.w(Reg.DriverFeatures, VERSION_1 >> 32)
    d.w(Reg.DriverFeaturesSel, 0)
    d.w(Reg.DriverFeatures, STATS_VQ | PAGE_REPORTING)
    assert r.dev.driver_features == STATS_VQ
    assert r.dev.active_queue_names == ["inflateq", "deflateq", "statsq"]
    for i in range(3):
        d.setup_queue(i)
    d.driver_ok()
    assert r.dev.status & DOK and not r.dev.status & NEEDS_RESET
    assert r.balloon._features == STATS_VQ
    lines = guest_lines(caplog)
    assert any("DriverFeatures[1]" in x and "never offered 0x1" in x for x in lines)
    assert any(f"never offered {PAGE_REPORTING:#x}" in x for x in lines)
    r.close()


@pytest.mark.parametrize("value", [0x10000, 0x1_0001, 0xFFFF_0000])
def test_queue_notify_with_high_bits_notifies_nothing(rig, caplog, value):
    rig.driver.start(accept=0)
    q = rig.driver.q["inflateq"]
    q.add([(5).to_bytes(4, "little")])
    rig.drv.w(Reg.QueueNotify, value)           # without NOTIFICATION_DATA: not queue value & 0xffff
    assert q.used_idx() == 0 and rig.balloon.ballooned_pages == 0
    assert any(f"QueueNotify <- {value:#x}" in x for x in guest_lines(caplog))
    assert not rig.drv.status & NEEDS_RESET
    rig.drv.w(Reg.QueueNotify, 0)
    assert q.used_idx() == 1 and rig.balloon.ballooned_pages == 1
