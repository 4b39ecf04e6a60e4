"""build_vm(cfg) -> Machine: the one place that wires KVM, guest memory, loaders, buses and devices together.

One small step per part, in boot order, each returning what it made (Firecracker's
build_microvm_for_boot): open KVM, create the VM, map guest RAM, attach the platform devices, attach
the virtio devices, write the ACPI tables, load the kernel, map the firmware, create the vCPUs.  What a
step opens goes into ``Resources`` at once, so a later step's failure closes everything before it.
"""

from __future__ import annotations

import mmap
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from .arch.x86 import cpu, layout, pvh
from .arch.x86.poweron import PlatformPowerOn, VcpuPowerOn
from .bus import MmioBus, PioBus
from .config import VmConfig
from .console import ConsoleLog
from .control import RunControl
from .devices.exit import DebugExit
from .devices.i8042 import I8042
from .devices.post import PostPort
from .devices.power import SleepControl
from .devices.serial import Serial16550
from .errors import ConfigError, LoaderError, host_limit
from .eventloop import EventLoop
from .guestlog import GuestErrorLog
from .irq import IrqfdLine, KvmIrqLine
from .kvm.abi import KvmCap
from .kvm.system import Kvm
from .memory import GuestMemory, MemoryRegion
from .trace import Tracer
from .vcpu import Vcpu, current_vcpu

if TYPE_CHECKING:
    from .devices.vga import VgaText
    from .ioeventfd import NotifyEventfds
    from .kvm.vcpufd import VcpuFd
    from .kvm.vmfd import VmFd
    from .loader.bzimage import BzImage
    from .loader.elf import ElfImage
    from .loader.firmware import FirmwareImage
    from .loader.multiboot import Module, MultibootImage
    from .virtio.device import VirtioDevice
    from .virtio.mmio import VirtioMmio
    from .vm import Machine


class Resources:
    """What a machine holds open (fds, mappings, threads), released in reverse order of acquisition."""

    def __init__(self) -> None:
        self._closers: list[Callable[[], None]] = []

    def add(self, closer: Callable[[], None]) -> None:
        self._closers.append(closer)

    def close(self) -> None:
        import logging

        while self._closers:
            closer = self._closers.pop()
            try:
                closer()
            except Exception:
                logging.getLogger("pyvmm").exception("closing failed")


def build_vm(cfg: VmConfig) -> Machine:
    """The machine ``cfg`` describes, built top to bottom; nothing is left open if a step fails."""
    from .vm import Machine

    res = Resources()
    try:
        kvm = open_kvm(cfg, res)
        control = RunControl()
        console = ConsoleLog(console_sink(cfg, res))
        control.add_listener(lambda event, data: console.close() if event == "SHUTDOWN" else None)
        tracer = make_tracer(cfg, res)
        event_loop = EventLoop()
        res.add(event_loop.stop)
        vmfd = create_vm(kvm, res)
        platform = PlatformPowerOn.capture(vmfd)        # the PIC, IOAPIC and PIT as KVM made them
        memory = map_ram(vmfd, cfg, res)
        pio, mmio = PioBus(), MmioBus(on_unmapped=GuestErrorLog("mmio"))
        serial, i8042 = attach_platform(vmfd, pio, control, console)
        notify_eventfds: dict[str, NotifyEventfds] = {}
        virtio = attach_virtio(vmfd, mmio, memory, cfg, tracer, event_loop, res, notify_eventfds)
        rsdp = write_boot_tables(memory, cfg, virtio)
        kernel = load_kernel(memory, cfg, virtio, rsdp)
        kernel.load(memory)
        vga = attach_vga(pio, memory, cfg, kernel)
        firmware, rom = map_firmware(vmfd, cfg, kernel, res)
        post = attach_post(pio, tracer, control, active=firmware is not None)
        vcpus = create_vcpus(kvm, vmfd, cfg, pio=pio, mmio=mmio, control=control, memory=memory,
                             rom=rom, res=res)
        control.vcpus = vcpus
        control.no_reboot, control.no_shutdown = cfg.no_reboot, cfg.no_shutdown
        kernel.enter(vcpus[0].fd, memory, firmware=firmware is not None, tracer=tracer)
        balloon = next((t for t in virtio if t.name == "balloon0"), None)
        return Machine.assemble(
            config=cfg, control=control, console=console, tracer=tracer, kvm=kvm, vmfd=vmfd,
            memory=memory, rom=rom, pio_bus=pio, mmio_bus=mmio, serial=serial, keyboard=i8042, vga=vga, post=post,
            virtio_devices=virtio, balloon_transport=balloon, acpi_rsdp=rsdp, kernel=kernel,
            firmware=firmware, vcpus=vcpus, event_loop=event_loop, resources=res, platform=platform,
            notify_eventfds=notify_eventfds,
        )
    except BaseException as e:
        res.close()          # nothing a failed build opened outlives it
        if isinstance(e, OSError) and (limit := host_limit(e, "cannot build the VM")) is not None:
            raise limit from None
        raise


