"""The human monitor on a socket (-monitor unix:PATH,server,nowait or tcp:HOST:PORT), as QEMU's.

Connect with ``socat -,raw,echo=0 unix:PATH`` for line editing (the bytes go to the same LineEditor
as the console's monitor), or with ``nc -U PATH`` / ``socat - unix:PATH`` for plain lines; as QEMU's,
the monitor echoes what it reads.  Each
client is served on a thread of its own; a command runs on that thread, as on the console's.
"""

from __future__ import annotations

import logging
import socket
import threading

from .commands import MachineControl
from .hmp import PROMPT, complete_hmp, run_hmp
from .lineedit import LineEditor
from .qmp import listen_on, parse_address, unlink_own

log = logging.getLogger("pyvmm.monitor")

MAX_CLIENTS = 16
BANNER = b"pyvmm monitor - type 'help' for more information\r\n"


class HmpServer:
    def __init__(self, machine: MachineControl, address: str) -> None:
        self.machine = machine
        self.address = parse_address(address, "-monitor")
        self._listen: socket.socket | None = None
        self._created: tuple[int, int] | None = None
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closing = False

    def start(self) -> None:
        self._listen, self.address, self._created = listen_on(self.address, "monitor")
        threading.Thread(target=self._accept, name="hmp-listen", daemon=True).start()

    def close(self) -> None:
        self._closing = True
        listen, self._listen = self._listen, None
        if listen is not None:
            try:
                listen.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listen.close()
        with self._lock:
            for c in list(self._clients):
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self.address.kind == "unix":
            unlink_own(self.address.path, self._created)

    def _accept(self) -> None:
        while not self._closing and self._listen is not None:
            try:
                sock, _ = self._listen.accept()
            except OSError:
                if self._closing:
                    return
                continue
            with self._lock:
                if len(self._clients) >= MAX_CLIENTS:
                    sock.close()
                    continue
                self._clients.add(sock)
            threading.Thread(target=self._serve, args=(sock,), name="hmp-client", daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        editor = LineEditor(PROMPT, lambda text: complete_hmp(self.machine, text))
        alive = True

        def send(data: bytes) -> None:
            nonlocal alive
            if alive and data:
                try:
                    sock.sendall(data)
                except OSError:
                    alive = False      # the client left; what it sent still runs (a `quit` above all)

        try:
            send(BANNER + PROMPT)
            last = 0
            while alive and not self._closing:
                try:
                    data = sock.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                for b in data:
                    if b == 0x0A and last == 0x0D:   # CR LF from a line-mode client: one Enter
                        last = b
                        continue
                    last = b
                    echo, line = editor.feed(b)
                    send(echo)              # echoed as QEMU's socket monitor does (its readline runs there)
                    if line is None:
                        continue
                    if line.strip():
                        text = run_hmp(self.machine, line)
                        send(text.replace("\r\n", "\n").replace("\n", "\r\n").encode())
                    send(PROMPT)
        except Exception:  # noqa: BLE001 - one client's failure must not end the others' or the VM
            log.exception("monitor client failed")
        finally:
            with self._lock:
                self._clients.discard(sock)
            sock.close()
