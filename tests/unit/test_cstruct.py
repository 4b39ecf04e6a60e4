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