# --- the steps, in boot order -------------------------------------------------------------------------


def open_kvm(cfg: VmConfig, res: Resources) -> Kvm:
    kvm = Kvm()
    res.add(kvm.close)
    kvm.require(KvmCap.IRQCHIP, KvmCap.USER_MEMORY, KvmCap.SET_TSS_ADDR, KvmCap.EXT_CPUID, KvmCap.PIT2,
                KvmCap.IMMEDIATE_EXIT)
    cfg.validate(max_vcpus=kvm.max_vcpus)
    return kvm


def make_tracer(cfg: VmConfig, res: Resources) -> Tracer:
    """The trace (--trace, -d) to standard error, one write per line (termout), or to -D's log file,
    which takes the guest-error lines as well."""
    from .termout import LineStream

    stream: TextIO | None = LineStream(2)  # type: ignore[assignment]
    if callable(cfg.console) or cfg.console == "capture":
        stream = sys.stderr       # beside the console, where the caller sees it (a notebook cell)
    if cfg.log_file is not None:
        stream = _open_log_file(cfg.log_file, res)
    if not cfg.trace_text:
        stream = None
    try:
        tracer = Tracer(set(cfg.trace), stream=stream,
                        json_path=str(cfg.trace_file) if cfg.trace_file else None)
    except OSError as e:
        raise ConfigError(f"--trace-file {str(cfg.trace_file)!r}: {e.strerror}") from None
    except ValueError as e:          # a NUL byte in the path
        raise ConfigError(f"--trace-file {str(cfg.trace_file)!r}: {e}") from None
    res.add(tracer.close)
    return tracer


def _open_log_file(path: Path, res: Resources) -> TextIO:
    import logging

    try:
        f = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed by the machine
    except (OSError, ValueError) as e:
        raise ConfigError(f"-D {path}: cannot write it ({getattr(e, 'strerror', None) or e})") from None
    handler = logging.StreamHandler(f)
    handler.setFormatter(logging.Formatter("pyvmm: %(name)s: %(message)s"))
    guest = logging.getLogger("pyvmm.guest")
    guest.addHandler(handler)
    guest.propagate = False

    def close() -> None:
        guest.removeHandler(handler)
        guest.propagate = True
        f.close()

    res.add(close)
    return f


def create_vm(kvm: Kvm, res: Resources) -> VmFd:
    """The VM with its in-kernel interrupt controllers (PIC, IOAPIC, LAPICs) and PIT."""
    vm = kvm.create_vm()
    res.add(vm.close)
    vm.set_tss_addr(layout.TSS_ADDR)
    vm.create_irqchip()
    vm.create_pit2()
    return vm


def map_ram(vm: VmFd, cfg: VmConfig, res: Resources) -> GuestMemory:
    try:
        mem = GuestMemory.anonymous(layout.ram_layout(cfg.memory), prealloc=cfg.mem_prealloc)
    except (OSError, OverflowError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"cannot map {cfg.memory >> 20} MiB of guest RAM ({why}): give the VM less with -m, "
                          "or the process more address space (ulimit -v, vm.overcommit_memory)") from None
    res.add(mem.close)
    for r in mem.regions:
        vm.set_user_memory_region(r.gpa, r.size, r.hva)
    return mem


