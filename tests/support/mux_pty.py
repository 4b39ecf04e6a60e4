"""A console multiplexer on the real terminal over a fake machine whose "guest" echoes: for pexpect tests.

Run as ``python -m tests.support.mux_pty``.  The "guest" echoes what it receives on its serial input,
answers each line with ``guest: <line>``, and shows a literal Ctrl-A as ``<guest got C-a>``.
"""

from __future__ import annotations

import os
import sys
import threading

from pyvmm.monitor.hmp import ConsoleMux, stdio_console
from tests.support.fake_machine import FakeMachine


class _Stdout:
    def write(self, data: bytes) -> int:
        return os.write(1, data)

    def flush(self) -> None:
        pass


def main() -> int:
    machine = FakeMachine()
    done = threading.Event()
    machine.add_listener(lambda ev, data: done.set() if ev == "SHUTDOWN" else None)
    line = bytearray()
    mux: ConsoleMux

    def serial_input(data: bytes) -> None:
        # the guest echoes what it gets (as a shell would), and answers each line
        for b in data:
            if b == 0x01:
                mux.guest_output(b"<guest got C-a>")
            elif b in (0x0D, 0x0A):
                text = line.decode(errors="replace")
                line.clear()
                mux.guest_output(b"\r\nguest: " + text.encode() + b"\r\n")
            else:
                line.append(b)
                mux.guest_output(bytes([b]))

    mux = ConsoleMux(machine, serial_input, _Stdout())
    mux.guest_output(b"guest: booted\r\n")
    with stdio_console(mux):
        done.wait()
    sys.stdout.write("\r\nmux: machine shut down\r\n")
    sys.stdout.flush()
    machine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
