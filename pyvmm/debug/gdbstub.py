"""The gdbstub: GDB's remote serial protocol over TCP, a session per connection, served on one thread.

``GdbSession`` is the protocol (GDB manual, "Remote Protocol": "Packets", "Stop Reply Packets",
"General Query Packets", "Architecture-Specific Protocol Details") against a ``DebugTarget``: bytes in
through feed(), replies out through a send callable, no sockets and no KVM, so the unit tests and the
fuzzer drive it with a fake target.  ``GdbServer`` listens (127.0.0.1 unless told otherwise: a
gdbstub is full control of the guest), serves one gdb at a time, wakes the session when the machine
stops, and treats a connection that goes away as a detach, so the next gdb can attach.

Every vCPU is a thread (ids 1, 2, ... for vCPU 0, 1, ...).  Malformed input is answered as gdb
expects: ``-`` for a bad checksum (while acknowledgments are on), ``E`` replies for bad arguments,
an empty reply for what pyvmm does not implement; nothing a client sends raises out of here.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
from collections.abc import Callable
from typing import Protocol

from ..errors import ConfigError
from . import rsp, x86
from .stop import SIGTRAP, StopEvent

log = logging.getLogger("pyvmm.gdbstub")

MAX_MEMORY = rsp.MAX_PACKET // 2 - 32      # bytes one m/M reply or request carries at most
E_MEMORY = b"E14"                          # EFAULT, as QEMU answers an unreadable address
E_INVALID = b"E22"                         # EINVAL: a malformed argument
E_FAILED = b"E01"
SUPPORTED = (b"PacketSize=%x;qXfer:features:read+;swbreak+;hwbreak+;vContSupported+;QStartNoAckMode+"
             % rsp.MAX_PACKET)
BREAKPOINT_KINDS = {0: "sw", 1: "hw", 2: "write", 3: "read", 4: "access"}


class DebugTarget(Protocol):
    """What a session needs of the machine (pyvmm.debug.debugger.Debugger; tests fake it)."""

    @property
    def cpu_count(self) -> int: ...

    def attach(self) -> None:
        """Stop every vCPU for a new gdb (if they run); returns without waiting."""

    def wait_stopped(self, timeout: float) -> StopEvent | None:
        """The current stop once every vCPU is out of KVM_RUN; None if not stopped (or not yet)."""

    def read_registers(self, cpu: int) -> x86.CpuState: ...

    def write_registers(self, cpu: int, state: x86.CpuState) -> None: ...

    def read_memory(self, cpu: int, addr: int, length: int, physical: bool) -> bytes:
        """As many bytes from addr as are readable (b"" if the first is not); virtual through cpu's
        page tables unless physical."""

    def write_memory(self, cpu: int, addr: int, data: bytes, physical: bool) -> bool: ...

    def insert_breakpoint(self, kind: str, addr: int, length: int) -> bool | None:
        """True: set; False: could not; None: this kind is not supported (empty reply)."""

    def remove_breakpoint(self, kind: str, addr: int, length: int) -> bool | None: ...

    def resume(self, step: int | None, only: int | None) -> None:
        """Run: vCPU ``step`` one instruction (if given); with ``only``, that vCPU alone runs."""

    def interrupt(self) -> None: ...

    def monitor(self, command: str) -> str: ...

    def thread_name(self, cpu: int) -> str: ...

    def detach(self) -> None:
        """Remove gdb's breakpoints and let the machine run."""

    def kill(self) -> None: ...


