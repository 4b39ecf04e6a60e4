"""The QMP server: QEMU's JSON machine protocol on a unix or TCP socket, served from one event-loop thread."""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import re
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from ..errors import ConfigError, PyvmmError
from . import commands as C
from .commands import CommandError, MachineControl

log = logging.getLogger("pyvmm.monitor")

MAX_REQUEST = 1 << 20        # bytes of one unfinished request before the client is dropped
MAX_OUTPUT = 1 << 20         # bytes queued for a client that does not read before it is dropped
MAX_NESTING = 1024           # JSON nesting depth (QEMU's json-streamer has the same limit)
MAX_CLIENTS = 1024
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# Events QMP clients get; the balloon's own STATS notifications are not a QEMU event.
QMP_EVENTS = frozenset({"BALLOON_CHANGE", "STOP", "RESUME", "SHUTDOWN", "RESET"})


# --- address ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QmpAddress:
    """Where the server listens: a unix socket path, or a TCP host and port."""

    kind: str                 # "unix" or "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


def parse_address(text: str, what: str = "--qmp") -> QmpAddress:
    """QEMU's `-qmp` spelling: ``unix:PATH[,server][,wait=off]`` or ``tcp:HOST:PORT[,server][,wait=off]``.

    pyvmm always listens and never waits for a client before running the guest, so ``server`` and
    ``wait=off`` (or ``nowait``) are accepted and implied; ``server=off`` and ``wait=on`` are refused.
    """
    head, *opts = text.split(",")
    for opt in opts:
        if opt in ("server", "server=on", "wait=off", "nowait", "wait=no", "server=yes"):
            continue
        if opt in ("wait=on", "wait", "server=off"):
            raise ConfigError(f"{what} {text}: {opt} is not supported; pyvmm's QMP always listens, wait=off")
        raise ConfigError(f"{what} {text}: unknown option {opt!r} (use server,wait=off)")
    if head.startswith("unix:"):
        path = head[len("unix:"):]
        if not path:
            raise ConfigError(f"{what} {text}: missing socket path (unix:PATH)")
        return QmpAddress("unix", path=path)
    if head.startswith("tcp:"):
        m = re.fullmatch(r"tcp:(\[[0-9a-fA-F:.]+\]|[^:\[\]]*):(\d+)", head)
        if not m:
            raise ConfigError(f"{what} {text}: expected tcp:HOST:PORT, e.g. tcp:127.0.0.1:4444")
        host = m.group(1).strip("[]") or "127.0.0.1"
        port = int(m.group(2))
        if port > 65535:
            raise ConfigError(f"{what} {text}: port {port} is out of range (0-65535)")
        return QmpAddress("tcp", host=host, port=port)
    raise ConfigError(f"{what} {text}: expected unix:PATH[,server,wait=off] or tcp:127.0.0.1:PORT")


def listen_on(a: QmpAddress, what: str) -> tuple[socket.socket, QmpAddress, tuple[int, int] | None]:
    """A listening socket at ``a`` (``what`` names the server in errors: "QMP", "monitor"); returns it,
    the address (a TCP port 0 resolved), and the (st_dev, st_ino) of a unix socket it created, for
    unlink_own().  PyvmmError (one line) if the address cannot be used."""
    created = None
    if a.kind == "unix":
        if os.path.lexists(a.path):
            kind = "socket" if stat.S_ISSOCK(os.lstat(a.path).st_mode) else "file"
            raise PyvmmError(f"{what} socket path {a.path} already exists (a {kind}); remove it or choose another")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(a.path)
        except OSError as e:
            sock.close()
            if e.errno == errno.ENAMETOOLONG or "too long" in str(e):
                raise PyvmmError(f"{what} socket path {a.path} is too long for a unix socket") from None
            raise PyvmmError(f"cannot create {what} socket {a.path}: {e.strerror or e}") from None
        st = os.stat(a.path)
        created = (st.st_dev, st.st_ino)
    else:
        family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((a.host, a.port))
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:
                raise PyvmmError(f"{what} port {a.host}:{a.port} is already in use; choose another") from None
            raise PyvmmError(f"cannot listen for {what} on {a.host}:{a.port}: {e.strerror or e}") from None
        a = QmpAddress("tcp", host=a.host, port=sock.getsockname()[1])
    sock.listen(64)
    return sock, a, created