def attach_platform(vm: VmFd, pio: PioBus, control: RunControl,
                    console: ConsoleLog) -> tuple[Serial16550, I8042]:
    """COM1, the debug-exit port, the ACPI sleep register and the i8042 (PS/2 keyboard, IRQ 1, reset)."""
    from .arch.x86.acpi import SLEEP_CONTROL_PORT

    serial = Serial16550(KvmIrqLine(vm, layout.SERIAL_IRQ), console.write)
    pio.insert(serial, layout.SERIAL_COM1, 8, "serial (16550A)")
    pio.insert(DebugExit(lambda code: control.stop(code, f"the guest exited with code {code}",
                                                   event_reason="guest-shutdown")),
               layout.DEBUG_EXIT_PORT, 4, "debug-exit")
    pio.insert(SleepControl(lambda: control.guest_poweroff("the guest powered off (ACPI S5)")),
               SLEEP_CONTROL_PORT, 2, "acpi sleep control")
    i8042 = I8042(lambda: control.guest_reset(current_vcpu(), "the guest requested a reset (i8042)"),
                  KvmIrqLine(vm, layout.I8042_KBD_IRQ))
    pio.insert(i8042, layout.I8042_DATA_PORT, 5, "i8042 (PS/2 keyboard)")
    return serial, i8042


def attach_virtio(vm: VmFd, mmio: MmioBus, mem: GuestMemory, cfg: VmConfig, tracer: Tracer,
                  event_loop: EventLoop, res: Resources,
                  notify_eventfds: dict[str, NotifyEventfds] | None = None) -> list[VirtioMmio]:
    """A virtio-mmio window and an interrupt line per device: the balloon first (unless off), then
    cfg.devices in order; each transport's QueueNotify ioeventfds go into notify_eventfds by its name."""
    devices: list[tuple[str, VirtioDevice]] = []
    if cfg.balloon is not None:
        from .virtio.balloon import BalloonOptions, VirtioBalloon

        opts = BalloonOptions() if cfg.balloon == "default" else cfg.balloon
        balloon = VirtioBalloon(mem, opts, discard=mem.discard)
        res.add(balloon.close)
        devices.append(("balloon0", balloon))
    counts: dict[str, int] = {}
    from .virtio.device import VirtioDeviceBase

    for spec in cfg.devices:
        # A spec (RngOptions, UserDevice) makes its device; the Python API may give a device itself.
        if isinstance(spec, VirtioDeviceBase):
            device, stem = spec, type(spec).__name__.lower()
        else:
            device, stem = spec.make(), spec.name
        close = getattr(device, "close", None)
        if callable(close):
            res.add(close)
        counts[stem] = counts.get(stem, -1) + 1
        devices.append((f"{stem}{counts[stem]}", device))
    return [_attach_one(vm, mmio, mem, cfg, tracer, event_loop, res, notify_eventfds, index, name, device)
            for index, (name, device) in enumerate(devices)]


def _attach_one(vm: VmFd, mmio: MmioBus, mem: GuestMemory, cfg: VmConfig, tracer: Tracer, event_loop: EventLoop,
                res: Resources, notify_eventfds: dict[str, NotifyEventfds] | None, index: int, name: str,
                device: VirtioDevice) -> VirtioMmio:
    from .virtio.mmio import VirtioMmio

    base, gsi = layout.virtio_mmio_slot(index)
    irq: IrqfdLine | KvmIrqLine
    if cfg.irqfd:
        # After the guest's EOI the kernel lowers the line; raise it again if the device still has
        # something pending (the transport is bound below, before any interrupt can happen).
        irq = IrqfdLine(vm, gsi)
        res.add(irq.close)
        event_loop.add(irq.resample_fd, irq.on_resample)
    else:
        irq = KvmIrqLine(vm, gsi)
    transport = VirtioMmio(device, mem, irq, version=cfg.virtio_version, name=name, tracer=tracer,
                           base=base, irq_gsi=gsi)
    if isinstance(irq, IrqfdLine):
        irq.pending = lambda: transport.interrupt_status != 0
    mmio.insert(transport, base, VirtioMmio.WINDOW_SIZE, f"virtio-mmio {name}")
    if cfg.ioeventfd:
        fds = _wire_ioeventfds(vm, transport, event_loop, res)
        if notify_eventfds is not None:
            notify_eventfds[transport.name] = fds
    return transport


