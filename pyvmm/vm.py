"""A pyvmm machine: every part it consists of, and its life cycle (start, pause, stop, wait, close)."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .config import VmConfig

if TYPE_CHECKING:
    from .builder import KernelLoad, Resources
    from .bus import MmioBus, PioBus
    from .console import ConsoleLog
    from .control import RunControl
    from .debug.debugger import Debugger
    from .devices.post import PostPort
    from .devices.serial import Serial16550
    from .eventloop import EventLoop
    from .ioeventfd import NotifyEventfds
    from .kvm.system import Kvm
    from .kvm.vmfd import VmFd
    from .loader.firmware import FirmwareImage
    from .memory import GuestMemory, MemoryRegion
    from .trace import Tracer
    from .vcpu import Vcpu
    from .virtio.balloon import VirtioBalloon
    from .virtio.mmio import VirtioMmio

log = logging.getLogger("pyvmm")


class Machine:
    """A pyvmm virtual machine.

    ``Machine(VmConfig(...))`` is ``builder.build_vm(VmConfig(...))``: the machine the config describes,
    built and ready to ``start()``; ``wait()`` returns the exit code; ``close()`` (or the ``with``
    block) releases every fd, mapping and thread.  The parts below are all it consists of.
    """

    # --- what a machine consists of, in the order build_vm makes it ----------------------------------
    config: VmConfig
    control: RunControl              # run state shared with the vCPU threads: stop, hold, exit code
    console: ConsoleLog              # the guest's serial output, kept for the API and the monitor
    tracer: Tracer                   # --trace: register accesses and boot stages
    kvm: Kvm                         # /dev/kvm
    vmfd: VmFd                       # the VM, with the in-kernel irqchip and PIT
    memory: GuestMemory              # guest RAM (private anonymous mappings)
    pio_bus: PioBus                  # serial 0x3f8, debug exit 0xf4, ACPI sleep 0x600, i8042 0x60, POST 0x80
    mmio_bus: MmioBus                # virtio-mmio windows from 0xd0000000
    serial: Serial16550              # COM1
    post: PostPort                   # the firmware's boot-stage codes
    virtio_devices: list[VirtioMmio]  # one virtio-mmio transport per device
    balloon_transport: VirtioMmio | None
    acpi_rsdp: int                   # where the ACPI tables start (0: none)
    kernel: KernelLoad               # the kernel image, its command line and initrd
    rom: MemoryRegion | None         # the boot ROM below 4 GiB (None: direct entry)
    firmware: FirmwareImage | None
    vcpus: list[Vcpu]
    event_loop: EventLoop            # ioeventfd notifies and irqfd resamples
    notify_eventfds: dict[str, NotifyEventfds]   # each transport's QueueNotify ioeventfds, by name
    resources: Resources             # what close() releases
    qmp_servers: list[Any]           # started by start(), from config.qmp
    gdb_server: Any                  # started by start(), from config.gdb (-s, -gdb)
    stop_output: Callable[[str], None]   # where the monitor's stop messages go (stderr, or the console)
    _debugger: Debugger | None
    _started: bool
    start_time: float                # time.monotonic() when built, and when the guest started
    guest_start_time: float | None

    def __new__(cls, config: VmConfig | None = None, /, **kwargs: Any) -> Machine:
        if config is None:
            config = VmConfig(**kwargs)
        elif kwargs:
            raise TypeError("give a VmConfig or keyword arguments, not both")
        from .builder import build_vm

        return build_vm(config)

    @classmethod
    def assemble(cls, *, config: VmConfig, control: RunControl, console: ConsoleLog, tracer: Tracer, kvm: Kvm,
                 vmfd: VmFd, memory: GuestMemory, rom: MemoryRegion | None, pio_bus: PioBus, mmio_bus: MmioBus,
                 serial: Serial16550, post: PostPort, virtio_devices: list[VirtioMmio],
                 balloon_transport: VirtioMmio | None, acpi_rsdp: int, kernel: KernelLoad,
                 firmware: FirmwareImage | None, vcpus: list[Vcpu], event_loop: EventLoop,
                 resources: Resources, notify_eventfds: dict[str, NotifyEventfds] | None = None) -> Machine:
        """A machine of these parts: for build_vm, which makes them."""
        self = object.__new__(cls)
        self.config = config
        self.control = control
        self.console = console
        self.tracer = tracer
        self.kvm = kvm
        self.vmfd = vmfd
        self.memory = memory
        self.rom = rom
        self.pio_bus = pio_bus
        self.mmio_bus = mmio_bus
        self.serial = serial
        self.post = post
        self.virtio_devices = virtio_devices
        self.balloon_transport = balloon_transport
        self.acpi_rsdp = acpi_rsdp
        self.kernel = kernel
        self.firmware = firmware
        self.vcpus = vcpus
        self.event_loop = event_loop
        self.notify_eventfds = notify_eventfds or {}
        self.resources = resources
        self.qmp_servers = []
        self.gdb_server = None
        self.stop_output = _stderr_lines
        self._debugger = None
        self._started = False
        self.start_time = time.monotonic()
        self.guest_start_time = None
        return self

    # --- parts by another name --------------------------------------------------------------------------

    @property
    def balloon(self) -> VirtioBalloon | None:
        t = self.balloon_transport
        return None if t is None else t.device     # type: ignore[return-value]

    @property
    def cmdline(self) -> str:
        return self.kernel.cmdline

    @property
    def ram_size(self) -> int:
        return self.config.memory

    @property
    def boot_stages(self) -> list[tuple[int, str]]:
        return self.post.stages

    @property
    def emulation_fixups(self) -> dict[str, int]:
        return self.control.emulation_fixups

    @property
    def exit_code(self) -> int | None:
        return self.control.exit_code

    @property
    def stop_reason(self) -> str:
        return self.control.stop_reason

    @property
    def crash_report(self) -> str:
        return self.control.crash_report

    @property
    def report_crashes(self) -> bool:
        return self.control.report_crashes

    @report_crashes.setter
    def report_crashes(self, on: bool) -> None:
        self.control.report_crashes = on

    @property
    def stopped(self) -> threading.Event:
        """Set once the VM has stopped."""
        return self.control.stopped

    @property
    def debugger(self) -> Debugger:
        """Guest breakpoints, virtio breakpoints and debug stops (made on first use: a machine nobody
        debugs never imports pyvmm.debug)."""
        if self._debugger is None:
            from .debug.debugger import Debugger

            d = Debugger(control=self.control, vcpus=self.vcpus, memory=self.memory, read_physical=self.read_memory,
                         kvm=self.kvm, vmfd=self.vmfd, mmio_bus=self.mmio_bus, transports=self.virtio_devices,
                         notify_eventfds=self.notify_eventfds)
            d.add_stop_listener(self._announce_stop)
            self._debugger = d
        return self._debugger

    def _announce_stop(self, ev: Any) -> None:
        """A virtio breakpoint's message goes to the monitor's console (or stderr)."""
        if ev.text:
            self.stop_output(ev.text)

    # --- console ------------------------------------------------------------------------------------------

    @property
    def console_out(self) -> Callable[[bytes], None] | None:
        return self.console.sink

    @console_out.setter
    def console_out(self, sink: Callable[[bytes], None] | None) -> None:
        self.console.sink = sink

    def console_text(self) -> str:
        return self.console.text()

    def wait_for_console(self, pattern: str, timeout: float = 30.0) -> re.Match:
        """Wait until the guest's console output matches the regex; TimeoutError otherwise."""
        return self.console.wait_for(pattern, timeout)

    # --- events -------------------------------------------------------------------------------------------

    def add_listener(self, cb: Callable[[str, dict], None]) -> None:
        """cb(event, data) for the machine's events: STOP, RESUME, SHUTDOWN, RESET."""
        self.control.add_listener(cb)

    # --- life cycle ---------------------------------------------------------------------------------------

    def start(self, *, terminal: bool = False, paused: bool | None = None) -> Machine:
        """Run the vCPUs, with the configured QMP servers and gdbstub (and, with ``terminal``, the
        interactive console on this process's terminal: raw mode, Ctrl-A c for the monitor).  With
        ``paused`` (default: the config's start_paused, -S) the vCPU threads start held before their
        first instruction, state "created" (QMP: prelaunch), until gdb, QMP or the monitor continues."""
        from .frontends import attach_frontends
        from .vcpu import install_kick_handler

        if self._started or self.control.state != "created":
            raise RuntimeError("a machine starts once")
        install_kick_handler()   # PyvmmError off the main thread unless it was installed there before
        self._started = True
        if paused if paused is not None else self.config.start_paused:
            self.control.hold_prelaunch()
        else:
            self.control.state = "running"
        attach_frontends(self, terminal=terminal)
        self.event_loop.start()
        self.guest_start_time = time.monotonic()
        for v in self.vcpus:
            v.start()
        return self

    def status(self) -> str:
        """"created" (QMP: prelaunch), "running", "paused", "debug" (stopped for a debugger) or "shutdown"."""
        return self.control.state

    def stop(self, exit_code: int = 0, reason: str = "stopped by the host", *,
             event_reason: str = "host-signal") -> None:
        """Stop the VM (from any thread); the first reason and exit code win."""
        self.control.stop(exit_code, reason, event_reason=event_reason)

    def pause(self) -> None:
        """Stop the vCPUs (QMP `stop`): emits STOP once they are all out of KVM_RUN."""
        self.control.pause()

    def resume(self) -> None:
        """Let the vCPUs run again (QMP `cont`, also after -S or a debug stop): emits RESUME."""
        self.control.resume()

    def quit(self) -> None:
        """QMP `quit` and the monitor's `quit`: stop the VM, exit code 0."""
        self.stop(0, "quit from the monitor", event_reason="host-qmp-quit")

    def reset(self) -> None:
        raise NotImplementedError("system_reset is not supported by pyvmm machines yet")

    @contextlib.contextmanager
    def quiesced(self) -> Iterator[None]:
        """The vCPUs held out of KVM_RUN for a moment (to read their registers), with no STOP/RESUME
        event and no change of state: a user's pause stays a pause."""
        self.control.hold()
        try:
            yield
        finally:
            self.control.release()

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the VM stops; returns its exit code (None on timeout).  Ctrl-C stops it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        stopped = self.control.stopped
        try:
            while not stopped.wait(0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))):
                if deadline is not None and time.monotonic() >= deadline:
                    return None
        except KeyboardInterrupt:
            self.stop(130, "interrupted (Ctrl-C)", event_reason="host-signal")
        for v in self.vcpus:
            v.join(2)
        exc, self.control.vcpu_exception = self.control.vcpu_exception, None
        if exc is not None:
            raise exc
        return self.control.exit_code

    def close(self) -> None:
        """Stop the VM if it runs, join its threads, and close every fd and mapping."""
        if not self.control.stop_requested:
            self.stop(0, "closed")
        for v in self.vcpus:
            v.join(2)
        self.resources.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- inspection (monitor, tests) ----------------------------------------------------------------------

    def read_memory(self, gpa: int, length: int) -> bytes:
        """Guest-physical bytes: RAM, or the boot ROM; GuestMemoryError elsewhere."""
        rom = self.rom
        if rom is not None and rom.gpa <= gpa and gpa + length <= rom.end:
            off = gpa - rom.gpa
            return bytes(rom.view[off : off + length])
        return self.memory.read(gpa, length)

    def memory_map(self) -> list[tuple[int, int, str]]:
        out = [(r.gpa, r.end - 1, "ram") for r in self.memory.regions]
        for r in self.mmio_bus.ranges:
            out.append((r.base, r.end - 1, r.name))
        if self.rom is not None:
            out.append((self.rom.gpa, self.rom.end - 1, "firmware (rom)"))
        return sorted(out)

    def vcpu_registers(self, cpu: int = 0) -> str:
        if not 0 <= cpu < len(self.vcpus):
            raise ValueError(f"no vCPU {cpu} (the machine has {len(self.vcpus)})")
        with self.quiesced():
            return self.vcpus[cpu].register_dump()

    def set_trace(self, category: str, on: bool) -> None:
        self.tracer.set(category, on)


def _stderr_lines(text: str) -> None:
    import sys

    sys.stderr.write("".join(f"pyvmm: {line}\n" for line in text.splitlines()))
    sys.stderr.flush()
