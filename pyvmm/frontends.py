"""The one place where a machine's front ends attach: QMP servers, the gdbstub, the terminal console and monitor."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .vm import Machine


def attach_frontends(machine: Machine, *, terminal: bool) -> None:
    """Start the QMP servers the config asks for and, with ``terminal``, take over this process's
    terminal for the guest's console (raw mode; Ctrl-A c for the monitor unless it is off).  What is
    attached here is detached by machine.close(), the terminal's settings restored on every way out."""
    cfg = machine.config
    for address in cfg.qmp:
        from .monitor.qmp import QmpServer

        server = QmpServer(machine, address)
        server.start()
        machine.qmp_servers.append(server)
        machine.resources.add(server.close)
    if cfg.gdb is not None:
        attach_gdbstub(machine, cfg.gdb)
    if terminal:
        from .monitor.hmp import ConsoleMux, RawInput, stdio_console

        mux: ConsoleMux | RawInput
        if cfg.monitor:
            # Ctrl-A c between the guest's console and the (pyvmm) monitor, as -serial mon:stdio.
            mux = ConsoleMux(machine, machine.serial.feed, _RawOut())
            machine.console_out = mux.guest_output
            machine.stop_output = mux.announce         # a virtio breakpoint opens the monitor
        else:
            mux = RawInput(machine.serial.feed, machine.stopped.is_set)
        stack = contextlib.ExitStack()
        stack.enter_context(stdio_console(mux))
        machine.resources.add(stack.close)


def attach_gdbstub(machine: Machine, address: str) -> None:
    """The gdbstub (docs/gdb.md): listening at address, steering the machine's debugger; the line
    saying where goes to stderr."""
    import sys

    from .debug.gdbstub import GdbServer, parse_gdb_address
    from .monitor.hmp import run_hmp

    host, port = parse_gdb_address(address)
    debugger = machine.debugger
    debugger.run_monitor = lambda command: run_hmp(machine, command)
    debugger.kill_machine = lambda: machine.stop(0, "killed by gdb", event_reason="host-qmp-quit")
    server = GdbServer(debugger, host, port)
    server.start()
    debugger.add_stop_listener(server.on_stop)
    machine.add_listener(lambda event, data: server.on_exit(machine.exit_code or 0) if event == "SHUTDOWN" else None)
    machine.gdb_server = server
    machine.resources.add(server.close)
    where = f"[{server.host}]:{server.port}" if ":" in server.host else f"{server.host}:{server.port}"
    sys.stderr.write(f"pyvmm: gdbstub listening on tcp:{where} (in gdb: target remote {where})\n")
    sys.stderr.flush()


class _RawOut:
    """A binary stream over fd 1 for the console multiplexer."""

    def write(self, data: bytes) -> int:
        try:
            return os.write(1, data)
        except OSError:
            return 0

    def flush(self) -> None:
        pass