def write_boot_tables(mem: GuestMemory, cfg: VmConfig, virtio: list[VirtioMmio]) -> int:
    """What a PC's firmware leaves in RAM for the OS, at build and at every reset: the ACPI tables
    (unless --no-acpi) and the MP table.  Returns the RSDP's gpa (0: none)."""
    rsdp = write_acpi(mem, cfg, virtio)
    write_mp_table(mem, cfg, virtio)
    return rsdp


def write_acpi(mem: GuestMemory, cfg: VmConfig, virtio: list[VirtioMmio]) -> int:
    """ACPI tables, as QEMU microvm and Firecracker give them: stock x86 kernels find virtio-mmio devices
    only through the DSDT (LNRO0005) and their CPUs through the MADT.  Returns the RSDP's gpa (0: none)."""
    if not cfg.acpi:
        return 0
    from .arch.x86.acpi import build_acpi_tables

    windows = [(t.base, t.WINDOW_SIZE, t.irq_gsi) for t in virtio]
    blob, rsdp = build_acpi_tables(layout.ACPI_START, cfg.smp, windows)
    mem.write(layout.ACPI_START, blob)
    return rsdp


def write_mp_table(mem: GuestMemory, cfg: VmConfig, virtio: list[VirtioMmio]) -> None:
    """The MP table, with ACPI on or off, as Firecracker and kvmtool write it: it ends Linux's scan of the
    BIOS area early, and with ACPI off it is how Linux finds every vCPU and the IOAPIC."""
    from .arch.x86.mptable import build_mp_table

    for gpa, piece in build_mp_table(cfg.smp, [t.irq_gsi for t in virtio]):
        mem.write(gpa, piece)


