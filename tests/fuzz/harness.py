"""The fuzz harness: bytes in, a hostile driver's register writes and ring contents out, invariants checked.

Shared by the atheris fuzzer (``python -m tests.fuzz.fuzz virtio``), the hypothesis property tests and
the regression corpus.  ``run_one(data)`` raises AssertionError (or any escaping exception) when the
device model misbehaves; anything the guest does must end in a working device or DEVICE_NEEDS_RESET.
"""

from __future__ import annotations

import struct

from pyvmm.errors import GuestMemoryError
from pyvmm.irq import RecordingIrqLine
from pyvmm.memory import GuestMemory
from pyvmm.virtio.abi import Reg, Status
from pyvmm.virtio.balloon import BalloonOptions, VirtioBalloon
from pyvmm.virtio.mmio import VirtioMmio
from tests.support.virtio_driver import BalloonDriver

RAM = 1 << 20
ARENA = (RAM // 2, RAM // 2)        # the well-behaved driver's rings live in the top half
_REGS = [int(r) for r in Reg if r != Reg.Config] + [0x100, 0x104, 0x108, 0x10C]
_SIZES = (4, 4, 4, 4, 1, 2, 8, 3)


class Bytes:
    """A cursor over the fuzz input; reading past the end yields zeros."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos: self.pos + n]
        self.pos += n
        return chunk.ljust(n, b"\0")

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]


class Machine:
    """One balloon behind virtio-mmio on 1 MiB of bytearray RAM, with every host-side effect watched."""

    def __init__(self, version: int, options: BalloonOptions) -> None:
        self.mem = GuestMemory.from_bytearray(RAM)
        self.out_of_ram: list[tuple[int, int]] = []
        real_region_of = self.mem.region_of

        def watched_region_of(gpa: int, length: int = 1):
            try:
                return real_region_of(gpa, length)
            except GuestMemoryError:
                self.out_of_ram.append((gpa, length))
                raise
        self.mem.region_of = watched_region_of  # type: ignore[method-assign]
        self.discarded: list[tuple[int, int]] = []
        self.irq = RecordingIrqLine()
        self.balloon = VirtioBalloon(self.mem, options, discard=self._discard)
        self.dev = VirtioMmio(self.balloon, self.mem, self.irq, version=version, name="fuzz")

    def _discard(self, gpa: int, length: int) -> None:
        assert gpa % 4096 == 0 and length % 4096 == 0 and length > 0, (gpa, length)
        assert self.mem.contains(gpa, length), f"discard outside RAM: {gpa:#x}+{length:#x}"
        self.discarded.append((gpa, length))
        self.mem.discard(gpa, length)

    def check_invariants(self) -> None:
        b = self.balloon
        bits = sum(x.bit_count() for x in b.pages.bitmap)
        assert bits == b.ballooned_pages, (bits, b.ballooned_pages)
        assert 0 <= b.ballooned_pages <= RAM >> 12
        assert 0 <= b.num_pages <= RAM >> 12
        assert self.dev.interrupt_status & ~3 == 0
        assert self.irq.level == bool(self.dev.interrupt_status) or not self.irq.history
        assert not self.out_of_ram, f"device touched memory outside RAM: {self.out_of_ram[:3]}"
        info = b.info()
        assert info.agree == (b.ballooned_pages == b.actual)


def run_one(data: bytes) -> None:
    """Play the input as a hostile driver, then check the device still works after a reset."""
    src = Bytes(data)
    head = src.u8()
    version = 1 if head & 1 else 2
    options = BalloonOptions(stats=bool(head & 2), free_page_reporting=bool(head & 4),
                             deflate_on_oom=bool(head & 8), must_tell_host=bool(head & 16))
    m = Machine(version, options)
    good = BalloonDriver(m.dev, m.mem, arena=ARENA)
    if head & 32:
        # Start from a correctly initialised device so the fuzzer reaches the queues quickly.
        good.start(stats=[(4, 1)] if head & 2 else None)
    queues = list(good.q.values())
    ops = 0
    while src.left() > 0 and ops < 200:
        ops += 1
        op = src.u8() % 12
        if op == 0:
            off = _REGS[src.u8() % len(_REGS)] if src.u8() & 1 else src.u16() % 0x220
            m.dev.write(off, _SIZES[src.u8() % len(_SIZES)], src.u32())
        elif op == 1:
            off = _REGS[src.u8() % len(_REGS)]
            value = m.dev.read(off, _SIZES[src.u8() % len(_SIZES)])
            assert 0 <= value < (1 << 64)
        elif op == 2:
            gpa = src.u32() % RAM
            chunk = src.take(src.u8() % 48)
            m.mem.write(gpa, chunk[: max(0, RAM - gpa)])
        elif op == 3 and queues:
            q = queues[src.u8() % len(queues)]
            addr = src.u32() % (RAM + 0x2000) if src.u8() & 1 else src.u64()
            q.write_desc(src.u8() % q.size, addr, src.u32() % 0x3000 if src.u8() & 1 else src.u32(),
                         src.u8() & 7, src.u16() % (q.size + 2))
        elif op == 4 and queues:
            q = queues[src.u8() % len(queues)]
            q.push_avail(src.u16() % (q.size + 2))
        elif op == 5 and queues:
            q = queues[src.u8() % len(queues)]
            m.dev.write(Reg.QueueNotify, 4, q.index)
        elif op == 6:
            m.balloon.set_target(src.u32() * 4096 % (2 * RAM))
        elif op == 7:
            m.balloon.request_stats()
        elif op == 8 and queues:
            # A well-formed PFN buffer with hostile PFNs: a good mix of valid, duplicate and bad.
            q = queues[src.u8() % min(2, len(queues))]
            n = src.u8() % 40
            pfns = [src.u16() % ((RAM >> 12) + 8) if src.u8() & 3 else src.u32() for _ in range(n)]
            try:
                q.add([struct.pack(f"<{n}I", *pfns)] if n else [b""])
            except (MemoryError, IndexError):
                pass
            m.dev.queue_notify(q.index)
        elif op == 9 and queues:
            q = queues[src.u8() % len(queues)]
            q.set_avail_idx(src.u16())
        elif op == 10:
            m.dev.write(0x100 + src.u8() % 20, 1 << (src.u8() % 3), src.u32())
        elif op == 11:
            status = src.u8()
            m.dev.write(Reg.Status, 4, status)
        m.check_invariants()
    # Whatever happened, the device is either working or says it needs a reset, and after a
    # reset a well-behaved driver can use it again.
    m.check_invariants()
    m.balloon.close()
    fresh = BalloonDriver(m.dev, m.mem, arena=ARENA)
    fresh.start(accept=0)
    assert not fresh.drv.status & Status.DEVICE_NEEDS_RESET
    before = m.balloon.ballooned_pages
    fresh.inflate([3])
    assert m.balloon.ballooned_pages == before + 1 and m.balloon.is_ballooned(3)
    m.check_invariants()
