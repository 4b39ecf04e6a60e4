"""A pyvmm machine: every part it consists of, and its life cycle (start, pause, stop, wait, close)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .config import VmConfig
from .errors import GuestMemoryError
from .termout import emit_line

if TYPE_CHECKING:
    from .arch.x86.poweron import PlatformPowerOn
    from .builder import KernelLoad, Resources
    from .bus import MmioBus, PioBus
    from .console import ConsoleLog
    from .control import RunControl
    from .debug.debugger import Debugger
    from .devices.i8042 import I8042
    from .devices.post import PostPort
    from .devices.serial import Serial16550
    from .devices.vga import VgaText
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
    keyboard: I8042                  # the PS/2 keyboard controller at 0x60/0x64 (IRQ 1, reset line)
    vga: VgaText | None              # the VGA text console (--vga text), None without one
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
    platform: PlatformPowerOn        # the PIC, IOAPIC and PIT at power-on, for a reset
    qmp_servers: list[Any]           # started by start(), from config.qmp
    gdb_server: Any                  # started by start(), from config.gdb (-s, -gdb)
    stop_output: Callable[[str], None]   # where the monitor's stop messages go (stderr, or the console)
    _debugger: Debugger | None
    _started: bool
    start_time: float                # time.monotonic() when built, and when the guest started
    guest_start_time: float | None
    _finalizer: weakref.finalize     # closes a machine that is dropped without close()
    resets: int                      # machine resets since power-on (system_reset, the guest's)
    _reset_lock: threading.Lock

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
                 serial: Serial16550, keyboard: I8042, vga: VgaText | None, post: PostPort,
                 virtio_devices: list[VirtioMmio],
                 balloon_transport: VirtioMmio | None, acpi_rsdp: int, kernel: KernelLoad,
                 firmware: FirmwareImage | None, vcpus: list[Vcpu], event_loop: EventLoop,
                 resources: Resources, platform: PlatformPowerOn,
                 notify_eventfds: dict[str, NotifyEventfds] | None = None) -> Machine:
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
        self.keyboard = keyboard
        self.vga = vga
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
        self.platform = platform
        self.resets = 0
        self._reset_lock = threading.Lock()
        control.reset_handler = _weak_reset(self)
        self.qmp_servers = []
        self.gdb_server = None
        self.stop_output = _stderr_lines
        self._debugger = None
        self._started = False
        self.start_time = time.monotonic()
        self.guest_start_time = None
        # The safety net of a Machine that is dropped without close() (a notebook cell run again, a
        # script that forgets): its vCPUs are stopped and its fds and mappings closed when it is garbage
        # collected, or at the latest when the interpreter exits.  The finalizer holds the parts, never
        # the Machine itself, so it does not keep the Machine alive.
        self._finalizer = weakref.finalize(self, _release, control, vcpus, resources, "the Machine was dropped")
        if "IPython" in sys.modules:     # a notebook (or IPython): a re-run of this cell stops this machine
            from .notebook import adopt  # (only there: the CLI does not pay notebook's imports)

            adopt(self)
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

    def wait_for_console(self, pattern: str, timeout: float = 30.0, since: int = 0) -> re.Match:
        """Wait until the guest's console output matches the regex; TimeoutError otherwise.  With
        ``since`` (an earlier ``machine.console.written``) only output after that mark counts."""
        return self.console.wait_for(pattern, timeout, since)

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

    def reset(self, *, guest: bool = False, reason: str = "system_reset") -> None:
        """A machine reset, as the reset line of a PC: every vCPU back to its power-on state (the BSP at
        the reset vector, the APs waiting for INIT/SIPI), the PIC, IOAPIC and PIT as at power-on, every
        device reset, the kernel, its boot information, the ACPI tables and the MP table written into RAM
        again, and the BSP's entry state set as at boot; then a RESET event (QEMU's)."""
        from .builder import write_boot_tables

        with self._reset_lock:
            if self.control.stop_requested:
                return
            self.control.hold()
            try:
                if self.control.stop_requested:
                    return
                self.platform.restore(self.vmfd)
                for v in self.vcpus:
                    assert v.power_on is not None
                    v.power_on.restore(v.fd)
                self.serial.reset()
                self.keyboard.reset()
                if self.vga is not None:
                    self.vga.reset()
                self.post.reset()
                for t in self.virtio_devices:
                    t.reset()
                write_boot_tables(self.memory, self.config, self.virtio_devices)
                self.kernel.load(self.memory)
                self.kernel.enter(self.vcpus[0].fd, self.memory, firmware=self.firmware is not None,
                                  tracer=self.tracer)
                self.resets += 1
                self.control.after_reset()
            finally:
                self.control.release()
        self.control.emit("RESET", {"guest": guest, "reason": "guest-reset" if guest else "host-qmp-system-reset"})
        log.info("machine reset (%s)", reason)

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
        """Stop the VM if it runs, join its threads, and close every fd and mapping (once)."""
        self._finalizer.detach()
        _release(self.control, self.vcpus, self.resources, "closed")

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

    # --- the guest's view: vCPUs, page tables, interrupt controllers, devices (the monitor's info) ------

    def _vcpu(self, cpu: int) -> Vcpu:
        if not 0 <= cpu < len(self.vcpus):
            raise ValueError(f"no vCPU {cpu} (the machine has {len(self.vcpus)})")
        return self.vcpus[cpu]

    def vcpu_sregs(self, cpu: int = 0):
        """A vCPU's special registers (CR0, CR3, CR4, EFER, segments), read with the vCPUs held."""
        vcpu = self._vcpu(cpu)
        with self.quiesced():
            return vcpu.fd.get_sregs()

    def register_values(self, cpu: int = 0) -> dict[str, int]:
        """A vCPU's registers by name (rax..r15, rip, rflags, cr0..cr4, efer) and "pc", the linear
        address of its next instruction: what the monitor's $reg expressions read."""
        from .arch.x86.cpu import linear_rip

        vcpu = self._vcpu(cpu)
        with self.quiesced():
            regs, sregs = vcpu.fd.get_regs(), vcpu.fd.get_sregs()
        out = {field[0]: int(getattr(regs, field[0])) for field in regs._fields_}
        out.update({name: int(getattr(sregs, name)) for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")})
        out["pc"] = linear_rip(regs, sregs)
        for r64 in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "rip"):
            out["e" + r64[1:]] = out[r64] & 0xFFFFFFFF
        return out

    def paging_mode(self, cpu: int = 0) -> str:
        """"off", "32-bit", "PAE", "4-level" or "5-level" on that vCPU now."""
        from .arch.x86.pagemap import paging_mode

        return paging_mode(self.vcpu_sregs(cpu))

    def translate(self, gva: int, cpu: int = 0) -> int | None:
        """The guest-physical address a virtual (linear) address maps to on that vCPU now, through
        its page tables; with paging off, the address itself; None if no page maps it."""
        from .arch.x86.paging import translate

        return translate(self.memory, self.vcpu_sregs(cpu), gva)

    def read_virtual(self, gva: int, length: int, cpu: int = 0) -> bytes:
        """Bytes at a virtual address on that vCPU, page by page through its page tables (RAM and ROM);
        GuestMemoryError at the first byte that no page maps or that is not memory."""
        from .arch.x86.paging import translate

        sregs = self.vcpu_sregs(cpu)
        out = bytearray()
        while length > 0:
            gpa = translate(self.memory, sregs, gva)
            if gpa is None:
                raise GuestMemoryError(gva, length, "read (no page maps the virtual address)")
            n = min(length, 4096 - (gva & 0xFFF))
            out += self.read_memory(gpa, n)
            gva, length = gva + n, length - n
        return bytes(out)

    def page_mappings(self, cpu: int = 0):
        """The vCPU's page tables as runs of mappings (pyvmm.arch.x86.pagemap.Mapping)."""
        from .arch.x86.pagemap import mappings

        return mappings(self.memory, self.vcpu_sregs(cpu))

    def pic_text(self) -> str:
        """The in-kernel 8259A pair and IOAPIC, as the monitor's `info pic` shows them."""
        from .arch.x86 import irqchip
        from .kvm import abi

        master = self.vmfd.get_irqchip(abi.KVM_IRQCHIP_PIC_MASTER).chip.pic
        slave = self.vmfd.get_irqchip(abi.KVM_IRQCHIP_PIC_SLAVE).chip.pic
        ioapic = self.vmfd.get_irqchip(abi.KVM_IRQCHIP_IOAPIC).chip.ioapic
        return "\n".join((irqchip.format_pic("pic1", slave), irqchip.format_pic("pic0", master),
                          irqchip.format_ioapic(ioapic)))

    def lapic_text(self, cpu: int = 0) -> str:
        """A vCPU's local APIC, as the monitor's `info lapic` shows it."""
        from .arch.x86 import irqchip

        vcpu = self._vcpu(cpu)
        with self.quiesced():
            regs = bytes(vcpu.fd.get_lapic().regs)
            base = vcpu.fd.get_msrs([0x1B]).get(0x1B)       # IA32_APIC_BASE
        text = irqchip.format_lapic(cpu, regs, base)
        state = self.vcpu_state(cpu)
        if state.startswith("waiting"):
            text += f"(CPU {cpu} is {state}: the guest has not started it, and KVM shows its APIC as at reset)\n"
        return text

    def irq_counts(self) -> list[tuple[int, str, int]]:
        """(GSI, device, interrupts raised) for every line a device drives."""
        rows = [(self.serial.irq, "serial (COM1)"), (self.keyboard.irq, "i8042 keyboard")]
        rows += [(t.irq, t.name) for t in self.virtio_devices]
        out = []
        for line, name in rows:
            gsi = getattr(line, "gsi", None)
            if gsi is not None:
                out.append((gsi, name, int(getattr(line, "raised", 0))))
        return sorted(out)

    def counters(self) -> dict:
        """What `pyvmm top` shows (QMP x-pyvmm-query-counters): exits by reason per vCPU, interrupts per
        line and QueueNotify per queue of every virtio device since power-on; accesses by device and
        register (port-I/O by port, MMIO by 4-byte register) since the first call (the buses count them
        only once asked: "counting-started" is true on that call); each balloon's target, actual and
        host RSS, and each vCPU's state.  Read with the vCPUs held out of KVM_RUN for a moment when
        they run, so that between two calls the exits and the accesses they made agree."""
        from .virtio.abi import Reg

        reg_names = {int(r): r.name for r in Reg}
        running = self.control.state == "running" and not self.control.stop_requested
        # The buses count accesses by device only from the first call on (before it, their dispatch
        # does no counting at all); the vCPUs take the counting dispatch up while held here.
        started = not (self.pio_bus.counting and self.mmio_bus.counting)
        self.pio_bus.count_accesses()
        self.mmio_bus.count_accesses()
        with self.quiesced() if running else contextlib.nullcontext():
            vcpus = [{"cpu-index": v.index, "exits": sum(v.exit_counts), "by-reason": v.exits_by_reason()}
                     for v in self.vcpus]
            pio = [{"name": r.name, "base": r.base, "size": r.size, "accesses": sum(r.hits),
                    "by-register": {f"{r.base + off:#x}": n for off, n in r.hit_counts().items()}}
                   for r in self.pio_bus.ranges]
            transports = {t.base: t for t in self.virtio_devices}
            mmio = []
            for r in self.mmio_bus.ranges:
                t = transports.get(r.base)
                if t is not None:
                    by = {(reg_names.get(off) if off < 0x100 else f"config+{off - 0x100:#x}") or f"{off:#x}": n
                          for off, n in r.hit_counts().items()}
                else:
                    by = {f"{r.base + off:#x}": n for off, n in r.hit_counts().items()}
                mmio.append({"name": r.name, "base": r.base, "size": r.size, "accesses": sum(r.hits),
                             "by-register": by})
            unhandled = {"pio": self.pio_bus.unhandled, "mmio": self.mmio_bus.unhandled}
            states: list[str] = []
            for vcpu in self.vcpus:
                mp: int | None = None
                try:
                    mp = vcpu.fd.get_mp_state() if running or self.control.state == "paused" else None
                except Exception:   # a closed or stopped vCPU: the machine's state says enough
                    pass
                states.append(self.control.state if mp is None else
                              {0: "running", 1: "waiting for INIT/SIPI", 2: "INIT received", 3: "halted",
                               4: "SIPI received"}.get(mp, f"mp_state {mp}"))
        for entry_, state in zip(vcpus, states, strict=True):
            entry_["state"] = state
        virtio = []
        for t in self.virtio_devices:
            from .monitor.commands import queue_names

            names = queue_names(t)
            entry: dict[str, Any] = {"name": t.name, "device-id": getattr(t.device, "device_id", 0),
                                     "notifications": {names[i]: n for i, n in enumerate(t.notify_counts)}}
            info = getattr(t.device, "info", None)
            if getattr(t.device, "device_id", 0) == 5 and info is not None:
                b = info()
                entry["balloon"] = {"target": b.target, "actual": b.actual, "ram-size": b.ram_size,
                                    "guest-ram-rss": b.guest_ram_rss, "ballooned-pages": b.ballooned_pages}
            virtio.append(entry)
        return {"time": time.monotonic(), "status": self.control.state, "counting-started": started,
                "vcpus": vcpus, "pio": pio,
                "mmio": mmio, "unhandled": unhandled,
                "irqs": [{"gsi": g, "device": d, "raised": n} for g, d, n in self.irq_counts()],
                "virtio": virtio}

    def vcpu_state(self, cpu: int = 0) -> str:
        """What KVM says the vCPU does (its mp_state): "running", "halted", "waiting for INIT/SIPI"."""
        vcpu = self._vcpu(cpu)
        with self.quiesced():
            state = vcpu.fd.get_mp_state()
        return {0: "running", 1: "waiting for INIT/SIPI", 2: "INIT received", 3: "halted",
                4: "SIPI received"}.get(state, f"mp_state {state}")

    def cpus(self) -> list[dict]:
        """Each vCPU as QMP's query-cpus-fast gives it (plus its thread's state)."""
        out = []
        for v in self.vcpus:
            t = v.thread
            out.append({"cpu-index": v.index, "qom-path": f"/machine/unattached/device[{v.index}]",
                        "thread-id": t.native_id if t is not None and t.native_id else os.getpid(),
                        "props": {"core-id": 0, "thread-id": 0, "socket-id": v.index},
                        "target": "x86_64"})
        return out

    def device_tree(self) -> str:
        """The devices and where they sit, as the monitor's `info qtree` lists them."""
        from .arch.x86 import layout

        ind = "  "
        out = ["bus: main-system-bus", f"{ind}type System"]
        for t in self.virtio_devices:
            out += [f"{ind}dev: virtio-mmio, id \"\"", f"{ind * 2}gpio-out \"sysbus-irq\" 1",
                    f"{ind * 2}format_transport_address = true", f"{ind * 2}version = {t.version}",
                    f"{ind * 2}mmio {t.base:016x}/{0x200:016x}", f"{ind * 2}irq {t.irq_gsi}",
                    f"{ind * 2}bus: virtio-mmio-bus.{self.virtio_devices.index(t)}", f"{ind * 3}type virtio-mmio-bus"]
            dev = t.device
            name = {5: "virtio-balloon-device", 4: "virtio-rng-device"}.get(getattr(dev, "device_id", 0),
                                                                           type(dev).__name__)
            out.append(f"{ind * 3}dev: {name}, id \"{t.name}\"")
            for key, value in getattr(dev, "qdev_properties", lambda: {})().items():
                out.append(f"{ind * 4}{key} = {value}")
        out += [f"{ind}dev: i8042, id \"\"", f"{ind * 2}ports 0x60, 0x64; irq 1 (keyboard)",
                f"{ind}dev: isa-serial, id \"\"", f"{ind * 2}index = 0", f"{ind * 2}iobase = 0x3f8",
                f"{ind * 2}irq = {layout.SERIAL_IRQ}",
                f"{ind}dev: isa-debug-exit, id \"\"", f"{ind * 2}iobase = {layout.DEBUG_EXIT_PORT:#x}",
                f"{ind * 2}iosize = 0x4"]
        if self.vga is not None:
            out += [f"{ind}dev: vga-text, id \"\"", f"{ind * 2}ports 0x3c0-0x3df; text buffer 0xb8000"]
        if self.post is not None:
            out += [f"{ind}dev: post-port, id \"\"", f"{ind * 2}iobase = 0x80"]
        return "\n".join(out) + "\n"


    # --- a notebook's views -------------------------------------------------------------------------------

    def trace(self) -> Any:
        """The trace records kept so far (pyvmm.notebook.TraceView: a list of dicts, a table in a
        notebook); empty unless tracing is on (VmConfig(trace="virtio") or set_trace)."""
        from .notebook import TraceView

        return TraceView(list(self.tracer.records))

    def virtqueue(self, queue: str | int, device: str | None = None) -> Any:
        """One virtqueue now (pyvmm.virtio.queue.QueueSnapshot; in a notebook, its picture): by name
        ("inflateq") or index, on the named device or the one device that has such a queue."""
        from .monitor.commands import describe_queue, queue_names

        found = []
        for t in self.virtio_devices:
            if device is not None and t.name != device:
                continue
            names = queue_names(t)
            for i in range(len(t.queues)):
                if queue in (i, names[i], str(i)):
                    found.append((t, i))
        if not found:
            raise ValueError(f"no virtqueue {queue!r}" + (f" on {device}" if device else "") + " (devices: "
                             + ", ".join(t.name for t in self.virtio_devices) + ")")
        if len(found) > 1:
            raise ValueError(f"virtqueue {queue!r} is on {', '.join(t.name for t, _ in found)}: give device=")
        t, i = found[0]
        name, snap = describe_queue(t, i)
        return snap.labelled(t.name, name)

    def plot_memory_map(self, path: str | None = None) -> Any:
        """The guest-physical memory map (RAM, holes, MMIO windows, ROM) with ballooned pages shaded:
        a matplotlib Figure, written to path (PNG or SVG) if given."""
        from .plot import plot_memory_map

        b = self.balloon
        return plot_memory_map(self.memory_map(), path, ballooned=None if b is None else b.pages)

    def _summary_rows(self) -> list[tuple[str, str]]:
        from .units import format_size

        rows = [("state", self.status()), ("kernel", str(self.config.kernel or "the bundled tiny guest")),
                ("command line", self.cmdline), ("memory", format_size(self.ram_size)),
                ("vCPUs", f"{len(self.vcpus)} ({sum(v.exits for v in self.vcpus):,} exits)")]
        for t in self.virtio_devices:
            rows.append((f"virtio {t.name}", f"{type(t.device).__name__} at {t.base:#x}, irq {t.irq_gsi}"))
        b = self.balloon
        if b is not None:
            rows.append(("balloon", f"target {format_size(b.target)}, actual {format_size(b.actual_bytes)}"))
        if self.stop_reason:
            rows.append(("stopped", self.stop_reason))
        return rows

    def __repr__(self) -> str:
        return f"<pyvmm Machine {self.status()}, {self.ram_size >> 20} MiB, {len(self.vcpus)} vCPU(s)>"

    def _repr_html_(self) -> str:
        from .notebook import table_html

        return table_html(self._summary_rows(), "pyvmm Machine")

    # --- keyboard and screen (sendkey, send-key, screendump) ----------------------------------------------

    def send_keys(self, keys: list[str], hold_ms: int = 100) -> None:
        """Press the keys (QKeyCode names) together, release them hold_ms later (QMP send-key)."""
        self.keyboard.send_keys(keys, hold_ms / 1000)

    def type_text(self, data: bytes) -> None:
        """Type text on the PS/2 keyboard, as the console does with --vga text."""
        self.keyboard.type_text(data)

    def screen_text(self) -> str:
        """The VGA text screen as 25 lines; ValueError without a VGA (--vga none)."""
        from .devices.vga import screen_text

        if self.vga is None:
            raise ValueError("this machine has no VGA (--vga none)")
        return screen_text(self.vga.snapshot())

    def screendump(self, path: str, fmt: str | None = None) -> str:
        """Write the screen (PPM, PNG, or text for a .txt file); returns the format written."""
        from .devices.vga import screendump

        if self.vga is None:
            raise ValueError("this machine has no VGA (--vga none)")
        return screendump(self.vga, path, fmt)


def _release(control: RunControl, vcpus: list[Vcpu], resources: Resources, why: str) -> None:
    """Stop the vCPUs, wait for their threads, close what the machine holds (safe to call twice)."""
    if not control.stop_requested:
        control.stop(0, why)
    for v in vcpus:
        v.join(2)
    resources.close()


def _weak_reset(machine: Machine) -> Callable[[str], None]:
    """The run control's way to reset the machine on a guest's request, holding it only weakly."""
    ref = weakref.ref(machine)

    def reset(reason: str) -> None:
        m = ref()
        if m is not None:
            m.reset(guest=True, reason=reason)

    return reset

def _stderr_lines(text: str) -> None:
    emit_line("".join(f"pyvmm: {line}\n" for line in text.splitlines()))