@dataclass
class KernelLoad:
    """The kernel as it goes into guest RAM: written at build and again at every reset, then entered.

    Three kinds, one per boot protocol pyvmm speaks: a PVH ELF (``ElfImage``), a Linux bzImage
    (``BzImage``) and a Multiboot v1 kernel (``MultibootImage``); load() and enter() dispatch on it.
    """

    path: Path
    image: ElfImage | BzImage | MultibootImage
    cmdline: str
    initrd: bytes | None
    rsdp: int = 0                 # the ACPI RSDP's gpa, handed to the kernel (0: no ACPI)
    boot_info: int = 0            # PVH: the hvm_start_info; Multiboot: the multiboot_info (set by load())
    modules: list[Module] = field(default_factory=list)    # Multiboot: -initrd's modules

    @property
    def is_bzimage(self) -> bool:
        return self.image.boot_protocol == "linux"

    @property
    def is_multiboot(self) -> bool:
        return self.image.boot_protocol == "multiboot"

    @property
    def protocol(self) -> str:
        """"pvh", "linux" or "multiboot" (each image class says which; only its own module is imported)."""
        return self.image.boot_protocol

    @property
    def entry32(self) -> int:
        """The 32-bit entry the firmware (or the direct path) jumps to: PVH and Multiboot kernels."""
        if self.is_multiboot:
            return cast("MultibootImage", self.image).entry
        entry = getattr(self.image, "pvh_entry", None)
        assert entry is not None, "a bzImage has no 32-bit entry"
        return entry

    @property
    def boot_magic(self) -> int:
        """EAX at the 32-bit entry: 0x2BADB002 for Multiboot, 0 for PVH."""
        if not self.is_multiboot:
            return 0
        from .loader.multiboot import MULTIBOOT_BOOTLOADER_MAGIC

        return MULTIBOOT_BOOTLOADER_MAGIC

    def load(self, mem: GuestMemory) -> None:
        """Segments (or the protected-mode kernel), initrd or modules, command line and boot information."""
        cmdline = self.cmdline.encode()
        ram = mem.ram_size
        if self.is_multiboot:
            from .loader.multiboot import write_boot_info

            placed = write_boot_info(mem, cast("MultibootImage", self.image), ram_size=ram, cmdline=cmdline,
                                     modules=self.modules)
            self.boot_info = placed.info
            return
        if self.is_bzimage:
            from .loader.bzimage import build_boot_params, e820_map, place_initrd

            bz = cast("BzImage", self.image)
            mem.write(bz.load_address, bz.protected_mode_kernel)
            initrd_gpa = initrd_size = 0
            if self.initrd is not None:
                initrd_size = len(self.initrd)
                initrd_gpa = place_initrd(bz, initrd_size, ram)
                mem.write(initrd_gpa, self.initrd)
            mem.write(layout.BOOT_CMDLINE, cmdline + b"\0")
            params = build_boot_params(bz, e820=e820_map(ram), cmdline_gpa=layout.BOOT_CMDLINE,
                                       cmdline_len=len(cmdline), initrd_gpa=initrd_gpa, initrd_size=initrd_size,
                                       acpi_rsdp_addr=self.rsdp)
            mem.write(layout.BOOT_INFO, params)
            return
        from .loader.elf import place_segments

        elf = cast("ElfImage", self.image)
        place_segments(elf, mem)
        initrd = None
        if self.initrd is not None:
            top = min(ram, layout.RAM_LOW_END)
            gpa = (top - len(self.initrd)) & ~0xFFF
            if gpa <= elf.highest:
                raise LoaderError(f"initrd: {len(self.initrd)} bytes do not fit in guest RAM above the kernel")
            mem.write(gpa, self.initrd)
            initrd = (gpa, len(self.initrd))
        self.boot_info = pvh.write_start_info(mem, ram, cmdline, initrd=initrd, rsdp=self.rsdp)

    def enter(self, bsp: VcpuFd, mem: GuestMemory, *, firmware: bool, tracer: Tracer) -> None:
        """The BSP's first state: the 64-bit boot protocol for a bzImage; for a PVH or Multiboot kernel
        the reset vector (the firmware takes it from there) or the 32-bit entry directly."""
        if self.is_bzimage:
            bz = cast("BzImage", self.image)
            cpu.set_linux64_entry_state(bsp, mem, bz.entry_64, layout.BOOT_INFO)
            if tracer.boot:
                tracer.emit("boot", f"Linux 64-bit boot protocol {bz.protocol[0]}.{bz.protocol[1]:02d}: "
                            f"pyvmm set long mode with an identity map, RIP={bz.entry_64:#x}, "
                            f"RSI={layout.BOOT_INFO:#x} (boot_params)", stage="linux64-entry")
        elif not firmware:
            entry = self.entry32
            cpu.write_boot_gdt(mem)
            if self.is_multiboot:
                cpu.set_multiboot_entry_state(bsp, entry, self.boot_info)
                what, regs = "Multiboot", f"EAX={self.boot_magic:#x}, EBX={self.boot_info:#x} (multiboot_info)"
            else:
                cpu.set_pvh_entry_state(bsp, entry, self.boot_info)
                what, regs = "PVH", f"EBX={self.boot_info:#x}"
            if tracer.boot:
                tracer.emit("boot", f"direct {what} entry (no firmware): pyvmm set 32-bit protected mode, "
                            f"CR0=0x11 (PE|ET), CS=0x10 flat, EIP={entry:#x}, {regs}",
                            stage="direct-entry", cr0=0x11, rip=entry, rbx=self.boot_info, rax=self.boot_magic)
        # With the firmware, a new vCPU already sits at the reset vector (CS.base 0xFFFF0000, IP 0xFFF0).


KNOWN_FORMATS = ("pyvmm boots three kinds of kernel: a Linux bzImage (boot protocol header \"HdrS\"), a "
                 "Multiboot v1 kernel (header in the first 8 KiB) and a PVH ELF (XEN_ELFNOTE_PHYS32_ENTRY note)")


