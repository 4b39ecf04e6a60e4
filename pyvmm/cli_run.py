"""`pyvmm run`: its options, in pyvmm's spelling and QEMU's, mapped onto a VmConfig; and the run itself.

QEMU's options are single-dash words (-smp, -monitor); argparse takes them as written, but would read
an option it does not know, such as -drive, as -d with the value "rive".  The argument list is
therefore checked first against the parser's own option strings (qemuopts.check_unsupported), so an
option QEMU has and pyvmm lacks gets one line saying what to use instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .errors import ConfigError
from .termout import emit_line

RUN_DESCRIPTION = """\
Boot a kernel (PVH ELF, Multiboot or bzImage) in a new VM. With no KERNEL, boots the bundled tiny
guest, whose balloon follows the host's target. QEMU's spellings work beside pyvmm's own (-smp 2,
-qmp unix:S,server,wait=off, -serial stdio, -nographic, -S, -device virtio-balloon-device,...);
docs/qemu.md lists them and what pyvmm does differently."""


def add_run_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="boot a kernel (default: the bundled demo guest)", description=RUN_DESCRIPTION,
                       allow_abbrev=False)
    p.add_argument("kernel", nargs="?", type=Path,
                   help="kernel: a PVH ELF, a Multiboot kernel or a bzImage (default: the bundled tiny guest)")
    g = p.add_argument_group("machine")
    g.add_argument("-kernel", "--kernel", dest="kernel_opt", type=Path, metavar="FILE",
                   help="the kernel, as QEMU takes it (the same as KERNEL)")
    g.add_argument("-m", "--memory", default="256M", metavar="SIZE",
                   help="guest RAM, e.g. 256M or 1G (default 256M); QEMU's size=256M too")
    g.add_argument("-smp", "--smp", default="1", metavar="N",
                   help="vCPUs: N, or QEMU's cpus=N,sockets=S,cores=C,threads=T (default 1)")
    g.add_argument("-append", "--append", default="", metavar="CMDLINE", help="kernel command line")
    g.add_argument("-initrd", "--initrd", type=Path, metavar="FILE",
                   help="initial ramdisk (PVH module 0); for a Multiboot kernel, modules as QEMU takes them: "
                        "\"file args,file2\"")
    g.add_argument("-M", "-machine", dest="machine", metavar="microvm[,acpi=on|off]",
                   help="accepted for QEMU's microvm (pyvmm has one machine); acpi=off as --no-acpi")
    g.add_argument("-cpu", "--cpu", default="auto", metavar="host|auto",
                   help="CPUID: auto masks what this host cannot emulate (on kvm_pvm), host passes KVM's through")
    g.add_argument("-enable-kvm", dest="enable_kvm", action="store_true",
                   help="accepted: KVM is pyvmm's only accelerator")
    g.add_argument("-accel", dest="accel", metavar="kvm", help="accepted as kvm, the only accelerator")
    g.add_argument("-name", dest="name", metavar="NAME", help="the VM's name (info name, query-name)")
    g.add_argument("-mem-prealloc", "--mem-prealloc", action="store_true",
                   help="fault all guest RAM in at start (as QEMU's -mem-prealloc)")
    g.add_argument("-no-acpi", "--no-acpi", dest="no_acpi", action="store_true", help="no ACPI tables for the guest")
    g.add_argument("-nodefaults", "-no-user-config", dest="nodefaults", action="store_true",
                   help="accepted: pyvmm has no default devices to drop and reads no user config")
    fw = g.add_mutually_exclusive_group()
    fw.add_argument("--firmware", type=Path, metavar="ELF", help="boot ROM ELF (default: pyvmm's own firmware)")
    fw.add_argument("--no-firmware", action="store_true",
                    help="enter the kernel's 32-bit PVH entry directly instead of from the reset vector")
    g.add_argument("--linux", action="store_true",
                   help="boot the minimal Linux guest that `make linux-guest` built: vmlinux and the busybox initramfs "
                        "(a shell on the console); -initrd .../initramfs.cpio.gz for the quiet /init that spins")

    d = p.add_argument_group("devices")
    d.add_argument("-device", dest="devices", action="append", default=[], metavar="DRIVER[,PROP=VALUE...]",
                   help="virtio-balloon-device[,deflate-on-oom=on,free-page-reporting=on,"
                        "guest-stats-polling-interval=2,...] (QEMU's property names and defaults); "
                        "virtio-rng-device[,seed=N,max-bytes=B,period=MS]; python:FILE.py:CLASS[,key=value...] "
                        "(a device of your own, docs/devices.md); isa-debug-exit,iobase=0xf4 (always present)")
    d.add_argument("--balloon", default="on", metavar="off|on|OPTS",
                   help="virtio balloon: off, on, or options such as "
                        "deflate-on-oom=on,stats-interval=2,free-page-reporting=on,must-tell-host=on")
    d.add_argument("--virtio-version", type=int, default=2, choices=(1, 2),
                   help="virtio-mmio version: 2 (modern, default) or 1 (legacy)")
    d.add_argument("--no-ioeventfd", action="store_true", help="handle QueueNotify in the vCPU thread")
    d.add_argument("--irqfd", action="store_true", help="raise virtio interrupts through KVM_IRQFD")
    d.add_argument("--vga", choices=("none", "text"), default=None,
                   help="VGA text console at 0xB8000, shown on the terminal (default: text for Multiboot "
                        "kernels, none otherwise); with it, typed keys go to the PS/2 keyboard")
    vc = d.add_mutually_exclusive_group()
    vc.add_argument("--virtio-cmdline", dest="virtio_cmdline", action="store_const", const=True,
                    help="append virtio_mmio.device= to the command line (default unless the kernel is "
                         "Linux and ACPI is on)")
    vc.add_argument("--no-virtio-cmdline", dest="virtio_cmdline", action="store_const", const=False,
                    help="never append virtio_mmio.device= (ACPI discovery only)")

    c = p.add_argument_group("console, monitors and run control")
    c.add_argument("-serial", dest="serial", metavar="stdio|null|file:PATH",
                   help="where COM1 goes (default stdio; mon:stdio as stdio, the monitor behind Ctrl-A c)")
    c.add_argument("--console-log", type=Path, metavar="FILE",
                   help="also copy every byte of the guest's console to FILE")
    c.add_argument("-nographic", dest="nographic", action="store_true",
                   help="no screen on the terminal: COM1 and the monitor on stdio (pyvmm's default without --vga)")
    c.add_argument("-display", dest="display", metavar="none|curses",
                   help="none: do not draw the VGA screen on the terminal")
    c.add_argument("-qmp", "--qmp", action="append", default=[], metavar="ADDR",
                   help="QMP server: unix:PATH[,server,wait=off] or tcp:127.0.0.1:PORT (repeatable)")
    c.add_argument("-monitor", dest="monitor", action="append", default=[], metavar="stdio|none|unix:PATH",
                   help="the human monitor: stdio (Ctrl-A c on the console, the default), none, or a socket "
                        "(unix:PATH[,server,nowait], tcp:HOST:PORT) to connect to with socat or nc")
    c.add_argument("--no-monitor", action="store_true", help="no Ctrl-A c human monitor on the console")
    c.add_argument("-S", dest="start_paused", action="store_true",
                   help="start with the vCPUs stopped (query-status: prelaunch) until cont (QMP, the monitor "
                        "or gdb)")
    c.add_argument("-s", dest="gdb_default", action="store_true",
                   help="gdbstub on tcp::1234 (127.0.0.1 port 1234), as -gdb tcp::1234; see docs/gdb.md")
    c.add_argument("-gdb", "--gdb", dest="gdb", metavar="tcp:[HOST]:PORT",
                   help="gdbstub on this TCP address (HOST defaults to 127.0.0.1)")
    c.add_argument("-no-reboot", dest="no_reboot", action="store_true",
                   help="exit instead of rebooting when the guest resets")
    c.add_argument("-no-shutdown", dest="no_shutdown", action="store_true",
                   help="stop (state shutdown) instead of exiting when the guest powers off")
    c.add_argument("-pidfile", dest="pidfile", type=Path, metavar="FILE",
                   help="write pyvmm's process id to FILE (removed at exit)")

    t = p.add_argument_group("tracing and logs")
    t.add_argument("--trace", default="", metavar="CATS",
                   help="comma-separated trace categories: virtio (every virtio-mmio register access, "
                        "interrupt and balloon event), boot (firmware stages), all")
    t.add_argument("--trace-file", type=Path, metavar="FILE",
                   help="also write trace events as JSON lines to FILE (implies --trace virtio when "
                        "--trace is not given)")
    t.add_argument("-d", dest="debug_items", metavar="ITEMS",
                   help="QEMU's log items pyvmm has: virtio, boot, trace:PATTERN, guest_errors")
    t.add_argument("-D", dest="log_file", type=Path, metavar="FILE",
                   help="write the trace and guest-error lines to FILE instead of standard error")
    t.add_argument("-v", "--verbose", action="store_true", help="log guest errors and device events")
    p.add_argument("--demo", action="store_true",
                   help="drive the make-run demo: dirty memory, balloon to 64M and back, show a table")
    p.add_argument("--plot", type=Path, metavar="FILE",
                   help="with --demo: draw the balloon's timeline (target, actual, host RSS, guest free "
                        "memory) to FILE, PNG or SVG by its suffix (needs pyvmm[plot], matplotlib)")
    return p


def run_option_strings(parser: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """(every option string of the parser, those that take a value)."""
    known: set[str] = set()
    takes_value: set[str] = set()
    for action in parser._actions:
        known.update(action.option_strings)
        if action.nargs != 0:
            takes_value.update(action.option_strings)
    return known, takes_value


def config_from_args(args):
    from . import qemuopts as Q
    from .config import DEFAULT_FIRMWARE, VmConfig
    from .units import parse_size

    kernel = args.kernel_opt or args.kernel
    if args.kernel_opt and args.kernel and args.kernel_opt != args.kernel:
        raise ConfigError(f"two kernels: -kernel {args.kernel_opt} and {args.kernel}; give one")
    initrd = args.initrd
    if args.linux:
        from .arch.x86.cpuid import is_kvm_pvm_host
        from .config import LINUX_DEFAULT_APPEND, LINUX_PVM_APPEND, linux_cache

        cache = linux_cache()
        kernel = kernel or cache / "vmlinux"
        initrd = initrd or cache / "initramfs-shell.cpio"
        if not Path(kernel).exists() or not Path(initrd).exists():
            raise ConfigError(f"the Linux guest is not built ({cache} lacks {Path(kernel).name} or "
                              f"{Path(initrd).name}): run `make linux-guest` first (about 4 minutes)")
        if not args.append:
            args.append = LINUX_DEFAULT_APPEND + (" " + LINUX_PVM_APPEND if is_kvm_pvm_host() else "")
    mem_text = args.memory.removeprefix("size=")
    memory = parse_size(mem_text, what="memory size (-m)")
    smp = Q.parse_smp(args.smp)

    acpi = not args.no_acpi
    if args.machine and Q.parse_machine(args.machine).get("acpi") is False:
        acpi = False
    if args.accel:
        Q.check_accel(args.accel)
    cpu_passthrough = Q.parse_cpu(args.cpu)

    fe = Q.Frontends()
    if args.serial:
        Q.apply_serial(fe, args.serial)
    for text in args.monitor:
        Q.apply_monitor(fe, text)
    if args.no_monitor:
        fe.monitor = False
    if args.nographic:
        fe.display = "none"
    if args.display:
        Q.apply_display(fe, args.display)

    balloon = _balloon_from_args(args.balloon, args.devices)
    devices = Q.virtio_devices([Q.parse_device(d) for d in args.devices])

    trace = set(t.strip() for t in args.trace.split(",") if t.strip())
    if args.debug_items:
        items, _guest_errors = Q.parse_debug(args.debug_items)   # guest errors are always logged
        trace |= items
    trace_text = True
    if args.trace_file and not trace:
        trace = {"virtio"}       # a trace file with no category would stay empty: JSON lines only
        trace_text = False
    firmware = None if args.no_firmware else (args.firmware or DEFAULT_FIRMWARE)
    return VmConfig(
        kernel=kernel, memory=memory, smp=smp, append=args.append, initrd=initrd,
        firmware=firmware, balloon=balloon, devices=devices, virtio_version=args.virtio_version, trace=frozenset(trace),
        trace_file=args.trace_file, trace_text=trace_text, ioeventfd=not args.no_ioeventfd, irqfd=args.irqfd,
        console=fe.console, console_log=args.console_log, qmp=tuple(args.qmp), monitor=fe.monitor,
        hmp=tuple(fe.monitor_sockets),
        display=fe.display, cpu_passthrough=cpu_passthrough, acpi=acpi,
        mem_prealloc=args.mem_prealloc, virtio_cmdline=args.virtio_cmdline, vga=args.vga,
        start_paused=args.start_paused, no_reboot=args.no_reboot, no_shutdown=args.no_shutdown,
        name=_name(args.name), log_file=args.log_file,
        gdb=args.gdb or ("tcp::1234" if args.gdb_default else None),
    )


def _name(text: str | None) -> str:
    """-name NAME or -name guest=NAME[,debug-threads=on,process=...]."""
    if not text:
        return ""
    from .qemuopts import parse_props

    head, props = parse_props(text, "-name")
    if head.startswith("guest="):
        return head[len("guest="):]
    return props.get("guest", head)


def _balloon_from_args(text: str, devices: list[str]):
    """--balloon and -device virtio-balloon-device,... -> BalloonOptions, "default" or None."""
    from .qemuopts import parse_device

    specs = [parse_device(d) for d in devices]
    balloons = [s for s in specs if s.driver == "virtio-balloon-device"]
    text = text.strip()
    if len(balloons) > 1:
        raise ConfigError("-device virtio-balloon-device: given twice; pyvmm's VM has one balloon")
    if balloons:
        if text not in ("on", "", "default"):
            raise ConfigError("both --balloon and -device virtio-balloon-device configure the balloon: give one")
        from .qemuopts import balloon_options

        return balloon_options(balloons[0])
    if text in ("off", "none", "no"):
        return None
    if text in ("on", "", "default"):
        return "default"
    from .config import parse_balloon_options

    return parse_balloon_options(text)


def cmd_run(args) -> int:
    if args.demo and not args.append:
        args.append = "scenario=demo dirty=192M"
    plot = getattr(args, "plot", None)
    if plot is not None:
        if not args.demo:
            raise ConfigError("--plot FILE draws the demo's balloon timeline: give --demo too")
        if plot.suffix.lower() not in (".png", ".svg"):
            raise ConfigError(f"--plot {plot}: the picture is written as .png or .svg")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ConfigError("--plot needs matplotlib: pip install 'pyvmm[plot]'") from None
    cfg = config_from_args(args)
    cfg.validate()
    return run_machine(cfg, demo=args.demo, pidfile=args.pidfile, plot=plot)


def run_machine(cfg, *, demo: bool = False, pidfile: Path | None = None, plot: Path | None = None) -> int:
    """Build, start and wait for a VM as `pyvmm run` does; returns the process exit code."""
    from .vm import Machine

    interactive = cfg.console == "stdio" and sys.stdin.isatty() and not demo
    machine = Machine(cfg)
    machine.report_crashes = not interactive   # printed below, once the terminal is cooked again
    pid_written = False
    try:
        if pidfile is not None:
            _write_pidfile(pidfile)
            pid_written = True
        stop_on = _SignalStop(machine)
        stop_on.catch(signal.SIGTERM)
        machine.start(terminal=interactive)
        if _is_linux(machine) and cfg.console == "stdio" and sys.stderr.isatty():
            _boot_status(machine, raw=interactive)
        if demo:
            from .demo import drive_demo

            drive_demo(machine, plot=plot)
        stop_on.catch(signal.SIGINT)    # from here Ctrl-C stops the machine without a KeyboardInterrupt
        code = machine.wait()
    finally:
        machine.close()         # the terminal's settings come back on every way out
        if pid_written and pidfile is not None:
            _remove_pidfile(pidfile)
        if machine.crash_report and not machine.report_crashes:
            emit_line(machine.crash_report + "\n")
    if machine.emulation_fixups:
        done = ", ".join(f"{k} x{v}" for k, v in sorted(machine.emulation_fixups.items()))
        emit_line(f"pyvmm: finished for the guest what this host's emulator could not: {done}\n")
    if machine.stop_reason and not machine.crash_report and not machine.stop_reason.startswith("the guest exited"):
        emit_line(f"pyvmm: {machine.stop_reason}\n")
    return 0 if code is None else code


class _SignalStop:
    """SIGTERM and SIGINT stop the machine from a thread of their own, told through a pipe.

    A Python signal handler runs between two bytecodes of the main thread, which may at that moment
    hold the very lock that machine.stop() takes (inside Machine.wait's Event.wait): stopping from
    the handler, or raising KeyboardInterrupt there, can leave the process waiting on itself. The
    handler only writes the signal's number; the watcher thread does the stop. The handlers are set
    whatever the process inherited: a job started in the background of a shell inherits SIGINT
    ignored, and Python keeps that, so without its own handler such a pyvmm had no Ctrl-C."""

    def __init__(self, machine) -> None:
        import threading

        self._reasons = {int(signal.SIGINT): (130, "interrupted (Ctrl-C)"),
                         int(signal.SIGTERM): (143, "terminated (SIGTERM)")}
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._machine = machine
        threading.Thread(target=self._watch, name="signals", daemon=True).start()

    def catch(self, signum: int) -> None:
        signal.signal(signum, self._handler)

    def _handler(self, signum: int, frame: object) -> None:
        try:
            os.write(self._w, bytes([signum]))
        except OSError:      # a full pipe already holds a stop request
            pass

    def _watch(self) -> None:
        while got := os.read(self._r, 1):
            code, why = self._reasons[got[0]]
            self._machine.stop(code, why, event_reason="host-signal")


def _is_linux(machine) -> bool:
    kernel = machine.kernel
    return kernel.protocol == "linux" or bool(getattr(kernel.image, "is_linux", False))


BOOT_DONE = r"Run /\S+ as init process|login: |\n[#$] "


def _boot_status(machine, *, raw: bool) -> None:
    """A status line while Linux boots (elapsed, exits, the console's last line), on a thread: it
    ends once the kernel starts user space, a key is typed, or the VM stops."""
    import re
    import threading
    import time

    from .termout import StatusLine

    done = re.compile(BOOT_DONE)

    def follow() -> None:
        status = StatusLine(every=0, raw=raw)
        status.start()
        t0 = time.monotonic()
        typed0 = machine.serial.received
        try:
            while not machine.stopped.wait(0.25):
                text = machine.console.text()[-4096:]
                if done.search(text) or machine.serial.received != typed0:
                    return
                if machine.status() not in ("running", "created"):
                    continue
                last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "(nothing yet)")
                exits = sum(v.exits for v in machine.vcpus)
                status.update(f"pyvmm: booting Linux {time.monotonic() - t0:5.1f} s, {exits} exits | {last.strip()}")
        finally:
            status.stop()

    threading.Thread(target=follow, name="boot-status", daemon=True).start()


def _write_pidfile(path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:
        raise ConfigError(f"-pidfile {path}: cannot create it ({e.strerror})") from None
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")


def _remove_pidfile(path: Path) -> None:
    try:   # only if it still names this process (someone may have replaced it)
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass
