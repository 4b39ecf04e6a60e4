"""A MachineControl for monitor tests: the real balloon and virtio-mmio models, a Python guest driver, no KVM."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable

from pyvmm.memory import GuestMemory
from pyvmm.virtio.abi import BalloonFeature, Reg, Status, TransportFeature
from pyvmm.virtio.balloon import BalloonOptions, VirtioBalloon
from pyvmm.virtio.mmio import VirtioMmio

MiB = 1 << 20
PAGE = 4096
QSIZE = 16
RING_BASE = 0x10_0000          # the driver's rings and buffers live at 1 MiB
PFNS_PER_BUFFER = 256          # as Linux's driver
VIRTIO_BASE = 0xD000_0000
VIRTIO_IRQ = 5

# What the fake guest reports on its stats queue (tag, value).
GUEST_STATS = ((0, 0), (1, 0), (2, 7), (3, 1234), (4, 40 * MiB), (5, 64 * MiB), (6, 48 * MiB), (7, 3 * MiB))


class _IrqEvent:
    """An IrqLine whose rising level wakes the guest driver thread."""

    def __init__(self) -> None:
        self.level = False
        self.event = threading.Event()

    def set_level(self, level: bool) -> None:
        self.level = bool(level)
        if level:
            self.event.set()


class GuestDriver:
    """Plays Linux's balloon driver on a thread (the "vCPU"), over the transport's registers.

    It negotiates VERSION_1 | STATS_VQ | MUST_TELL_HOST, sets up its queues in guest RAM, primes the
    stats queue, and on every config interrupt inflates or deflates to num_pages, then writes
    `actual`; when the device hands the stats buffer back it refills it with GUEST_STATS.
    """

    def __init__(self, t: VirtioMmio, mem: GuestMemory, irq: _IrqEvent) -> None:
        self.t = t
        self.mem = mem
        self.irq = irq
        self.ballooned: list[int] = []
        self.stats_refills = 0
        self.interrupts = 0
        self._avail = [0, 0, 0]
        self._used_seen = [0, 0, 0]
        self._stop = False
        self.thread = threading.Thread(target=self._run, name="fake-guest", daemon=True)

    # ring layout of queue i: desc, avail, used, then a data buffer
    def _desc(self, i: int) -> int:
        return RING_BASE + i * 0x4000

    def _avail_gpa(self, i: int) -> int:
        return self._desc(i) + 0x400

    def _used_gpa(self, i: int) -> int:
        return self._desc(i) + 0x800

    def _buf(self, i: int) -> int:
        return self._desc(i) + 0x1000

    def probe(self) -> None:
        w, r = self.t.write, self.t.read
        w(Reg.Status, 4, 0)
        w(Reg.Status, 4, Status.ACKNOWLEDGE)
        w(Reg.Status, 4, Status.ACKNOWLEDGE | Status.DRIVER)
        w(Reg.DeviceFeaturesSel, 4, 1)
        hi = r(Reg.DeviceFeatures, 4)
        w(Reg.DeviceFeaturesSel, 4, 0)
        lo = r(Reg.DeviceFeatures, 4)
        want = (int(TransportFeature.VIRTIO_F_VERSION_1) | BalloonFeature.VIRTIO_BALLOON_F_STATS_VQ
                | BalloonFeature.VIRTIO_BALLOON_F_MUST_TELL_HOST)
        feats = ((hi << 32) | lo) & want
        w(Reg.DriverFeaturesSel, 4, 1)
        w(Reg.DriverFeatures, 4, feats >> 32)
        w(Reg.DriverFeaturesSel, 4, 0)
        w(Reg.DriverFeatures, 4, feats & 0xFFFF_FFFF)
        w(Reg.Status, 4, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
        for i in range(3):
            w(Reg.QueueSel, 4, i)
            w(Reg.QueueSize, 4, QSIZE)
            for reg, gpa in ((Reg.QueueDescLow, self._desc(i)), (Reg.QueueDriverLow, self._avail_gpa(i)),
                             (Reg.QueueDeviceLow, self._used_gpa(i))):
                w(reg, 4, gpa & 0xFFFF_FFFF)
                w(reg + 4, 4, gpa >> 32)
            w(Reg.QueueReady, 4, 1)
        self._post_stats(notify=False)   # spec: add one stats buffer before DRIVER_OK
        w(Reg.Status, 4, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK)
        self.thread.start()

    def stop(self) -> None:
        self._stop = True
        self.irq.event.set()

    def _push(self, i: int, gpa: int, length: int, notify: bool = True) -> None:
        # One descriptor per buffer, reused: the device uses each buffer before we post the next.
        self.mem.write(self._desc(i), struct.pack("<QIHH", gpa, length, 0, 0))
        slot = self._avail[i] % QSIZE
        self.mem.write_u16(self._avail_gpa(i) + 4 + 2 * slot, 0)
        self._avail[i] = (self._avail[i] + 1) & 0xFFFF
        self.mem.write_u16(self._avail_gpa(i) + 2, self._avail[i])
        if notify:
            self.t.write(Reg.QueueNotify, 4, i)

    def _post_stats(self, notify: bool = True) -> None:
        data = b"".join(struct.pack("<HQ", tag, val) for tag, val in GUEST_STATS)
        self.mem.write(self._buf(2), data)
        self._push(2, self._buf(2), len(data), notify)

    def _run(self) -> None:
        while not self._stop:
            self.irq.event.wait()
            self.irq.event.clear()
            if self._stop:
                return
            self.interrupts += 1
            isr = self.t.read(Reg.InterruptStatus, 4)
            self.t.write(Reg.InterruptACK, 4, isr)
            if isr & 1:
                used = self.mem.read_u16(self._used_gpa(2) + 2)
                if used != self._used_seen[2]:
                    self._used_seen[2] = used
                    self.stats_refills += 1
                    self._post_stats()
            if isr & 2:
                self._adjust()

    def _adjust(self) -> None:
        ram_pages = self.t.device.ram_size // PAGE
        num_pages = self.t.read(0x100, 4)
        while len(self.ballooned) < num_pages:
            n = min(PFNS_PER_BUFFER, num_pages - len(self.ballooned))
            # take pages from the top of RAM down, away from the rings at 1 MiB
            pfns = [ram_pages - 1 - len(self.ballooned) - k for k in range(n)]
            self.mem.write(self._buf(0), struct.pack(f"<{n}I", *pfns))
            self._push(0, self._buf(0), 4 * n)
            self.ballooned += pfns
        while len(self.ballooned) > num_pages:
            n = min(PFNS_PER_BUFFER, len(self.ballooned) - num_pages)
            pfns = self.ballooned[-n:]
            self.mem.write(self._buf(1), struct.pack(f"<{n}I", *pfns))
            self._push(1, self._buf(1), 4 * n)
            del self.ballooned[-n:]
        self.t.write(0x104, 4, len(self.ballooned))


class FakeMachine:
    """Implements pyvmm.monitor.commands.MachineControl over the real device models."""

    def __init__(
        self,
        ram_size: int = 64 * MiB,
        *,
        balloon: bool = True,
        driver: bool = True,
        can_reset: bool = True,
        vcpus: int = 1,
    ) -> None:
        self.mem = GuestMemory.anonymous([(0, ram_size)])   # lazily backed, as the real RAM
        self.ram_size = ram_size
        self.state = "running"
        self.can_reset = can_reset
        self.vcpus = vcpus
        self.resets = 0
        self.quits = 0
        self.trace: dict[str, bool] = {}
        self._listeners: list[Callable[[str, dict], None]] = []
        self.balloon: VirtioBalloon | None = None
        self.virtio_devices: list[VirtioMmio] = []
        self.driver: GuestDriver | None = None
        if balloon:
            self.irq = _IrqEvent()
            self.balloon = VirtioBalloon(self.mem, BalloonOptions(stats=True))
            t = VirtioMmio(self.balloon, self.mem, self.irq, version=2, name="balloon0")
            t.base, t.irq_gsi = VIRTIO_BASE, VIRTIO_IRQ
            self.virtio_devices.append(t)
            if driver:
                self.driver = GuestDriver(t, self.mem, self.irq)
                self.driver.probe()

    def close(self) -> None:
        if self.driver is not None:
            self.driver.stop()
        if self.balloon is not None:
            self.balloon.close()

    # --- MachineControl -------------------------------------------------------------------------

    def add_listener(self, cb: Callable[[str, dict], None]) -> None:
        self._listeners.append(cb)

    def _emit(self, event: str, data: dict | None = None) -> None:
        for cb in list(self._listeners):
            cb(event, data or {})

    def status(self) -> str:
        return self.state

    def pause(self) -> None:
        if self.state == "running":
            self.state = "paused"
            self._emit("STOP")

    def resume(self) -> None:
        if self.state == "paused":
            self.state = "running"
            self._emit("RESUME")

    def quit(self) -> None:
        self.quits += 1
        if self.state != "shutdown":
            self.state = "shutdown"
            self._emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})

    def reset(self) -> None:
        if not self.can_reset:
            raise NotImplementedError("no reset")
        self.resets += 1
        self._emit("RESET", {"guest": False, "reason": "host-qmp-system-reset"})

    def vcpu_registers(self, cpu: int) -> str:
        if not 0 <= cpu < self.vcpus:
            raise ValueError(f"no vCPU {cpu} (the machine has {self.vcpus})")
        return f"CPU#{cpu}\nRAX=0000000000000000 RBX=0000000000000000\nRIP=000000000010000c RFL=00000002\n"

    def memory_map(self) -> list[tuple[int, int, str]]:
        out = [(r.gpa, r.end - 1, "ram") for r in self.mem.regions]
        out += [(t.base, t.base + VirtioMmio.WINDOW_SIZE - 1, f"virtio-mmio {t.name}") for t in self.virtio_devices]
        return out

    def read_memory(self, gpa: int, length: int) -> bytes:
        return self.mem.read(gpa, length)

    # The fake's vCPU has paging on, with virtual addresses mapped one to one.
    paging = "4-level"

    def paging_mode(self, cpu: int = 0) -> str:
        return self.paging

    def translate(self, gva: int, cpu: int = 0) -> int | None:
        return gva if gva < self.ram_size else None

    def read_virtual(self, gva: int, length: int, cpu: int = 0) -> bytes:
        return self.mem.read(gva, length)

    def register_values(self, cpu: int = 0) -> dict[str, int]:
        if not 0 <= cpu < self.vcpus:
            raise ValueError(f"no vCPU {cpu} (the machine has {self.vcpus})")
        return {"rax": 0, "rsp": 0x2000, "rip": 0x3000, "pc": 0x3000}

    def set_trace(self, category: str, on: bool) -> None:
        if category not in ("all", "virtio", "mmio", "pio", "exits"):
            raise ValueError(f"unknown trace category {category!r} (all, virtio, mmio, pio, exits)")
        self.trace[category] = on

    # --- test helpers ---------------------------------------------------------------------------

    def wait_actual(self, target: int, timeout: float = 10.0) -> int:
        """Wait until the guest has reached target bytes; returns the balloon's actual."""
        assert self.balloon is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            actual = self.balloon.info().actual
            if actual == target:
                return actual
            time.sleep(0.005)
        return self.balloon.info().actual