def load_kernel(mem: GuestMemory, cfg: VmConfig, virtio: list[VirtioMmio], rsdp: int) -> KernelLoad:
    """The kernel, recognised, checked and parsed, with its command line and initrd or modules; nothing
    is written to RAM yet.

    A file may carry more than one boot header; the first that matches wins, in QEMU's order
    (hw/i386/x86.c, x86_load_linux): the bzImage's "HdrS", then a Multiboot header, then the PVH note.
    A Multiboot ELF may well carry a PVH note too, and its author chose Multiboot by writing the header.
    """
    kernel = cfg.kernel_path
    if not kernel.exists():
        hint = " (run `make build` to build the demo guest)" if cfg.kernel is None else ""
        raise LoaderError(f"kernel {kernel}: no such file{hint}")
    _check_file(kernel, "kernel", cfg.memory)
    from .loader.signatures import MULTIBOOT_SEARCH, may_be_bzimage, may_be_multiboot

    try:
        with open(kernel, "rb") as f:
            head = f.read(MULTIBOOT_SEARCH)
    except OSError as e:
        raise LoaderError(f"kernel {kernel}: {e.strerror}") from None
    if may_be_bzimage(head):
        return _load_bzimage(kernel, cfg, virtio, rsdp)
    if may_be_multiboot(head):
        from .loader.multiboot import find_header

        if find_header(head) is not None:
            return _load_multiboot(kernel, cfg, virtio, rsdp)
    from .loader.cache import load_cached
    from .loader.elf import is_elf, load_elf

    if not is_elf(kernel):
        from .loader.multiboot import header_problem  # only on the way to an error

        problem = header_problem(kernel.read_bytes())
        raise LoaderError(f"kernel {kernel}: {problem or 'no boot header pyvmm knows'}; {KNOWN_FORMATS}")
    image = load_cached(load_elf, kernel, "kernel")
    if image.pvh_entry is None:
        from .loader.multiboot import header_problem

        problem = header_problem(kernel.read_bytes())
        if problem:
            raise LoaderError(f"kernel {kernel}: {problem}")
        raise LoaderError(f"kernel {kernel}: an ELF with neither a PVH entry note nor a Multiboot header; "
                          f"{KNOWN_FORMATS} (Linux: build with CONFIG_PVH=y, or boot its bzImage)")
    for s in image.segments:
        if not mem.contains(s.paddr, s.memsz):
            raise LoaderError(f"kernel {kernel}: segment at {s.paddr:#x}+{s.memsz:#x} does not fit in "
                              "guest RAM (give the VM more memory with -m)")
    initrd = _read_initrd(cfg)
    cmdline = _cmdline(cfg, virtio, announce_default=not (image.is_linux and cfg.acpi))
    return KernelLoad(kernel, image, cmdline, initrd, rsdp=rsdp)


def _load_bzimage(kernel: Path, cfg: VmConfig, virtio: list[VirtioMmio], rsdp: int) -> KernelLoad:
    from .loader.bzimage import parse_bzimage

    image = parse_bzimage(kernel.read_bytes(), name=f"kernel {kernel}")
    if image.runtime_end > min(cfg.memory, layout.RAM_LOW_END):
        raise ConfigError(f"kernel {kernel} needs {image.runtime_end >> 20} MiB of RAM to unpack; "
                          f"give the VM more with -m")
    initrd = _read_initrd(cfg)
    return KernelLoad(kernel, image, _cmdline(cfg, virtio, announce_default=not cfg.acpi), initrd, rsdp=rsdp)


def _load_multiboot(kernel: Path, cfg: VmConfig, virtio: list[VirtioMmio], rsdp: int) -> KernelLoad:
    """A Multiboot kernel: its command line is the kernel's file name, a space and -append, as QEMU
    and GRUB give it; -initrd is a comma-separated list of modules, each "file [its string]"."""
    from .loader.multiboot import Module, check_placement, parse_module_list, parse_multiboot

    image = parse_multiboot(kernel.read_bytes(), kernel)
    check_placement(image, cfg.memory)
    modules = []
    if cfg.initrd is not None:
        for name, string in parse_module_list(str(cfg.initrd)):
            _check_file(Path(name), "module", cfg.memory)
            try:
                data = Path(name).read_bytes()
            except OSError as e:
                raise LoaderError(f"module {name}: {e.strerror}") from None
            modules.append(Module(data, string.encode()))
    # A toy kernel has no virtio driver: no virtio_mmio.device= unless asked (--virtio-cmdline).
    extra = _cmdline(cfg, virtio, announce_default=False, append="")
    cmdline = f"{cfg.kernel_path} {cfg.append.strip()}" + (f" {extra}" if extra else "")
    if len(cmdline.encode()) >= layout.BOOT_CMDLINE_MAX:
        raise ConfigError(f"kernel command line is {len(cmdline.encode())} bytes; at most "
                          f"{layout.BOOT_CMDLINE_MAX - 1} fit")
    return KernelLoad(kernel, image, cmdline, None, rsdp=rsdp, modules=modules)