def unlink_own(path: str, created: tuple[int, int] | None) -> None:
    """Remove the unix socket listen_on() made, only if the path still names it: if someone deleted it
    while the VM ran (and maybe put something else there), there is nothing of ours to remove."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == created:
            os.unlink(path)
    except OSError:
        pass


# --- the input stream -------------------------------------------------------------------------------

_STR_STOP = re.compile(rb'["\\]')
_STRUCT = re.compile(rb'[{}\[\]"]')
_SCALAR = re.compile(rb'[^\s{}\[\]",:]+')


class FatalInput(Exception):
    """Input the connection cannot recover from (oversized or too deeply nested): reply, then drop."""


def _no_constants(name: str) -> Any:
    raise ValueError(f"invalid token {name!r}")


class JsonStream:
    """Splits a byte stream into JSON values without relying on newlines (qemu.qmp sends none).

    It tracks only string state and bracket depth to find where a top-level value ends, then lets
    json.loads decode exactly that slice; a bad value yields an error and the stream goes on after it,
    as QEMU's json-streamer does.  A bare top-level scalar (``garbage``) ends at the next delimiter.
    """

    def __init__(self, limit: int = MAX_REQUEST) -> None:
        self.limit = limit
        self.buf = bytearray()
        self._reset()

    def _reset(self) -> None:
        self.pos = 0            # scan position in buf
        self.in_value = False
        self.in_str = False
        self.depth = 0

    def feed(self, data: bytes) -> list[tuple[Any, str | None]]:
        """Values completed by data, each as (value, None) or (None, error description)."""
        self.buf += data
        out: list[tuple[Any, str | None]] = []
        while True:
            item = self._next()
            if item is None:
                break
            out.append(item)
        if len(self.buf) > self.limit:
            self.buf.clear()
            self._reset()
            raise FatalInput(f"QMP request exceeds {self.limit} bytes; closing the connection")
        return out

    def _take(self, end: int) -> tuple[Any, str | None]:
        chunk = bytes(self.buf[:end])
        del self.buf[:end]
        self._reset()
        try:
            return json.loads(chunk, parse_constant=_no_constants), None
        except RecursionError:
            raise FatalInput("JSON nesting depth limit exceeded; closing the connection") from None
        except (ValueError, UnicodeDecodeError) as e:
            msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
            return None, f"JSON parse error, {msg[0].lower()}{msg[1:]}" if msg else "JSON parse error"

    def _next(self) -> tuple[Any, str | None] | None:
        buf = self.buf
        if not self.in_value:
            del buf[: len(buf) - len(buf.lstrip())]     # JSON's whitespace, as \s in a bytes pattern
            if not buf:
                return None
            c = buf[0:1]
            if c in (b"{", b"["):
                self.in_value, self.depth, self.pos = True, 1, 1
            elif c == b'"':
                self.in_value, self.in_str, self.depth, self.pos = True, True, 0, 1
            elif c in (b"}", b"]", b",", b":"):
                del buf[:1]
                return None, "JSON parse error, expecting value"
            else:
                scalar = _SCALAR.match(buf, 0)
                end = scalar.end() if scalar is not None else 1
                if end == len(buf):
                    return None      # the token may go on in the next read
                return self._take(end)
        while True:
            if self.in_str:
                m = _STR_STOP.search(buf, self.pos)
                if m is None:
                    self.pos = len(buf)
                    return None
                if m.group() == b"\\":
                    if m.end() >= len(buf):
                        self.pos = m.start()
                        return None
                    self.pos = m.end() + 1
                    continue
                self.in_str = False
                self.pos = m.end()
                if self.depth == 0:
                    return self._take(self.pos)
                continue
            m = _STRUCT.search(buf, self.pos)
            if m is None:
                self.pos = len(buf)
                return None
            self.pos = m.end()
            tok = m.group()
            if tok == b'"':
                self.in_str = True
            elif tok in (b"{", b"["):
                self.depth += 1
                if self.depth > MAX_NESTING:
                    buf.clear()
                    self._reset()
                    raise FatalInput("JSON nesting depth limit exceeded; closing the connection")
            else:
                self.depth -= 1
                if self.depth == 0:
                    return self._take(self.pos)


# --- commands ---------------------------------------------------------------------------------------

# Argument schema: name -> (type, required).  Types: "int", "str", "bool", "any", "strlist".
_TYPE_NAMES = {"int": "integer", "str": "string", "bool": "boolean", "strlist": "array"}


def _check_args(args: dict, schema: dict[str, tuple[str, bool]]) -> None:
    """QEMU's argument checks, with QEMU's wording (qapi/qobject-input-visitor.c)."""
    for name in args:
        if name not in schema:
            raise CommandError("GenericError", f"Parameter '{name}' is unexpected")
    for name, (kind, required) in schema.items():
        if name not in args:
            if required:
                raise CommandError("GenericError", f"Parameter '{name}' is missing")
            continue
        v = args[name]
        ok = {
            "int": isinstance(v, int) and not isinstance(v, bool) and INT64_MIN <= v <= INT64_MAX,
            "str": isinstance(v, str),
            "bool": isinstance(v, bool),
            "any": True,
            "strlist": isinstance(v, list) and all(isinstance(x, str) for x in v),
        }[kind]
        if not ok:
            raise CommandError(
                "GenericError", f"Invalid parameter type for '{name}', expected: {_TYPE_NAMES[kind]}"
            )


def _key_list(value: Any) -> list:
    if not isinstance(value, list):
        raise CommandError("GenericError", "Invalid parameter type for 'keys', expected: array")
    return value


@dataclass
class _Client:
    sock: socket.socket
    peer: str
    stream: JsonStream
    out: bytearray
    negotiated: bool = False
    closing: bool = False     # send what is queued, then close


class QmpServer:
    """A QMP server for one machine; several clients at once, none able to stall the others.

    All sockets are non-blocking and served by one selectors loop on a daemon thread; commands run
    on that thread.  Events may arrive from any thread (vCPU, device): they are queued and the loop
    is woken through a socketpair, so an event never waits on a client.  A client whose unread
    output exceeds MAX_OUTPUT, or whose unfinished request exceeds MAX_REQUEST, is dropped.
    """

    def __init__(
        self,
        machine: MachineControl,
        address: str,
        *,
        max_request: int = MAX_REQUEST,
        max_output: int = MAX_OUTPUT,
    ) -> None:
        self.machine = machine
        self.address = parse_address(address)
        self.max_request = max_request
        self.max_output = max_output
        self._listen: socket.socket | None = None
        self._sel: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._events: queue.SimpleQueue[tuple[str, dict | None, float]] = queue.SimpleQueue()
        self._clients: dict[int, _Client] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created_path = ""
        self._created_id: tuple[int, int] | None = None
        self._commands: dict[str, tuple[Callable[[_Client, dict], Any], dict[str, tuple[str, bool]]]] = {
            "qmp_capabilities": (self._cmd_capabilities, {"enable": ("strlist", False)}),
            "query-version": (lambda c, a: C.query_version(), {}),
            "query-status": (lambda c, a: C.query_status(self.machine), {}),
            "query-commands": (lambda c, a: [{"name": n} for n in self._commands], {}),
            "stop": (lambda c, a: C.stop(self.machine), {}),
            "cont": (lambda c, a: C.cont(self.machine), {}),
            "system_reset": (lambda c, a: C.system_reset(self.machine), {}),
            "quit": (self._cmd_quit, {}),
            "balloon": (self._cmd_balloon, {"value": ("int", True)}),
            "query-balloon": (lambda c, a: C.query_balloon(self.machine), {}),
            "qom-get": (
                lambda c, a: C.qom_get(self.machine, a["path"], a["property"]),
                {"path": ("str", True), "property": ("str", True)},
            ),
            "qom-set": (
                lambda c, a: C.qom_set(self.machine, a["path"], a["property"], a["value"]),
                {"path": ("str", True), "property": ("str", True), "value": ("any", True)},
            ),
            "pmemsave": (
                lambda c, a: C.pmemsave(self.machine, a["val"], a["size"], a["filename"]),
                {"val": ("int", True), "size": ("int", True), "filename": ("str", True),
                 "cpu-index": ("int", False)},
            ),
            "memsave": (
                lambda c, a: C.memsave(self.machine, a["val"], a["size"], a["filename"], a.get("cpu-index", 0)),
                {"val": ("int", True), "size": ("int", True), "filename": ("str", True),
                 "cpu-index": ("int", False)},
            ),
            "query-cpus-fast": (lambda c, a: C.query_cpus_fast(self.machine), {}),
            "query-name": (lambda c, a: C.query_name(self.machine), {}),
            "query-kvm": (lambda c, a: {"enabled": True, "present": True}, {}),
            # pyvmm's own (x- as QEMU names what it does not promise): what `pyvmm top` shows
            "x-pyvmm-query-counters": (lambda c, a: C.query_counters(self.machine), {}),
            "qom-list": (lambda c, a: C.qom_list(self.machine, a["path"]), {"path": ("str", True)}),
            "send-key": (
                lambda c, a: C.send_key(self.machine, [C.resolve_key(k) for k in _key_list(a["keys"])],
                                        a.get("hold-time")),
                {"keys": ("any", True), "hold-time": ("int", False)},
            ),
            "screendump": (
                self._cmd_screendump,
                {"filename": ("str", True), "device": ("str", False), "head": ("int", False),
                 "format": ("str", False)},
            ),
            "human-monitor-command": (
                self._cmd_hmp,
                {"command-line": ("str", True), "cpu-index": ("int", False)},
            ),
        }

    # --- life cycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind, listen and serve on a daemon thread; PyvmmError (one line) if the address is unusable."""
        self._listen = self._bind()
        self._listen.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listen, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.machine.add_listener(self._on_event)
        if self.machine.balloon is not None:
            self.machine.balloon.add_listener(self._on_event)
        self._thread = threading.Thread(target=self._run, name="qmp", daemon=True)
        self._thread.start()

    def _bind(self) -> socket.socket:
        sock, self.address, self._created_id = listen_on(self.address, "QMP")
        if self._created_id is not None:
            self._created_path = self.address.path
        return sock

    def close(self, flush_timeout: float = 0.5) -> None:
        """Stop serving: deliver what is queued (events such as SHUTDOWN) for a moment, then close all."""
        self._flush_timeout = flush_timeout
        self._stop.set()
        self._wake()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(flush_timeout + 2.0)
        elif t is None:
            self._cleanup()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- events from any thread ---------------------------------------------------------------------

    def _on_event(self, name: str, data: dict | None = None) -> None:
        if name not in QMP_EVENTS:
            return
        self._events.put((name, data, time.time()))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending, or we are closed

    # --- the loop ---------------------------------------------------------------------------------

    def _run(self) -> None:
        sel = self._sel
        assert sel is not None
        try:
            while not self._stop.is_set():
                for key, mask in sel.select():
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        client = key.data
                        if mask & selectors.EVENT_READ:
                            self._read(client)
                        if mask & selectors.EVENT_WRITE and client.sock.fileno() >= 0:
                            self._flush(client)
                self._deliver_events()
            self._deliver_events()
            self._final_flush(getattr(self, "_flush_timeout", 0.5))
        except Exception:  # a bug in the monitor must not go unnoticed, nor take the VM down
            log.exception("QMP server failed")
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        for client in list(self._clients.values()):
            self._drop(client, None)
        if self._sel is not None:
            self._sel.close()
        for s in (self._listen, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        if self._created_path:
            # Only the socket we made: if someone deleted it while the VM ran (and maybe put something
            # else at that path), there is nothing of ours to remove.
            unlink_own(self._created_path, self._created_id)
            self._created_path = ""

    def _accept(self) -> None:
        assert self._listen is not None and self._sel is not None
        while True:
            try:
                sock, peer = self._listen.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: refuse this one, keep serving the rest
                log.warning("QMP: cannot accept a client: %s", e)
                return
            if len(self._clients) >= MAX_CLIENTS:
                sock.close()
                continue
            sock.setblocking(False)
            client = _Client(sock, str(peer or "unix"), JsonStream(self.max_request), bytearray())
            self._clients[sock.fileno()] = client
            self._sel.register(sock, selectors.EVENT_READ, client)
            self._send(client, {"QMP": {"version": C.query_version(), "capabilities": []}})

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(client, None)
            return
        if client.closing:
            return
        try:
            items = client.stream.feed(data)
        except FatalInput as e:
            self._send(client, {"error": {"class": "GenericError", "desc": str(e)}})
            client.closing = True
            self._flush(client)
            return
        for value, err in items:
            if client.sock.fileno() < 0:
                return
            if err is not None:
                self._send(client, {"error": {"class": "GenericError", "desc": err}})
            else:
                self._dispatch(client, value)

    def _dispatch(self, client: _Client, req: Any) -> None:
        if not isinstance(req, dict):
            self._send(client, {"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}})
            return
        reply: dict[str, Any] = {}
        if "id" in req:
            reply["id"] = req["id"]
        after: Callable[[], None] | None = None
        try:
            for key in req:
                if key not in ("execute", "arguments", "id"):
                    raise CommandError("GenericError", f"QMP input member '{key}' is unexpected")
            if "execute" not in req:
                raise CommandError("GenericError", "QMP input lacks member 'execute'")
            name = req["execute"]
            if not isinstance(name, str):
                raise CommandError("GenericError", "QMP input member 'execute' must be a string")
            args = req.get("arguments", {})
            if not isinstance(args, dict):
                raise CommandError("GenericError", "QMP input member 'arguments' must be an object")
            if not client.negotiated and name != "qmp_capabilities":
                raise CommandError("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")
            if client.negotiated and name == "qmp_capabilities":
                raise CommandError("CommandNotFound", "Capabilities negotiation is already complete, command ignored")
            if name not in self._commands:
                raise CommandError("CommandNotFound", f"The command {name} has not been found")
            handler, schema = self._commands[name]
            _check_args(args, schema)
            result = handler(client, args)
            if callable(result):      # quit: act once the reply is on its way
                after, result = result, None
            reply["return"] = {} if result is None else result
        except CommandError as e:
            reply["error"] = {"class": e.cls, "desc": e.desc}
        except Exception as e:  # a bug behind a command: report it, keep the connection and the VM
            log.exception("QMP command failed")
            reply["error"] = {"class": "GenericError", "desc": f"internal error: {type(e).__name__}: {e}"}
        self._send(client, reply)
        if after is not None:
            self._flush(client)
            after()

    # --- command handlers that need the client --------------------------------------------------------

    def _cmd_capabilities(self, client: _Client, args: dict) -> None:
        for cap in args.get("enable", []):
            raise CommandError("GenericError", f"Capability '{cap}' not available")
        client.negotiated = True

    def _cmd_balloon(self, client: _Client, args: dict) -> None:
        C.balloon(self.machine, args["value"])

    def _cmd_screendump(self, client: _Client, args: dict) -> None:
        C.screendump(self.machine, args["filename"], args.get("format"))    # device and head: the one VGA

    def _cmd_quit(self, client: _Client, args: dict) -> Callable[[], None]:
        return self.machine.quit

    def _cmd_hmp(self, client: _Client, args: dict) -> str:
        from .hmp import run_hmp

        out = run_hmp(self.machine, args["command-line"], cpu=args.get("cpu-index", 0))
        return out.replace("\r\n", "\n").replace("\n", "\r\n")

    # --- output -------------------------------------------------------------------------------------

    def _deliver_events(self) -> None:
        while True:
            try:
                name, data, ts = self._events.get_nowait()
            except queue.Empty:
                return
            secs = int(ts)
            msg: dict[str, Any] = {
                "timestamp": {"seconds": secs, "microseconds": int((ts - secs) * 1_000_000)},
                "event": name,
            }
            if data:
                msg["data"] = data
            for client in list(self._clients.values()):
                if client.negotiated and not client.closing:
                    self._send(client, msg)

    def _send(self, client: _Client, msg: dict) -> None:
        client.out += json.dumps(msg).encode() + b"\r\n"
        if len(client.out) > self.max_output:
            log.info("QMP: dropping client %s that does not read its replies", client.peer)
            self._drop(client, None)
            return
        self._flush(client)

    def _flush(self, client: _Client) -> None:
        if client.sock.fileno() < 0:
            return
        try:
            while client.out:
                n = client.sock.send(client.out)
                del client.out[:n]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._drop(client, None)
            return
        if client.closing and not client.out:
            self._drop(client, None)
            return
        assert self._sel is not None
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.out else 0)
        if self._sel.get_key(client.sock).events != want:
            self._sel.modify(client.sock, want, client)

    def _drop(self, client: _Client, reason: str | None) -> None:
        fd = client.sock.fileno()
        if fd < 0:
            return
        self._clients.pop(fd, None)
        try:
            if self._sel is not None:
                self._sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    def _final_flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [c for c in self._clients.values() if c.out]
            if not pending:
                return
            assert self._sel is not None
            for key, mask in self._sel.select(max(0.0, deadline - time.monotonic())):
                if isinstance(key.data, _Client) and mask & selectors.EVENT_WRITE:
                    self._flush(key.data)

    @property
    def client_count(self) -> int:
        """Connected clients (for tests and `info` output)."""
        return len(self._clients)
