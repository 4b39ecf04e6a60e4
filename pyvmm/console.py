"""Running a machine from the CLI: the console, signals, the demo, and the exit code."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from .config import VmConfig


def run_machine(cfg: VmConfig, *, demo: bool = False) -> int:
    """Build, start and wait for a VM as `pyvmm run` does; returns the process exit code."""
    from .vm import Machine

    interactive = cfg.console == "stdio" and sys.stdin.isatty() and not demo
    machine = Machine(cfg)
    machine.report_crashes = not interactive   # printed below, once the terminal is cooked again
    stack = contextlib.ExitStack()
    try:
        signal.signal(signal.SIGTERM, lambda s, f: machine.stop(143, "terminated (SIGTERM)"))
        if interactive:
            from .monitor.hmp import ConsoleMux, RawInput, stdio_console

            if cfg.monitor:
                # Ctrl-A c between the guest's console and the (pyvmm) monitor, as -serial mon:stdio.
                mux = ConsoleMux(machine, machine.serial.feed, _RawOut())
                machine.console_out = mux.guest_output
            else:
                mux = RawInput(machine.serial.feed, machine._stopped.is_set)
            stack.enter_context(stdio_console(mux))
        machine.start()
        if demo:
            from .demo import drive_demo

            drive_demo(machine)
        code = machine.wait()
    finally:
        stack.close()           # the terminal's settings come back on every way out
        machine.close()
        if machine.crash_report and not machine.report_crashes:
            sys.stderr.write(machine.crash_report + "\n")
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
