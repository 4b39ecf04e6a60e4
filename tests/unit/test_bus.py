"""The port-I/O and MMIO buses: ranges, and dispatch of an exit straight from a kvm_run laid out in a bytearray."""

import ctypes

import pytest

from pyvmm.bus import MmioBus, PioBus
from pyvmm.kvm import abi


class Rec:
    """A device that records its accesses and reads back a fixed value."""

    def __init__(self, value=0x11223344):
        self.log = []
        self.value = value

    def read(self, offset, size):
        self.log.append(("r", offset, size))
        return self.value

    def write(self, offset, size, value):
        self.log.append(("w", offset, size, value))


def kvm_run(size=None):
    buf = bytearray(size or ctypes.sizeof(abi.kvm_run))
    return buf, abi.kvm_run.from_buffer(buf)


def io_exit(port, size, direction, data=b"", count=1, data_offset=0x1000):
    buf, run = kvm_run(0x1000 + 64)        # the data area KVM points at lies past the struct, in the page
    run.exit_reason = abi.KvmExit.IO
    io = run.io
    io.direction, io.size, io.port, io.count, io.data_offset = direction, size, port, count, data_offset
    buf[data_offset:data_offset + len(data)] = data
    return buf


def mmio_exit(gpa, length, is_write, value=0):
    buf, run = kvm_run()
    run.exit_reason = abi.KvmExit.MMIO
    run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = gpa, length, int(is_write)
    run.mmio.data[:8] = list(value.to_bytes(8, "little"))
    return buf, run


def test_pio_out_in_and_rep():
    bus = PioBus()
    dev = Rec(0xABCD)
    bus.insert(dev, 0x3F8, 8, "uart")
    bus.dispatch(io_exit(0x3FB, 1, abi.KVM_EXIT_IO_OUT, b"\x83"))
    bus.dispatch(io_exit(0x3F8, 2, abi.KVM_EXIT_IO_OUT, b"\x34\x12"))
    buf = io_exit(0x3F9, 2, abi.KVM_EXIT_IO_IN)
    bus.dispatch(buf)
    assert buf[0x1000:0x1002] == b"\xcd\xab"
    buf = io_exit(0x3F8, 1, abi.KVM_EXIT_IO_OUT, b"abc", count=3)   # rep outsb
    bus.dispatch(buf)
    assert dev.log == [("w", 3, 1, 0x83), ("w", 0, 2, 0x1234), ("r", 1, 2)] + [("w", 0, 1, c) for c in b"abc"]
    assert bus.unhandled == 0


def test_pio_unhandled_reads_float_high():
    bus = PioBus()
    buf = io_exit(0x700, 4, abi.KVM_EXIT_IO_IN)
    bus.dispatch(buf)
    bus.dispatch(io_exit(0x700, 1, abi.KVM_EXIT_IO_OUT, b"\x01"))
    assert buf[0x1000:0x1004] == b"\xff" * 4 and bus.unhandled == 2


def test_mmio_read_write_and_unmapped():
    errors = []
    bus = MmioBus(on_unmapped=errors.append)
    dev = Rec(0x1122334455667788)
    bus.insert(dev, 0xD000_0000, 0x200, "virtio")
    buf, run = mmio_exit(0xD000_0060, 4, False)
    bus.dispatch(buf)
    assert bytes(run.mmio.data[:4]) == (0x55667788).to_bytes(4, "little")
    buf, run = mmio_exit(0xD000_0070, 4, True, 0xF)
    bus.dispatch(buf)
    assert dev.log == [("r", 0x60, 4), ("w", 0x70, 4, 0xF)]
    buf, run = mmio_exit(0xC000_0000, 2, False)
    bus.dispatch(buf)
    assert bytes(run.mmio.data[:2]) == b"\xff\xff" and bus.unhandled == 1
    assert errors == ["read of unmapped gpa 0xc0000000 (2 bytes)"]


def test_mmio_large_range_and_shared_page_use_the_bisect_lookup():
    bus = MmioBus()
    big, a, b = Rec(1), Rec(2), Rec(3)
    bus.insert(big, 0x1_0000_0000, 64 << 20, "big")        # too many pages for the page map
    bus.insert(a, 0xD000_0000, 0x100, "a")
    bus.insert(b, 0xD000_0100, 0x100, "b")               # shares a's page
    for gpa, dev in ((0x1_0200_0000, big), (0xD000_0010, a), (0xD000_0110, b)):
        buf, run = mmio_exit(gpa, 1, False)
        bus.dispatch(buf)
        assert run.mmio.data[0] == dev.value
    assert bus.unhandled == 0


def test_ranges_refuse_overlap_and_empty():
    bus = MmioBus()
    bus.insert(Rec(), 0x1000, 0x200, "a")
    with pytest.raises(ValueError, match="overlaps a"):
        bus.insert(Rec(), 0x11FF, 2, "c")
    with pytest.raises(ValueError):
        bus.insert(Rec(), 0x5000, 0, "empty")
    with pytest.raises(ValueError, match="64 KiB"):
        PioBus().insert(Rec(), 0xFFFF, 2, "past the end")
    assert bus.find(0x1100).name == "a" and bus.find(0x1200) is None


def test_dispatch_counts_each_exit_by_port_and_register():
    """The counts `pyvmm top` reads: one per exit (a rep outsb is one exit), by port, by 4-byte register."""
    pio = PioBus()
    r = pio.insert(Rec(), 0x3F8, 8, "uart")
    pio.dispatch(io_exit(0x3F8, 1, abi.KVM_EXIT_IO_OUT, b"x"))    # not counted: nobody asked yet
    assert sum(r.hits) == 0 and not pio.counting
    pio.count_accesses()
    for port in (0x3F8, 0x3F8, 0x3FD):
        pio.dispatch(io_exit(port, 1, abi.KVM_EXIT_IO_OUT, b"x"))
    pio.dispatch(io_exit(0x3F8, 1, abi.KVM_EXIT_IO_OUT, b"abc", count=3))
    pio.dispatch(io_exit(0x80, 1, abi.KVM_EXIT_IO_OUT, b"x"))
    assert r.hit_counts() == {0: 3, 5: 1}
    assert pio.unhandled == 1
    pio.remove(r)
    pio.dispatch(io_exit(0x3F8, 1, abi.KVM_EXIT_IO_OUT, b"x"))
    assert pio.unhandled == 2 and sum(r.hits) == 4

    mmio = MmioBus()
    mmio.count_accesses()
    w = mmio.insert(Rec(), 0xD000_0000, 0x200, "virtio-mmio balloon0")
    big = mmio.insert(Rec(), 0xE000_0000, 1 << 20, "big")
    for gpa, n in ((0xD000_0050, 1), (0xD000_0052, 2), (0xD000_0070, 4)):
        mmio.dispatch(mmio_exit(gpa, n, True)[0])
    mmio.dispatch(mmio_exit(0xE00F_FFFC, 4, False)[0])
    assert w.hit_counts() == {0x50: 2, 0x70: 1}
    assert len(big.hits) <= 1024 and big.hit_counts() == {(1 << 20) - (1 << big.hit_shift): 1}