class GdbSession:
    """One gdb connection's protocol state: feed() it bytes; replies go to send()."""

    def __init__(self, target: DebugTarget, send: Callable[[bytes], None]) -> None:
        self.target = target
        self._send = send
        self.reader = rsp.PacketReader()
        self.no_ack = False
        self.running = False            # gdb waits for a stop reply
        self.closed = False             # detached or killed: the server hangs up
        self.g_cpu = 0                  # Hg: the thread g/p/m act on
        self.c_cpu = -1                 # Hc: the thread c/s act on (-1: all)
        self.physical = False           # Qqemu.PhyMemMode: m/M/X addresses are guest-physical
        self._last = b""

    # --- input -------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        for ev in self.reader.feed(data):
            if self.closed:
                return
            if isinstance(ev, rsp.Packet):
                if not self.no_ack:
                    self._send(b"+")
                if self.running:
                    # All-stop: while the guest runs gdb sends nothing but Ctrl-C.  Answering a
                    # register read now would wait for a running vCPU; drop it instead.
                    log.debug("gdb packet while running ignored: %r", ev.payload[:40])
                    continue
                self._dispatch(ev.payload)
            elif isinstance(ev, rsp.Malformed):
                log.debug("gdb: malformed packet: %s", ev.reason)
                if not self.no_ack:
                    self._send(b"-")
            elif isinstance(ev, rsp.Interrupt):
                if self.running:
                    self.target.interrupt()
            elif isinstance(ev, rsp.Nak) and self._last and not self.no_ack:
                self._send(self._last)

    def reply(self, payload: bytes) -> None:
        self._last = rsp.frame(payload)
        self._send(self._last)

    def _console(self, text: str) -> None:
        """Text for gdb's console (O packets), in chunks that fit a packet."""
        data = text.encode("utf-8", "replace")
        step = (rsp.MAX_PACKET - 8) // 2
        for i in range(0, len(data), step):
            self.reply(b"O" + rsp.to_hex(data[i : i + step]))

    # --- events from the machine ----------------------------------------------------------------------

    def report_stop(self, ev: StopEvent) -> None:
        """The machine stopped: tell gdb, if it is waiting for that."""
        if not self.running or self.closed:
            return
        self.running = False
        if ev.cpu is not None:
            self.g_cpu = ev.cpu
        if ev.text:
            self._console(ev.text if ev.text.endswith("\n") else ev.text + "\n")
        self.reply(self.stop_reply(ev))

    def report_exit(self, code: int) -> None:
        """The machine shut down: ``W`` with its exit code if gdb waits for a stop (else it would take
        the packet for the reply to its next one), and the session ends."""
        if not self.closed and self.running:
            self.reply(b"W%02x" % (code & 0xFF))
        self.closed = True

    def stop_reply(self, ev: StopEvent) -> bytes:
        cpu = ev.cpu if ev.cpu is not None else self.g_cpu
        out = b"T%02x" % (ev.signal & 0xFF)
        if ev.reason == "swbreak":
            out += b"swbreak:;"
        elif ev.reason == "hwbreak":
            out += b"hwbreak:;"
        elif ev.reason == "watch" and ev.address is not None:
            out += b"watch:%x;" % ev.address
        return out + b"thread:%x;" % (cpu + 1)

    # --- packets ---------------------------------------------------------------------------------------

    def _dispatch(self, p: bytes) -> None:
        try:
            out = self._handle(p)
        except (ValueError, IndexError):
            out = E_INVALID
        except Exception:  # noqa: BLE001 - a failure reading the machine must not end the session
            log.exception("gdb packet %r failed", p[:60])
            out = E_FAILED
        if out is not None:
            self.reply(out)

    def _handle(self, p: bytes) -> bytes | None:
        """The reply to packet p (b"" for unsupported); None when there is none to send now."""
        if not p:
            return b""
        c = p[:1]
        if c == b"?":
            ev = self.target.wait_stopped(5.0) or StopEvent(self.g_cpu, "attach")
            return self.stop_reply(ev)
        if c == b"g":
            return rsp.to_hex(x86.read_all(self.target.read_registers(self.g_cpu)))
        if c == b"G":
            return self._write_registers(rsp.from_hex(p[1:]))
        if c == b"p":
            value = x86.read_register(self.target.read_registers(self.g_cpu), rsp.parse_hex(p[1:]))
            return E_INVALID if value is None else rsp.to_hex(value)
        if c == b"P":
            num, _, val = p[1:].partition(b"=")
            state = self.target.read_registers(self.g_cpu)
            if not x86.write_register(state, rsp.parse_hex(num), rsp.from_hex(val)):
                return E_INVALID
            self.target.write_registers(self.g_cpu, state)
            return b"OK"
        if c == b"m":
            addr, length = self._addr_len(p[1:])
            data = self.target.read_memory(self.g_cpu, addr, min(length, MAX_MEMORY), self.physical)
            if not data and length:
                return E_MEMORY
            return rsp.to_hex(data)
        if c in (b"M", b"X"):
            head, sep, body = p[1:].partition(b":")
            if not sep:
                return E_INVALID
            addr, length = self._addr_len(head)
            data = rsp.from_hex(body) if c == b"M" else rsp.unescape_binary(body)
            if len(data) != length:
                return E_INVALID
            if not data:
                return b"OK"
            return b"OK" if self.target.write_memory(self.g_cpu, addr, data, self.physical) else E_MEMORY
        if c in (b"Z", b"z"):
            return self._breakpoint(c == b"Z", p[1:])
        if c in (b"c", b"C", b"s", b"S"):
            return self._old_resume(c, p[1:])
        if c == b"H":
            return self._set_thread(p[1:2], p[2:])
        if c == b"T":
            cpu = self._thread(p[1:])
            return b"OK" if cpu is not None and cpu >= 0 else E_INVALID
        if c == b"D":
            self.target.detach()
            self.reply(b"OK")
            self.closed = True
            return None
        if c == b"k":
            self.closed = True
            self.target.kill()
            return None
        if c == b"q":
            return self._query(p)
        if c == b"Q":
            return self._set(p)
        if c == b"v":
            return self._v(p)
        return b""

    @staticmethod
    def _addr_len(text: bytes) -> tuple[int, int]:
        a, sep, n = text.partition(b",")
        if not sep:
            raise ValueError("expected ADDR,LENGTH")
        addr, length = rsp.parse_hex(a), rsp.parse_hex(n)
        if addr >= 1 << 64:
            raise ValueError("address beyond 64 bits")
        return addr, length

    def _write_registers(self, data: bytes) -> bytes:
        state = self.target.read_registers(self.g_cpu)
        if not x86.write_all(state, data):
            return E_INVALID
        self.target.write_registers(self.g_cpu, state)
        return b"OK"

    def _breakpoint(self, insert: bool, args: bytes) -> bytes:
        fields = args.split(b";", 1)[0].split(b",")
        if len(fields) != 3:
            return E_INVALID
        kind = BREAKPOINT_KINDS.get(rsp.parse_hex(fields[0]))
        if kind is None:
            return b""
        addr, length = rsp.parse_hex(fields[1]), rsp.parse_hex(fields[2])
        if addr >= 1 << 64 or length > 1 << 20:
            return E_INVALID
        op = self.target.insert_breakpoint if insert else self.target.remove_breakpoint
        done = op(kind, addr, length)
        return b"" if done is None else b"OK" if done else E_FAILED

    def _thread(self, text: bytes) -> int | None:
        """A thread id as gdb writes it: -1 all, 0 any (the current), N = vCPU N-1; None if no such."""
        if text.startswith(b"p"):            # multiprocess form pPID.TID, in case a client uses it
            text = text.partition(b".")[2] or b"-1"
        if text == b"-1":
            return -1
        n = rsp.parse_hex(text)
        if n == 0:
            return self.g_cpu
        return n - 1 if n <= self.target.cpu_count else None

    def _set_thread(self, op: bytes, text: bytes) -> bytes:
        cpu = self._thread(text)
        if cpu is None or op not in (b"g", b"c", b"m"):
            return E_INVALID
        if op == b"c":
            self.c_cpu = cpu
        elif cpu >= 0:
            self.g_cpu = cpu
        return b"OK"

    def _old_resume(self, c: bytes, args: bytes) -> bytes | None:
        if c in (b"C", b"S"):                # a signal to deliver: a machine has none; ignored
            args = args.partition(b";")[2]
        step = c in (b"s", b"S")
        cpu = self.c_cpu if self.c_cpu >= 0 else self.g_cpu
        if args:
            state = self.target.read_registers(cpu)
            x86.write_register(state, x86.RIP, rsp.parse_hex(args).to_bytes(8, "little"))
            self.target.write_registers(cpu, state)
        self._resume(cpu if step else None, None)
        return None

    def _resume(self, step: int | None, only: int | None) -> None:
        self.running = True
        self.target.resume(step, only)

    def _vcont(self, actions: bytes) -> bytes | None:
        """``vCont;s:1;c`` steps vCPU 0 and runs the others; without an action for every thread
        (``vCont;s:1``, gdb's scheduler locking) the threads it does not name stay stopped."""
        step: int | None = None
        default: bytes | None = None
        seen: list[int] = []
        for part in actions.split(b";"):
            if not part:
                continue
            act, _, tid = part.partition(b":")
            verb = act[:1]
            if verb not in (b"c", b"C", b"s", b"S"):
                return E_INVALID if verb not in (b"t", b"r") else b""
            if not tid:
                default = default or verb
                continue
            cpu = self._thread(tid)
            if cpu is None:
                return E_INVALID
            if cpu == -1:
                default = default or verb
                continue
            if cpu in seen:
                continue                      # the leftmost action for a thread wins
            seen.append(cpu)
            if verb in (b"s", b"S") and step is None:
                step = cpu
        if not seen and default is None:
            return E_INVALID
        if step is None and default in (b"s", b"S"):
            step = self.g_cpu
        only = None
        if default is None:
            only = step if step is not None else seen[0]
        self._resume(step, only)
        return None

    def _query(self, p: bytes) -> bytes:
        name, _, args = p[1:].partition(b":")
        if name == b"Supported":
            return SUPPORTED
        if name == b"Attached":
            return b"1"                       # an existing machine: gdb detaches (not kills) on quit
        if name == b"C":
            return b"QC%x" % (self.g_cpu + 1)
        if name == b"fThreadInfo":
            return b"m" + b",".join(b"%x" % (i + 1) for i in range(self.target.cpu_count))
        if name == b"sThreadInfo":
            return b"l"
        if name.startswith(b"ThreadExtraInfo,"):
            cpu = self._thread(name.partition(b",")[2])
            if cpu is None or cpu < 0:
                return E_INVALID
            return rsp.to_hex(self.target.thread_name(cpu).encode())
        if name == b"Symbol":
            return b"OK"
        if name.startswith(b"Rcmd,"):
            command = rsp.from_hex(name[5:]).decode("utf-8", "replace")
            text = self.target.monitor(command)
            if text:
                self._console(text)
            return b"OK"
        if name == b"Xfer":
            return self._xfer(args)
        if name == b"qemu.PhyMemMode":
            return b"1" if self.physical else b"0"
        return b""

    def _xfer(self, args: bytes) -> bytes:
        obj, _, rest = args.partition(b":")
        op, _, rest = rest.partition(b":")
        annex, _, span = rest.partition(b":")
        if obj != b"features" or op != b"read":
            return b""
        if annex != b"target.xml":
            return b"E00"
        offset, length = self._addr_len(span)
        data = x86.TARGET_XML.encode()
        chunk = data[offset : offset + min(length, MAX_MEMORY)]
        more = offset + len(chunk) < len(data)
        return (b"m" if more else b"l") + rsp.escape_binary(chunk)

    def _set(self, p: bytes) -> bytes | None:
        if p == b"QStartNoAckMode":
            self.reply(b"OK")                 # gdb acknowledges this reply, then neither side does
            self.no_ack = True
            return None
        if p.startswith(b"Qqemu.PhyMemMode:"):
            value = p.partition(b":")[2]
            if value not in (b"0", b"1"):
                return E_INVALID
            self.physical = value == b"1"
            return b"OK"
        return b""

    def _v(self, p: bytes) -> bytes | None:
        if p == b"vCont?":
            return b"vCont;c;C;s;S"
        if p.startswith(b"vCont;"):
            return self._vcont(p[6:])
        if p.startswith(b"vKill"):
            self.reply(b"OK")
            self.closed = True
            self.target.kill()
            return None
        return b""