def _read_initrd(cfg: VmConfig) -> bytes | None:
    if cfg.initrd is None:
        return None
    _check_file(Path(cfg.initrd), "initrd", cfg.memory)
    try:
        return Path(cfg.initrd).read_bytes()
    except OSError as e:
        raise LoaderError(f"initrd {cfg.initrd}: {e.strerror}") from None


def _cmdline(cfg: VmConfig, virtio: list[VirtioMmio], *, announce_default: bool, append: str | None = None) -> str:
    """-append, and virtio_mmio.device= for each device unless the kernel finds them in ACPI.

    Linux finds virtio-mmio devices in the DSDT; announcing them on the command line as well would
    register each twice (the second probe fails with EBUSY).  Other kernels get the parameter."""
    announce = cfg.virtio_cmdline if cfg.virtio_cmdline is not None else announce_default
    devices = [f"virtio_mmio.device={t.WINDOW_SIZE:#x}@{t.base:#x}:{t.irq_gsi}" for t in virtio] if announce else []
    text = cfg.append.strip() if append is None else append
    cmdline = " ".join(x for x in [text, *devices] if x)
    if len(cmdline.encode()) >= layout.BOOT_CMDLINE_MAX:
        raise ConfigError(f"kernel command line is {len(cmdline.encode())} bytes; at most "
                          f"{layout.BOOT_CMDLINE_MAX - 1} fit")
    return cmdline


def attach_vga(pio: PioBus, mem: GuestMemory, cfg: VmConfig, kernel: KernelLoad) -> VgaText | None:
    """The VGA text console (its registers at 0x3C0-0x3DF; the buffer is guest RAM at 0xB8000): by default
    for Multiboot kernels, which print there, and not for the others, which use the serial port."""
    mode = cfg.vga if cfg.vga is not None else ("text" if kernel.is_multiboot else "none")
    if mode != "text":
        return None
    from .devices.vga import VgaText, attach_buffer

    vga = VgaText(attach_buffer(mem))
    base, end = layout.VGA_PORTS
    pio.insert(vga, base, end - base, "vga")
    return vga


