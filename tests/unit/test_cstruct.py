"""struct.Struct layouts derived from the ctypes ABI structs: same size, same field offsets, same values."""

import ctypes

import pytest

from pyvmm.cstruct import field_of, format_of, struct_of
from pyvmm.kvm import abi, runlayout
from pyvmm.virtio import abi as vabi


@pytest.mark.parametrize("cls, derived, fmt", [
    (vabi.virtq_desc, vabi.VIRTQ_DESC, "<QIHH"),
    (vabi.virtq_used_elem, vabi.VIRTQ_USED_ELEM, "<II"),
    (vabi.virtio_balloon_stat, vabi.VIRTIO_BALLOON_STAT, "<HQ"),
    (vabi.virtio_balloon_config, vabi.VIRTIO_BALLOON_CONFIG, "<IIII"),
    (abi._kvm_run_io, runlayout.IO, "<BBHIQ"),
    (abi._kvm_run_mmio, runlayout.MMIO, "<Q8sIB3x"),
])
def test_derived_layout_matches_the_ctypes_struct(cls, derived, fmt):
    assert derived.format == fmt
    assert derived.size == ctypes.sizeof(cls)
    # Round trip: bytes written through ctypes unpack to the same field values.
    obj = cls()
    values = []
    for i, (name, ctype, *_) in enumerate(cls._fields_):
        if hasattr(ctype, "_length_"):
            raw = bytes(range(1, ctype._length_ + 1))
            getattr(obj, name)[:] = list(raw)
            values.append(raw)
        else:
            v = (i + 1) * 3
            setattr(obj, name, v)
            values.append(v)
    assert list(derived.unpack(bytes(obj))) == values


def test_leading_fields_and_one_field():
    assert format_of(abi.kvm_run, ("request_interrupt_window", "immediate_exit")) == "<BB"
    s, off = field_of(abi.kvm_run, "exit_reason")
    assert (s.format, off) == ("<I", 8) == (runlayout.EXIT_REASON.format, runlayout.EXIT_REASON_OFFSET)
    assert runlayout.MMIO_DATA_OFFSET == abi.kvm_run.u.offset + 8 == 40
    with pytest.raises(ValueError):
        struct_of(abi.kvm_run, ("exit_reason",))          # not a leading field


def test_exit_reason_low_byte_is_the_reason():
    # The vCPU loop reads exit_reason's first byte only: the u32 is little-endian and every reason fits.
    assert runlayout.EXIT_REASON.format == "<I"
    assert max(abi.KvmExit) < 256
    run = bytearray(ctypes.sizeof(abi.kvm_run))
    runlayout.EXIT_REASON.pack_into(run, runlayout.EXIT_REASON_OFFSET, abi.KvmExit.MMIO)
    assert run[runlayout.EXIT_REASON_OFFSET] == abi.KvmExit.MMIO


def test_mmio_data_as_one_u64():
    # The MMIO bus reads kvm_run.mmio.data[8] as a little-endian u64 and writes a read's value back with
    # pack_into: both must agree with the byte layout KVM uses.
    from pyvmm import bus

    run = bytearray(ctypes.sizeof(abi.kvm_run))
    runlayout.MMIO.pack_into(run, runlayout.EXIT_UNION_OFFSET, 0xD000_0050, bytes(range(1, 9)), 2, 1)
    gpa, data, length, is_write = bus._MMIO(run, runlayout.EXIT_UNION_OFFSET)
    assert (gpa, length, is_write) == (0xD000_0050, 2, 1) and data == int.from_bytes(bytes(range(1, 9)), "little")
    seen = []

    class Dev:
        def read(self, offset, size):
            return 0x1_2345_6789_ABCD_EF01

        def write(self, offset, size, value):
            seen.append((offset, size, value))

    b = bus.MmioBus()
    b.insert(Dev(), 0xD000_0000, 0x200, "dev")
    b.dispatch(run)
    assert seen == [(0x50, 2, 0x0201)]
    for length in (1, 2, 3, 4, 8):
        runlayout.MMIO.pack_into(run, runlayout.EXIT_UNION_OFFSET, 0xD000_0060, b"\0" * 8, length, 0)
        b.dispatch(run)
        got = bytes(run[runlayout.MMIO_DATA_OFFSET: runlayout.MMIO_DATA_OFFSET + 8])
        want = (0x1_2345_6789_ABCD_EF01 & ((1 << (8 * length)) - 1)).to_bytes(length, "little")
        assert got == want + b"\0" * (8 - length), length
