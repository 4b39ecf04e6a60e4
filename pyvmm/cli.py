"""The pyvmm command line: verbs over the Python API; a PyvmmError becomes one line and an exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from . import __version__
from .errors import ConfigError, PyvmmError


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, without importing shutil at start-up just to learn the terminal width."""

    def __init__(self, prog: str, **kw) -> None:
        if kw.get("width") is None:
            try:
                kw["width"] = int(os.environ.get("COLUMNS") or os.get_terminal_size(sys.stdout.fileno()).columns) - 2
            except (OSError, ValueError):
                kw["width"] = 78
        super().__init__(prog, **kw)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kw) -> None:
        kw.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kw)

    def error(self, message: str) -> NoReturn:  # one line, exit 2, as argparse does, but with our prefix
        self.exit(2, f"pyvmm: {message} (see pyvmm {self.prog.split()[-1]} --help)\n"
                  if " " in self.prog else f"pyvmm: {message} (see pyvmm --help)\n")


def _add_run_parser(sub) -> None:
    p = sub.add_parser("run", help="boot a kernel (default: the bundled demo guest)",
                       description="Boot a PVH ELF kernel in a new VM. With no KERNEL, boots the bundled "
                       "tiny guest, whose balloon follows the host's target.")
    p.add_argument("kernel", nargs="?", type=Path, help="PVH ELF kernel (default: guest/build/guest.elf)")
    p.add_argument("-kernel", dest="kernel_opt", type=Path, help=argparse.SUPPRESS)
    p.add_argument("-m", "--memory", default="256M", help="guest RAM, e.g. 256M or 1G (default 256M)")
    p.add_argument("--smp", "-smp", type=int, default=1, help="number of vCPUs (default 1)")
    p.add_argument("--append", "-append", default="", help="kernel command line")
    p.add_argument("--initrd", "-initrd", type=Path, help="initial ramdisk (PVH module 0)")
    fw = p.add_mutually_exclusive_group()
    fw.add_argument("--firmware", type=Path, help="boot ROM ELF (default: firmware/build/firmware.elf)")
    fw.add_argument("--no-firmware", action="store_true",
                    help="enter the kernel's 32-bit PVH entry directly instead of from the reset vector")
    p.add_argument("--balloon", default="on", metavar="off|on|OPTS",
                   help="virtio balloon: off, on, or options such as "
                        "deflate-on-oom=on,stats-interval=2,free-page-reporting=on,must-tell-host=on")
    p.add_argument("--virtio-version", type=int, default=2, choices=(1, 2),
                   help="virtio-mmio version: 2 (modern, default) or 1 (legacy)")
    p.add_argument("--trace", default="", metavar="CATS",
                   help="comma-separated trace categories: virtio (every virtio-mmio register access, "
                        "interrupt and balloon event), boot (firmware stages), all")
    p.add_argument("--trace-file", type=Path, help="also write trace events as JSON lines to this file")
    p.add_argument("--qmp", action="append", default=[], metavar="ADDR",
                   help="QMP server: unix:PATH[,server,wait=off] or tcp:127.0.0.1:PORT (repeatable)")
    p.add_argument("--no-ioeventfd", action="store_true", help="handle QueueNotify in the vCPU thread")
    p.add_argument("--irqfd", action="store_true", help="raise virtio interrupts through KVM_IRQFD")
    p.add_argument("--no-monitor", action="store_true", help="no Ctrl-A c human monitor on the console")
    p.add_argument("--linux", action="store_true",
                   help="boot the minimal Linux guest that `make linux-guest` built (vmlinux + initramfs)")
    p.add_argument("--cpu", choices=("auto", "host"), default="auto",
                   help="CPUID: auto masks what this host cannot emulate (on kvm_pvm), host passes it through")
    p.add_argument("--no-acpi", action="store_true", help="no ACPI tables for the guest")
    p.add_argument("--mem-prealloc", "-mem-prealloc", action="store_true",
                   help="fault all guest RAM in at start (as QEMU's -mem-prealloc)")
    vc = p.add_mutually_exclusive_group()
    vc.add_argument("--virtio-cmdline", dest="virtio_cmdline", action="store_const", const=True,
                    help="append virtio_mmio.device= to the command line (default unless the kernel is "
                         "Linux and ACPI is on)")
    vc.add_argument("--no-virtio-cmdline", dest="virtio_cmdline", action="store_const", const=False,
                    help="never append virtio_mmio.device= (ACPI discovery only)")
    p.add_argument("-s", dest="gdb_default", action="store_true",
                   help="gdbstub on tcp::1234 (127.0.0.1 port 1234), as -gdb tcp::1234; see docs/gdb.md")
    p.add_argument("-gdb", "--gdb", dest="gdb", metavar="tcp:[HOST]:PORT",
                   help="gdbstub on this TCP address (HOST defaults to 127.0.0.1)")
    p.add_argument("-S", dest="start_paused", action="store_true",
                   help="do not start the vCPUs until gdb, QMP or the monitor says continue")
    p.add_argument("--demo", action="store_true",
                   help="drive the make-run demo: dirty memory, balloon to 64M and back, show a table")
    p.add_argument("-v", "--verbose", action="store_true", help="log guest errors and device events")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pyvmm", description="A virtual machine monitor in pure Python on Linux KVM, "
                     "with a virtio-mmio memory balloon.")
    parser.add_argument("--version", action="version", version=f"pyvmm {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    _add_run_parser(sub)
    try:
        from .cli_control import add_control_parsers
    except ImportError:
        pass
    else:
        add_control_parsers(sub)
    return parser


def config_from_args(args):
    from .config import VmConfig
    from .units import parse_size

    kernel = args.kernel_opt or args.kernel
    initrd = args.initrd
    if args.linux:
        from .arch.x86.cpuid import is_kvm_pvm_host
        from .config import LINUX_DEFAULT_APPEND, LINUX_PVM_APPEND, linux_cache

        cache = linux_cache()
        kernel = kernel or cache / "vmlinux"
        initrd = initrd or cache / "initramfs.cpio.gz"
        if not Path(kernel).exists() or not Path(initrd).exists():
            raise ConfigError(f"the Linux guest is not built ({cache} has no vmlinux and initramfs.cpio.gz): "
                              "run `make linux-guest` first (about 4 minutes)")
        if not args.append:
            args.append = LINUX_DEFAULT_APPEND + (" " + LINUX_PVM_APPEND if is_kvm_pvm_host() else "")
    memory = parse_size(args.memory, what="memory size (-m)")
    balloon: object
    text = args.balloon.strip()
    if text in ("off", "none", "no"):
        balloon = None
    elif text in ("on", "", "default"):
        balloon = "default"
    else:
        from .config import parse_balloon_options

        balloon = parse_balloon_options(text)
    trace = frozenset(t.strip() for t in args.trace.split(",") if t.strip())
    from .config import DEFAULT_FIRMWARE

    firmware = None if args.no_firmware else (args.firmware or DEFAULT_FIRMWARE)
    return VmConfig(
        kernel=kernel, memory=memory, smp=args.smp, append=args.append, initrd=initrd,
        firmware=firmware, balloon=balloon, virtio_version=args.virtio_version, trace=trace,
        trace_file=args.trace_file, ioeventfd=not args.no_ioeventfd, irqfd=args.irqfd,
        qmp=tuple(args.qmp), monitor=not args.no_monitor,
        cpu_passthrough=True if args.cpu == "host" else None, acpi=not args.no_acpi,
        mem_prealloc=args.mem_prealloc, virtio_cmdline=args.virtio_cmdline,
        gdb=args.gdb or ("tcp::1234" if args.gdb_default else None), start_paused=args.start_paused,
    )


def cmd_run(args) -> int:
    if args.demo and not args.append:
        args.append = "scenario=demo dirty=192M"
    cfg = config_from_args(args)
    cfg.validate()
    return run_machine(cfg, demo=args.demo)


def run_machine(cfg, *, demo: bool = False) -> int:
    """Build, start and wait for a VM as `pyvmm run` does; returns the process exit code."""
    import signal

    from .vm import Machine

    interactive = cfg.console == "stdio" and sys.stdin.isatty() and not demo
    machine = Machine(cfg)
    machine.report_crashes = not interactive   # printed below, once the terminal is cooked again
    try:
        signal.signal(signal.SIGTERM, lambda s, f: machine.stop(143, "terminated (SIGTERM)"))
        machine.start(terminal=interactive)
        if demo:
            from .demo import drive_demo

            drive_demo(machine)
        code = machine.wait()
    finally:
        machine.close()         # the terminal's settings come back on every way out
        if machine.crash_report and not machine.report_crashes:
            sys.stderr.write(machine.crash_report + "\n")
    if machine.emulation_fixups:
        done = ", ".join(f"{k} x{v}" for k, v in sorted(machine.emulation_fixups.items()))
        sys.stderr.write(f"pyvmm: finished for the guest what this host's emulator could not: {done}\n")
    if machine.stop_reason and not machine.crash_report and not machine.stop_reason.startswith("the guest exited"):
        sys.stderr.write(f"pyvmm: {machine.stop_reason}\n")
    return 0 if code is None else code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="pyvmm: %(name)s: %(message)s")
    if sys.stderr.isatty():
        # The console may be in raw mode while the guest runs (no newline translation there).
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.terminator = "\r\n"
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        if args.verb == "run":
            return cmd_run(args)
        return args.func(args)
    except PyvmmError as e:
        sys.stderr.write(f"pyvmm: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("pyvmm: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0


def entry() -> None:
    """The process entry (console script, `python -m pyvmm`): run, flush, and leave at once.

    The VM's file descriptors and mappings are closed by Machine.close() before this point; skipping
    the interpreter's own teardown (module finalisation, garbage collection of everything) saves
    tens of milliseconds of every short run, which the boot benchmark counts.
    """
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


if __name__ == "__main__":
    entry()