def map_firmware(vm: VmFd, cfg: VmConfig, kernel: KernelLoad,
                 res: Resources) -> tuple[FirmwareImage | None, MemoryRegion | None]:
    """The boot ROM (PVH and Multiboot kernels, unless --no-firmware): its hand-off words patched, mapped
    read-only just below 4 GiB so that the reset vector lands in it."""
    if kernel.is_bzimage or cfg.firmware is None:
        return None, None
    from .loader.cache import load_cached
    from .loader.firmware import load_firmware

    fw = load_cached(load_firmware, Path(cfg.firmware), "firmware")
    rom = fw.with_handoff(kernel.entry32, kernel.boot_info, kernel.boot_magic)
    buf = mmap.mmap(-1, len(rom), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf[:] = rom
    region = MemoryRegion(layout.FIRMWARE_BASE, len(rom), buf, name="firmware")
    res.add(lambda: _close_region(region))
    vm.set_user_memory_region(layout.FIRMWARE_BASE, len(rom), region.hva, readonly=True)
    return fw, region


def attach_post(pio: PioBus, tracer: Tracer, control: RunControl, *, active: bool) -> PostPort:
    """Port 0x80: the firmware's stage codes, with the writing vCPU's state for the boot trace."""

    def cpu_state() -> dict[str, Any] | None:
        v = current_vcpu()
        if v is None:
            return None
        s, r = v.fd.get_sregs(), v.fd.get_regs()
        return {"cr0": s.cr0, "cs": s.cs.selector, "cs_base": s.cs.base, "rip": r.rip, "gdt_base": s.gdt.base,
                "gdt_limit": s.gdt.limit}

    def on_error(why: str) -> None:
        v = current_vcpu()
        if v is not None:
            control.guest_crashed(v, why)

    post = PostPort(tracer, active=active, cpu_state=cpu_state, on_error=on_error)
    pio.insert(post, layout.POST_PORT, 1, "post (boot stages)")
    return post


def create_vcpus(kvm: Kvm, vm: VmFd, cfg: VmConfig, *, pio: PioBus, mmio: MmioBus, control: RunControl,
                 memory: GuestMemory, rom: MemoryRegion | None, res: Resources) -> list[Vcpu]:
    """The vCPUs, each with pyvmm's CPUID policy (arch/x86/cpuid.py) and its APIC ID."""
    from .arch.x86.cpuid import is_kvm_pvm_host

    passthrough = cfg.cpu_passthrough if cfg.cpu_passthrough is not None else not is_kvm_pvm_host()
    read_rom = _rom_reader(rom)
    vcpus = []
    for i in range(cfg.smp):
        fd = vm.create_vcpu(i)
        res.add(fd.close)
        cpu.setup_cpuid(kvm, fd, i, cfg.smp, passthrough=passthrough)
        v = Vcpu(fd, i, pio=pio, mmio=mmio, control=control, memory=memory, read_rom=read_rom)
        v.power_on = VcpuPowerOn.capture(fd)           # before any entry state: what a reset restores
        vcpus.append(v)
    return vcpus


# --- helpers -------------------------------------------------------------------------------------------


def _rom_reader(rom: MemoryRegion | None) -> Callable[[int, int], bytes | None]:
    def read(gpa: int, n: int) -> bytes | None:
        if rom is None or not rom.gpa <= gpa < rom.end:
            return None
        off = gpa - rom.gpa
        return bytes(rom.view[off : min(off + n, rom.size)])

    return read


def _close_region(region: MemoryRegion) -> None:
    region.view.release()
    try:
        region.buffer.close()      # type: ignore[union-attr]
    except BufferError:
        pass


def _check_file(path: Path, what: str, limit: int) -> None:
    """A kernel or initrd must be a readable regular file that could fit in guest RAM: /dev/zero or a
    FIFO would otherwise be read until the host runs out of memory (or forever)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise LoaderError(f"{what} {path}: no such file") from None
    except OSError as e:
        raise LoaderError(f"{what} {path}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise LoaderError(f"{what} {path}: is a directory, not a {what} file")
    if not stat.S_ISREG(st.st_mode):
        raise LoaderError(f"{what} {path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise LoaderError(f"{what} {path}: permission denied")
    if st.st_size > limit:
        raise LoaderError(f"{what} {path}: {st.st_size} bytes do not fit in {limit >> 20} MiB of guest RAM")


def console_sink(cfg: VmConfig, res: Resources) -> Callable[[bytes], None] | None:
    """Where the guest's serial output goes besides the machine's ConsoleLog: this process's stdout
    (whole lines when it is not a terminal; termout), a file (-serial file:PATH), or nowhere."""
    from .termout import GuestOutput

    log = None
    if cfg.console_log is not None:
        log = _open_for_writing(cfg.console_log, "--console-log", res)
    if callable(cfg.console) or cfg.console == "capture":
        from .notebook import capture_sink, text_sink

        out_text = capture_sink() if cfg.console == "capture" else text_sink(cfg.console)
        return out_text if log is None else _tee(log, out_text)
    if cfg.console == "none":
        if log is None:
            return None
        fd_log = log
        return lambda data: None if os.write(fd_log, data) else None
    if cfg.console == "stdio":
        fd = sys.stdout.fileno() if hasattr(sys.stdout, "fileno") else 1
    else:
        fd = _open_for_writing(cfg.console.removeprefix("file:"), "-serial file:", res)
    out = GuestOutput(fd)
    res.add(out.close)
    return out if log is None else _tee(log, out)


def _tee(log_fd: int, sink: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """The guest's output to the console log (--console-log; a failing write is dropped) and to sink."""
    def both(data: bytes) -> None:
        try:
            os.write(log_fd, data)
        except OSError:
            pass
        sink(data)

    return both


def _open_for_writing(path, what: str, res: Resources) -> int:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except (OSError, ValueError) as e:
        sep = "" if what.endswith(":") else " "
        raise ConfigError(f"{what}{sep}{path}: cannot write it ({getattr(e, 'strerror', None) or e})") from None
    res.add(lambda: os.close(fd))
    return fd


def _wire_ioeventfds(vm: VmFd, transport: VirtioMmio, event_loop: EventLoop, res: Resources) -> NotifyEventfds:
    """QueueNotify through KVM_IOEVENTFD: one eventfd per queue index (datamatch), served by the
    event loop, so a notify does not return to Python on the vCPU thread."""
    from .ioeventfd import NotifyEventfds

    fds = NotifyEventfds(vm, transport, event_loop)
    res.add(fds.close)
    fds.assign()
    return fds
