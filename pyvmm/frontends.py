"""The one place where a machine's front ends attach: QMP servers, the VGA screen on the terminal, and
the terminal console with its monitor."""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .vm import Machine


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
    if machine.vga is not None and cfg.console == "stdio":
        from .vgaterm import VgaTerminal

        screen = VgaTerminal(machine.vga)
        screen.start()
        machine.resources.add(screen.stop)
    if terminal:
        from .monitor.hmp import ConsoleMux, RawInput, stdio_console

        # Typed keys go where the guest reads them: with a screen, to its PS/2 keyboard (as a display's
        # keyboard does in QEMU); without one, to the serial port (as QEMU's -nographic).
        typed = machine.keyboard.type_text if machine.vga is not None else machine.serial.feed
        mux: ConsoleMux | RawInput
        if cfg.monitor:
            # Ctrl-A c between the guest's console and the (pyvmm) monitor, as -serial mon:stdio.
            mux = ConsoleMux(proxy, typed, _RawOut())
            machine.console_out = mux.guest_output
        else:
            mux = RawInput(typed, machine.stopped.is_set)
        stack = contextlib.ExitStack()
        stack.enter_context(stdio_console(mux))
        machine.resources.add(stack.close)


class _RawOut:
    """A binary stream over fd 1 for the console multiplexer."""

    def write(self, data: bytes) -> int:
        try:
            return os.write(1, data)
        except OSError:
            return 0

    def flush(self) -> None:
        pass
