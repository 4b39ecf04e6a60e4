"""ABI structures and layout arithmetic of virtio: sizes and offsets as in the spec and kernel headers."""

import ctypes

import pytest

from pyvmm.virtio.abi import (
    BalloonFeature,
    BalloonStat,
    Reg,
    Status,
    TransportFeature,
    legacy_ring_layout,
    legacy_ring_size,
    split_ring_sizes,
    virtio_balloon_config,
    virtio_balloon_stat,
    virtq_avail,
    virtq_desc,
    virtq_used,
    virtq_used_elem,
)


@pytest.mark.parametrize("struct, size, offsets", [
    (virtq_desc, 16, {"addr": 0, "len": 8, "flags": 12, "next": 14}),
    (virtq_avail, 4, {"flags": 0, "idx": 2}),
    (virtq_used, 4, {"flags": 0, "idx": 2}),
    (virtq_used_elem, 8, {"id": 0, "len": 4}),
    (virtio_balloon_config, 16, {"num_pages": 0, "actual": 4, "free_page_hint_cmd_id": 8, "poison_val": 12}),
    (virtio_balloon_stat, 10, {"tag": 0, "val": 2}),
])
def test_struct_size_and_offsets(struct, size, offsets):
    assert ctypes.sizeof(struct) == size
    for name, off in offsets.items():
        assert getattr(struct, name).offset == off


def test_balloon_config_is_little_endian():
    cfg = virtio_balloon_config(num_pages=0x01020304)
    assert bytes(cfg)[:4] == b"\x04\x03\x02\x01"


def test_register_offsets_match_the_spec_table():
    assert (Reg.MagicValue, Reg.QueueNotify, Reg.InterruptACK, Reg.Status) == (0, 0x50, 0x64, 0x70)
    assert (Reg.GuestPageSize, Reg.QueueAlign, Reg.QueuePFN) == (0x28, 0x3C, 0x40)
    assert (Reg.SHMSel, Reg.SHMBaseHigh, Reg.QueueReset, Reg.ConfigGeneration) == (0xAC, 0xBC, 0xC0, 0xFC)


def test_bits():
    assert TransportFeature.VIRTIO_F_VERSION_1 == 1 << 32
    assert TransportFeature.VIRTIO_F_EVENT_IDX == 1 << 29
    assert Status.FEATURES_OK == 8 and Status.DEVICE_NEEDS_RESET == 64
    assert BalloonFeature.VIRTIO_BALLOON_F_PAGE_REPORTING == 32
    assert BalloonStat.VIRTIO_BALLOON_S_HTLB_PGFAIL == 9
    assert BalloonStat.VIRTIO_BALLOON_S_DIRECT_RECLAIM == 15
    assert BalloonStat.VIRTIO_BALLOON_S_MEMFREE.short_name == "memfree"


def test_split_ring_sizes():
    assert split_ring_sizes(256) == (4096, 6 + 512, 6 + 2048)


@pytest.mark.parametrize("qsz, align", [(1, 4096), (16, 4096), (128, 4096), (256, 4096), (256, 64), (1024, 4096)])
def test_legacy_layout_arithmetic(qsz, align):
    desc, avail, used = legacy_ring_layout(5, 4096, align, qsz)
    assert desc == 5 * 4096
    assert avail == desc + 16 * qsz
    assert used % align == 0 and used >= avail + 6 + 2 * qsz and used - (avail + 6 + 2 * qsz) < align
    # The used ring (with avail_event) ends inside the size the spec's formula gives.
    assert used + 6 + 8 * qsz <= desc + legacy_ring_size(qsz, align)


def test_legacy_ring_size_formula_examples():
    # ALIGN(16*256 + 2*(3+256)) + ALIGN(6 + 8*256) with 4 KiB alignment = 8192 + 4096
    assert legacy_ring_size(256, 4096) == 12288
    assert legacy_ring_size(128, 4096) == 8192
