"""build_vm: the one place that wires KVM, guest memory, boot loaders, buses and devices together."""

from __future__ import annotations

import mmap
import os
import sys
from pathlib import Path

from .arch.x86 import cpu, layout, pvh
from .bus import Bus
from .config import VmConfig
from .devices.exit import DebugExit
from .devices.serial import Serial16550
from .errors import ConfigError, LoaderError, PyvmmError
from .irq import IrqfdLine, KvmIrqLine
from .kvm.abi import KvmCap
from .kvm.system import Kvm
from .memory import GuestMemory
from .vcpu import Vcpu

TSS_ADDR = 0xFFFB_D000   # three pages KVM needs for real mode on VMX hosts; below the ROM


class PostPort:
    """Port 0x80: the firmware writes its boot-stage codes here (the PC's POST code port)."""

    def __init__(self, machine) -> None:
        self.machine = machine
        self.active = machine.firmware_image is not None

    def read(self, offset: int, size: int) -> int:
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        if self.active:
            self.machine._boot_stage(value & 0xFF)


def build_vm(m, cfg: VmConfig) -> None:
    """Fill the Machine ``m`` from ``cfg``, top to bottom, in plain sight."""
    kvm = Kvm()
    m._closers.append(kvm.close)
    kvm.require(KvmCap.IRQCHIP, KvmCap.USER_MEMORY, KvmCap.SET_TSS_ADDR, KvmCap.EXT_CPUID, KvmCap.PIT2,
                KvmCap.IMMEDIATE_EXIT)
    cfg.validate(max_vcpus=kvm.max_vcpus)
    m.kvm = kvm

    from .trace import Tracer

    try:
        m.tracer = Tracer(set(cfg.trace), stream=sys.stderr,
                          json_path=str(cfg.trace_file) if cfg.trace_file else None)
    except OSError as e:
        raise ConfigError(f"--trace-file {cfg.trace_file}: {e.strerror}") from None
    m._closers.append(m.tracer.close)

    # The VM, its interrupt controllers and timer.
    vm = kvm.create_vm()
    m._closers.append(vm.close)
    m.vmfd = vm
    vm.set_tss_addr(TSS_ADDR)
    vm.create_irqchip()
    vm.create_pit2()

    # Guest RAM.
    try:
        mem = GuestMemory.anonymous(layout.ram_layout(cfg.memory), prealloc=cfg.mem_prealloc)
    except (OSError, OverflowError) as e:
        raise ConfigError(f"cannot map {cfg.memory >> 20} MiB of guest RAM: {e}") from None
    m.memory = mem
    m._closers.append(mem.close)
    for r in mem.regions:
        vm.set_user_memory_region(r.gpa, r.size, r.hva)

    # Buses and platform devices.
    m.pio_bus = Bus("pio")
    m.mmio_bus = Bus("mmio")
    m.serial = Serial16550(KvmIrqLine(vm, layout.SERIAL_IRQ), m._console_write)
    m.pio_bus.insert(m.serial, layout.SERIAL_COM1, 8, "serial (16550A)")
    m.pio_bus.insert(DebugExit(m._guest_exit), layout.DEBUG_EXIT_PORT, 4, "debug-exit")
    from .arch.x86.acpi import SLEEP_CONTROL_PORT
    from .devices.power import I8042, SleepControl

    m.pio_bus.insert(SleepControl(lambda: m.stop(0, "the guest powered off", event_reason="guest-shutdown")),
                     SLEEP_CONTROL_PORT, 2, "acpi sleep control")
    m.pio_bus.insert(I8042(lambda: m.stop(0, "the guest requested a reset; pyvmm does not reboot, stopping",
                                          event_reason="guest-reset")), 0x60, 5, "i8042 (reset)")

    # virtio-mmio devices, announced on the command line as Linux expects.
    cmdline_devices = []
    if cfg.balloon is not None:
        from .virtio.balloon import BalloonOptions, VirtioBalloon
        from .virtio.mmio import VirtioMmio

        opts = BalloonOptions() if cfg.balloon == "default" else cfg.balloon
        base, gsi = layout.virtio_mmio_slot(len(m.virtio_devices))
        balloon = VirtioBalloon(mem, opts, discard=mem.discard)
        m._closers.append(balloon.close)
        if cfg.irqfd:
            # After the guest's EOI the kernel lowers the line; raise it again if the device still
            # has something pending (the transport is bound below, before any interrupt can happen).
            irq = IrqfdLine(vm, gsi, lambda: transport.interrupt_status != 0)
            m._closers.append(irq.close)
            m.event_loop.add(irq.resample_fd, irq.on_resample)
        else:
            irq = KvmIrqLine(vm, gsi)
        transport = VirtioMmio(balloon, mem, irq, version=cfg.virtio_version, name="balloon0",
                               tracer=m.tracer)
        transport.base = base
        transport.irq_gsi = gsi
        m.mmio_bus.insert(transport, base, VirtioMmio.WINDOW_SIZE, "virtio-mmio balloon0")
        m.virtio_devices.append(transport)
        m.balloon, m.balloon_transport = balloon, transport
        cmdline_devices.append(f"virtio_mmio.device={VirtioMmio.WINDOW_SIZE:#x}@{base:#x}:{gsi}")
        if cfg.ioeventfd:
            _wire_ioeventfds(m, vm, transport, base)

    # ACPI tables, as QEMU microvm and Firecracker give them: stock x86 kernels find virtio-mmio
    # devices only through the DSDT (LNRO0005) and their CPUs through the MADT.
    rsdp = 0
    if cfg.acpi:
        from .arch.x86.acpi import build_acpi_tables
        from .virtio.mmio import VirtioMmio

        windows = [(t.base, VirtioMmio.WINDOW_SIZE, t.irq_gsi) for t in m.virtio_devices]
        blob, rsdp = build_acpi_tables(layout.ACPI_START, cfg.smp, windows)
        mem.write(layout.ACPI_START, blob)
    m.acpi_rsdp = rsdp

    # The kernel: a PVH ELF (the tiny guest, Linux's vmlinux) or a bzImage (the Linux boot protocol).
    kernel = cfg.kernel_path
    if not kernel.exists():
        hint = " (run `make build` to build the demo guest)" if cfg.kernel is None else ""
        raise LoaderError(f"kernel {kernel}: no such file{hint}")
    _check_file(kernel, "kernel", cfg.memory)
    if cfg.initrd is not None:
        _check_file(Path(cfg.initrd), "initrd", cfg.memory)
    from .loader.cache import load_cached
    from .loader.elf import is_elf, load_elf, place_segments

    bzimage = image = None
    if is_elf(kernel):
        image = load_cached(load_elf, kernel, "kernel")
        if image.pvh_entry is None:
            raise LoaderError(f"kernel {kernel}: no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); "
                              "build it with a PVH note (Linux: CONFIG_PVH=y), or boot its bzImage")
    else:
        from .loader.bzimage import is_bzimage, parse_bzimage

        data = kernel.read_bytes()
        if not is_bzimage(data):
            raise LoaderError(f"kernel {kernel}: neither an ELF file nor a bzImage (pyvmm boots PVH ELF "
                              f"kernels such as guest/build/guest.elf, and Linux bzImages)")
        bzimage = parse_bzimage(data, name=f"kernel {kernel}")
    # Linux finds virtio-mmio devices in the DSDT; announcing them on the command line as well would
    # register each twice (the second probe fails with EBUSY).  Other kernels get the parameter.
    is_linux = bzimage is not None or image.is_linux
    announce = cfg.virtio_cmdline if cfg.virtio_cmdline is not None else not (is_linux and cfg.acpi)
    cmdline = " ".join(x for x in [cfg.append.strip(), *(cmdline_devices if announce else [])] if x).encode()
    if len(cmdline) >= layout.BOOT_CMDLINE_MAX:
        raise ConfigError(f"kernel command line is {len(cmdline)} bytes; at most "
                          f"{layout.BOOT_CMDLINE_MAX - 1} fit")
    m.cmdline = cmdline.decode()
    if image is not None:
        place_segments(image, mem)
        initrd = None
        if cfg.initrd is not None:
            initrd = _load_initrd(mem, cfg.initrd, image.highest, cfg.memory)
        start_info = pvh.write_start_info(mem, cfg.memory, cmdline, initrd=initrd, rsdp=rsdp)
        m.kernel_image = image
    else:
        from .loader.bzimage import build_boot_params, e820_map, place_initrd

        if bzimage.runtime_end > min(cfg.memory, layout.RAM_LOW_END):
            raise ConfigError(f"kernel {kernel} needs {bzimage.runtime_end >> 20} MiB of RAM to unpack; "
                              f"give the VM more with -m")
        mem.write(bzimage.load_address, bzimage.protected_mode_kernel)
        initrd_gpa = initrd_size = 0
        if cfg.initrd is not None:
            try:
                initrd_data = Path(cfg.initrd).read_bytes()
            except OSError as e:
                raise LoaderError(f"initrd {cfg.initrd}: {e.strerror}") from None
            initrd_size = len(initrd_data)
            initrd_gpa = place_initrd(bzimage, initrd_size, cfg.memory)
            mem.write(initrd_gpa, initrd_data)
        mem.write(layout.BOOT_CMDLINE, cmdline + b"\0")
        params = build_boot_params(bzimage, e820=e820_map(cfg.memory), cmdline_gpa=layout.BOOT_CMDLINE,
                                   cmdline_len=len(cmdline), initrd_gpa=initrd_gpa, initrd_size=initrd_size,
                                   acpi_rsdp_addr=rsdp)
        mem.write(layout.BOOT_INFO, params)
        m.kernel_image = bzimage

    # vCPUs, with pyvmm's CPUID policy.  The BSP enters a PVH kernel through the firmware (from the
    # reset vector) or directly at its 32-bit entry; a bzImage at its 64-bit entry.
    from .arch.x86.cpuid import is_kvm_pvm_host

    passthrough = cfg.cpu_passthrough if cfg.cpu_passthrough is not None else not is_kvm_pvm_host()
    for i in range(cfg.smp):
        fd = vm.create_vcpu(i)
        m._closers.append(fd.close)
        cpu.setup_cpuid(kvm, fd, i, cfg.smp, passthrough=passthrough)
        m.vcpus.append(Vcpu(m, fd, i))
    bsp = m.vcpus[0].fd
    if bzimage is not None:
        cpu.set_linux64_entry_state(bsp, mem, bzimage.entry_64, layout.BOOT_INFO)
        if m.tracer.wants("boot"):
            m.tracer.emit("boot", f"Linux 64-bit boot protocol {bzimage.protocol[0]}.{bzimage.protocol[1]:02d}: "
                          f"pyvmm set long mode with an identity map, RIP={bzimage.entry_64:#x}, "
                          f"RSI={layout.BOOT_INFO:#x} (boot_params)", stage="linux64-entry")
    elif cfg.firmware is not None:
        from .loader.firmware import load_firmware

        fw = load_cached(load_firmware, Path(cfg.firmware), "firmware")
        rom = fw.with_handoff(image.pvh_entry, start_info)
        buf = mmap.mmap(-1, len(rom), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf[:] = rom
        from .memory import MemoryRegion

        region = MemoryRegion(layout.FIRMWARE_BASE, len(rom), buf, name="firmware")
        vm.set_user_memory_region(layout.FIRMWARE_BASE, len(rom), region.hva, readonly=True)
        m._firmware_region = region
        m.firmware_image = bytes(rom)
        m.firmware_base = layout.FIRMWARE_BASE
        m.firmware = fw
    else:
        cpu.write_boot_gdt(mem)
        cpu.set_pvh_entry_state(bsp, image.pvh_entry, start_info)
        if m.tracer.wants("boot"):
            m.tracer.emit("boot", f"direct PVH entry (no firmware): pyvmm set 32-bit protected mode, "
                          f"CR0=0x11 (PE|ET), CS=0x10 flat, EIP={image.pvh_entry:#x}, EBX={start_info:#x}",
                          stage="direct-entry", cr0=0x11, rip=image.pvh_entry, rbx=start_info)
    m.post_port = PostPort(m)
    m.pio_bus.insert(m.post_port, layout.POST_PORT, 1, "post (boot stages)")
    m.pio_ports = {port: (r.device, r.base) for r in m.pio_bus.ranges for port in range(r.base, r.end)}

    # The console: guest output to stdout; keyboard input when stdin is a terminal.
    if cfg.console == "stdio":
        m.console_out = _stdout_writer()


def _check_file(path: Path, what: str, limit: int) -> None:
    """A kernel or initrd must be a readable regular file that could fit in guest RAM: /dev/zero or a
    FIFO would otherwise be read until the host runs out of memory (or forever)."""
    import stat

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


def _stdout_writer():
    fd = sys.stdout.fileno() if hasattr(sys.stdout, "fileno") else 1

    def write(data: bytes) -> None:
        try:
            os.write(fd, data)
        except OSError:
            pass

    return write


def _load_initrd(mem, path: Path, kernel_end: int, ram_size: int) -> tuple[int, int]:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise LoaderError(f"initrd {path}: {e.strerror}") from None
    top = min(ram_size, layout.RAM_LOW_END)
    gpa = (top - len(data)) & ~0xFFF
    if gpa <= kernel_end:
        raise LoaderError(f"initrd {path}: {len(data)} bytes do not fit in guest RAM above the kernel")
    mem.write(gpa, data)
    return gpa, len(data)


def _wire_ioeventfds(m, vm, transport, base: int) -> None:
    """QueueNotify through KVM_IOEVENTFD: one eventfd per queue index (datamatch), served by the
    event loop, so a notify does not return to Python on the vCPU thread."""
    notify = base + transport.QUEUE_NOTIFY_OFFSET
    for index in range(len(transport.queues)):
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        m._closers.append(lambda efd=efd: os.close(efd))
        try:
            vm.ioeventfd(efd, notify, 4, datamatch=index)
        except PyvmmError:
            return      # the plain exit path still serves this queue

        def handler(efd=efd, index=index) -> None:
            try:
                os.eventfd_read(efd)
            except BlockingIOError:
                return
            transport.queue_notify(index)

        m.event_loop.add(efd, handler)
