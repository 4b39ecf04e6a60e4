"""Running a machine from the CLI: terminal raw mode, keyboard input, signals, QMP, and the exit code."""

from __future__ import annotations

import os
import signal
import sys
import termios
import threading
import tty

from .config import VmConfig


class Terminal:
    """stdin in raw mode while the VM runs (as QEMU's -serial stdio), restored on every way out."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved = termios.tcgetattr(fd)

    def __enter__(self) -> "Terminal":
        tty.setraw(self.fd, termios.TCSANOW)
        return self

    def __exit__(self, *exc) -> None:
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)


def _stdin_reader(machine, feed) -> None:
    fd = sys.stdin.fileno()
    while not machine._stopped.is_set():
        try:
            data = os.read(fd, 1024)
        except OSError:
            return
        if not data:
            return
        feed(data)


def run_machine(cfg: VmConfig, *, demo: bool = False) -> int:
    """Build, start and wait for a VM as `pyvmm run` does; returns the process exit code."""
    from .vm import Machine

    interactive = cfg.console == "stdio" and sys.stdin.isatty() and not demo
    machine = Machine(cfg)
    term = None
    try:
        signal.signal(signal.SIGTERM, lambda s, f: machine.stop(143, "terminated (SIGTERM)"))
        if interactive:
            feed = machine.serial.feed
            if cfg.monitor:
                try:
                    from .monitor.hmp import ConsoleMux
                except ImportError:
                    pass
                else:
                    mux = ConsoleMux(machine, machine.serial.feed, _RawOut())
                    machine.console_out = mux.guest_output
                    feed = mux.feed
            term = Terminal(sys.stdin.fileno()).__enter__()
            threading.Thread(target=_stdin_reader, args=(machine, feed), name="stdin", daemon=True).start()
        machine.start()
        if demo:
            from .demo import drive_demo

            drive_demo(machine)
        code = machine.wait()
    finally:
        if term is not None:
            term.__exit__(None, None, None)
        machine.close()
    if machine.emulation_fixups:
        done = ", ".join(f"{k} x{v}" for k, v in sorted(machine.emulation_fixups.items()))
        sys.stderr.write(f"pyvmm: finished for the guest what this host's emulator could not: {done}\n")
    if machine.stop_reason and not machine.crash_report and not machine.stop_reason.startswith("the guest exited"):
        sys.stderr.write(f"pyvmm: {machine.stop_reason}\n")
    return 0 if code is None else code


class _RawOut:
    """A binary stream over fd 1 for the console multiplexer."""

    def write(self, data: bytes) -> int:
        try:
            return os.write(1, data)
        except OSError:
            return 0

    def flush(self) -> None:
        pass
