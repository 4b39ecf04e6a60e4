"""The one place where a machine's front ends attach: QMP servers, human monitors on sockets, the gdbstub,
the VGA screen on the terminal, and the terminal console with its monitor."""

from __future__ import annotations

import contextlib
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .vm import Machine


HINT = "pyvmm: Ctrl-A h: help, Ctrl-A c: monitor, Ctrl-A x: exit\n"


def attach_frontends(machine: Machine, *, terminal: bool) -> None:
    """Start the QMP servers the config asks for and, with ``terminal``, take over this process's
    terminal for the guest's console (raw mode; Ctrl-A c for the monitor unless it is off).  What is
    attached here is detached by machine.close(), the terminal's settings restored on every way out."""
    cfg = machine.config
    # The front ends hold the machine weakly: their threads must not keep a dropped Machine alive
    # (its finalizer closes them along with everything else).
    proxy = weakref.proxy(machine)
    for address in cfg.qmp:
        from .monitor.qmp import QmpServer

        server = QmpServer(proxy, address)
        server.start()
        machine.qmp_servers.append(server)
        machine.resources.add(server.close)
    for address in cfg.hmp:
        from .monitor.hmpserver import HmpServer

        hmp = HmpServer(proxy, address)
        hmp.start()
        machine.resources.add(hmp.close)
    if machine.vga is not None and cfg.console == "stdio" and cfg.display != "none":
        from .vgaterm import VgaTerminal

        screen = VgaTerminal(machine.vga)
        screen.start()
        machine.resources.add(screen.stop)
    if cfg.gdb is not None:
        attach_gdbstub(machine, cfg.gdb)
    if terminal:
        from .monitor.hmp import ConsoleMux, RawInput, stdio_console
        from .termout import GuestOutput, emit_line

        # Typed keys go where the guest reads them: with a screen, to its PS/2 keyboard (as a display's
        # keyboard does in QEMU); without one, to the serial port (as QEMU's -nographic).
        screen_keys = machine.vga is not None and cfg.display != "none"
        typed = machine.keyboard.type_text if screen_keys else machine.serial.feed
        mux: ConsoleMux | RawInput
        if cfg.monitor:
            # Ctrl-A c between the guest's console and the (pyvmm) monitor, as -serial mon:stdio.
            mux = ConsoleMux(proxy, typed, GuestOutput(1))
            machine.console_out = mux.guest_output
            emit_line(HINT)
            machine.stop_output = mux.announce         # a virtio breakpoint opens the monitor
        else:
            mux = RawInput(typed, machine.stopped.is_set)
        stack = contextlib.ExitStack()
        stack.enter_context(stdio_console(mux))
        machine.resources.add(stack.close)


def attach_gdbstub(machine: Machine, address: str) -> None:
    """The gdbstub (docs/gdb.md): listening at address, steering the machine's debugger; the line
    saying where goes to stderr."""
    from .debug.gdbstub import GdbServer, parse_gdb_address
    from .monitor.hmp import run_hmp
    from .termout import emit_line

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
    emit_line(f"pyvmm: gdbstub listening on tcp:{where} (in gdb: target remote {where})\n")

