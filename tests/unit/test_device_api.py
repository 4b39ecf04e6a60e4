"""The device API (pyvmm.virtio.device.VirtioDeviceBase): the example of docs/devices.md, bounded chain
helpers, per-queue sizes, config generation, and a raising device contained by the transport."""

from __future__ import annotations

import logging
import re
import struct
from pathlib import Path

import pytest

from pyvmm.irq import RecordingIrqLine
from pyvmm.memory import GuestMemory
from pyvmm.virtio.abi import InterruptBit, Reg, Status
from pyvmm.virtio.device import MAX_READ, Chain, VirtioDeviceBase
from pyvmm.virtio.mmio import VirtioMmio
from pyvmm.virtio.queue import DescChain
from tests.support.virtio_driver import VirtioDriver

DOC = Path(__file__).resolve().parents[2] / "docs" / "devices.md"


def doc_example() -> type:
    block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/devices.md has no python example"
    ns: dict = {}
    exec(compile(block.group(1), str(DOC), "exec"), ns)
    return ns["Adder"]


def rig(device, version: int = 2):
    mem = GuestMemory.from_bytearray(8 << 20)
    irq = RecordingIrqLine()
    dev = VirtioMmio(device, mem, irq, version=version, name="dev0")
    return dev, VirtioDriver(dev, mem), irq, mem


@pytest.mark.parametrize("version", [1, 2])
def test_the_documented_example_works(version):
    adder = doc_example()(start="5")
    dev, drv, irq, mem = rig(adder, version)
    assert drv.probe() == 0x7FF0
    (q,) = drv.init(nqueues=1)
    assert drv.r(Reg.QueueSizeMax) == 16
    gen = drv.r(Reg.ConfigGeneration) if version == 2 else 0
    head = q.add(out=[struct.pack("<3I", 1, 2, 39)], in_lens=[8])
    out_gpa = q.buffer(q.chains[head][1], 8)
    q.kick(force=True)
    assert q.reap() == [(head, 8)]
    assert struct.unpack("<Q", mem.read(out_gpa, 8)) == (42,)
    assert drv.config_read(0, 4) == 47
    if version == 2:
        assert drv.r(Reg.ConfigGeneration) == gen + 1
    status = drv.ack_interrupt()
    assert status & InterruptBit.USED_BUFFER and status & InterruptBit.CONFIG_CHANGE


def test_chain_reads_are_bounded_and_continue():
    mem = GuestMemory.from_bytearray(1 << 20)
    mem.write(0x1000, bytes(range(200)))
    mem.write(0x8000, b"XYZ")
    chain = Chain(mem, DescChain(0, readable=[(0x1000, 100), (0x1000 + 100, 100), (0x8000, 3)], writable=[]))
    assert chain.read(150) == bytes(range(150))
    assert chain.read(60) == bytes(range(150, 200)) + b"XYZ"
    assert chain.read() == b""
    huge = Chain(mem, DescChain(0, readable=[(0, 1 << 20)], writable=[]))
    assert len(huge.read(10 << 20)) == MAX_READ


def test_chain_writes_span_pieces_and_stop_at_the_end():
    mem = GuestMemory.from_bytearray(1 << 20)
    chain = Chain(mem, DescChain(0, readable=[], writable=[(0x100, 3), (0x200, 4)]))
    assert chain.write(b"ab") == 2
    assert chain.write(b"cdefghij") == 5
    assert chain.write(b"k") == 0
    assert (mem.read(0x100, 3), mem.read(0x200, 4), chain.written) == (b"abc", b"defg", 7)


class TwoQueues(VirtioDeviceBase):
    device_id = 0x7FF1
    queues = ("small", "big")
    queue_sizes = (8, 1024)


def test_each_queue_has_its_own_size():
    dev, drv, irq, mem = rig(TwoQueues())
    drv.probe()
    sizes = []
    for i in (0, 1):
        drv.w(Reg.QueueSel, i)
        sizes.append(drv.r(Reg.QueueSizeMax))
    assert sizes == [8, 1024]


class Raising(VirtioDeviceBase):
    device_id = 0x7FF2
    queues = ("q",)
    queue_sizes = (8,)
    config_size = 4

    def handle(self, queue, chain):
        raise ZeroDivisionError("the student's bug")

    def config_read(self, offset, size):
        raise KeyError(offset)


def test_a_raising_handler_is_contained(caplog):
    dev, drv, irq, mem = rig(Raising())
    drv.probe()
    (q,) = drv.init(nqueues=1)
    q.add(in_lens=[8])
    with caplog.at_level(logging.WARNING, logger="pyvmm.guest"):
        q.kick(force=True)
    assert drv.status & Status.DEVICE_NEEDS_RESET
    lines = [r.getMessage() for r in caplog.records if "ZeroDivisionError" in r.getMessage()]
    assert len(lines) == 1 and "test_device_api.py" in lines[0] and "in handle" in lines[0] and "\n" not in lines[0]
    assert drv.ack_interrupt() & InterruptBit.CONFIG_CHANGE
    # The driver resets and starts again: the device is usable up to its bug.
    drv.reset()
    assert not drv.status & Status.DEVICE_NEEDS_RESET


def test_a_raising_config_read_reads_zero_and_needs_reset():
    dev, drv, irq, mem = rig(Raising())
    drv.probe()
    drv.init(nqueues=1)
    assert drv.config_read(0) == 0
    assert drv.status & Status.DEVICE_NEEDS_RESET


def test_read_only_config_write_is_a_guest_error():
    dev, drv, irq, mem = rig(doc_example()())
    drv.probe()
    drv.init(nqueues=1)
    drv.config_write(0, 4, 1)
    assert dev.guest_errors == 1 and drv.config_read(0) == 0