# --- the server --------------------------------------------------------------------------------------


def parse_gdb_address(text: str) -> tuple[str, int]:
    """QEMU's ``-gdb`` spelling, ``tcp:[HOST]:PORT`` (HOST defaults to 127.0.0.1), or ``:PORT``."""
    spec = text.strip()
    if spec.startswith("tcp:"):
        spec = spec[4:]
    elif "://" in spec or (":" not in spec and not spec.isdigit()):
        raise ConfigError(f"-gdb {text}: expected tcp:[HOST]:PORT, e.g. tcp::1234 or tcp:127.0.0.1:1234")
    spec = spec.split(",", 1)[0]              # QEMU's ,server / ,nowait options mean nothing here
    host, sep, port = spec.rpartition(":")
    if not sep:
        host, port = "", spec
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"-gdb {text}: port {port!r} is not a number from 0 to 65535")
    return host, int(port)


class GdbServer:
    """Listens for gdb on TCP and serves one connection at a time on its own thread."""

    def __init__(self, target: DebugTarget, host: str = "127.0.0.1", port: int = 1234) -> None:
        self.target = target
        self.host = host
        self.port = port
        self.session: GdbSession | None = None
        self._sock: socket.socket | None = None
        self._client: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._events: list[tuple[str, object]] = []
        self._sel: selectors.BaseSelector | None = None
        self._broken = False          # sending to the client failed: it is gone, and detached for it
        self._stop = False
        self.connections = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise ConfigError(f"-gdb tcp:{self.host}:{self.port}: cannot listen ({e.strerror}); "
                              "choose another port") from None
        sock.listen(1)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="gdbstub", daemon=True)
        self._thread.start()

    # --- events from the machine (any thread; never block) ---------------------------------------

    def on_stop(self, ev: StopEvent) -> None:
        self._post("stop", ev)

    def on_exit(self, code: int) -> None:
        self._post("exit", code)

    def _post(self, kind: str, value: object) -> None:
        with self._lock:
            self._events.append((kind, value))
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # --- the thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        sel = self._sel = selectors.DefaultSelector()
        assert self._sock is not None
        sel.register(self._sock, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop:
                for key, _ in sel.select(1.0):
                    if key.data == "listen":
                        self._accept(sel)
                    elif key.data == "wake":
                        self._drain(sel)
                    elif key.data == "client":
                        self._read(sel)
        except Exception:  # noqa: BLE001 - the stub must never take the VMM down
            log.exception("gdbstub thread failed")
        finally:
            self._hang_up(sel, detach=False)
            sel.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        assert self._sock is not None
        try:
            conn, peer = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        if self._client is not None:          # one gdb at a time, as QEMU
            conn.close()
            return
        conn.setblocking(True)
        conn.settimeout(10.0)                 # a gdb that stops reading is dropped, not waited for
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = conn
        self._broken = False
        self.connections += 1
        self.session = GdbSession(self.target, self._send)
        sel.register(conn, selectors.EVENT_READ, "client")
        log.info("gdb connected from %s:%s", *peer[:2])
        with self._lock:
            self._events = [e for e in self._events if e[0] == "exit"]   # stops before this gdb are not its
        self.target.attach()

    def _send(self, data: bytes) -> None:
        if self._client is None:
            return
        try:
            self._client.sendall(data)
        except OSError:
            log.info("gdb connection lost while sending")
            self._broken = True
            if self.session is not None:
                self.session.closed = True

    def _read(self, sel: selectors.BaseSelector) -> None:
        assert self._client is not None and self.session is not None
        try:
            data = self._client.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._hang_up(sel, detach=True)
            return
        self.session.feed(data)
        if self.session.closed:
            self._hang_up(sel, detach=self._broken)

    def _drain(self, sel: selectors.BaseSelector) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            events, self._events = self._events, []
        session = self.session
        for kind, value in events:
            if session is None:
                continue
            if kind == "exit":
                assert isinstance(value, int)
                session.report_exit(value)
            elif session.running:
                # The stop as it is once every vCPU is out; None if the machine runs again (an
                # event from before gdb's last resume).
                ev = self.target.wait_stopped(5.0)
                if ev is not None:
                    session.report_stop(ev)
        if session is not None and session.closed:
            self._hang_up(sel, detach=self._broken)

    def _hang_up(self, sel: selectors.BaseSelector, *, detach: bool) -> None:
        """The connection ends: a gdb that went away without detaching is detached for it."""
        session, self.session = self.session, None
        if self._client is not None:
            try:
                sel.unregister(self._client)
            except (KeyError, ValueError):
                pass
        self._close_client()
        if detach and session is not None:
            log.info("gdb went away; detaching")
            self.target.detach()

    def _close_client(self) -> None:
        conn, self._client = self._client, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2)
        if self._sock is not None:
            self._sock.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


__all__ = ["DebugTarget", "GdbServer", "GdbSession", "parse_gdb_address", "SIGTRAP"]
