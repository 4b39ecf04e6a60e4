"""CLI verbs that steer a running VM through its QMP socket: `pyvmm balloon` and `pyvmm info balloon`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Self

from .errors import ConfigError, PyvmmError
from .monitor import commands as _commands  # light; the QMP server module loads only when a verb runs
from .units import format_size, parse_size


class QmpConnection:
    """A small blocking QMP client (the runtime needs no asyncio library): connect, negotiate, execute."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        import socket

        from .monitor.qmp import JsonStream, parse_address

        if address.startswith(("unix:", "tcp:")):
            addr = parse_address(address)
        else:
            addr = parse_address(f"unix:{address}")
        self.where = str(addr)
        family = socket.AF_UNIX if addr.kind == "unix" else socket.AF_INET6 if ":" in addr.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(addr.path if addr.kind == "unix" else (addr.host, addr.port))
        except OSError as e:
            self.sock.close()
            raise PyvmmError(f"cannot connect to QMP at {self.where}: {e.strerror or e}; is the VM running "
                             f"with --qmp {self.where}?") from None
        self._stream = JsonStream(limit=64 << 20)
        self._pending: list[Any] = []
        self.events: list[dict] = []
        greeting = self._recv()
        if not isinstance(greeting, dict) or "QMP" not in greeting:
            raise PyvmmError(f"{self.where} does not speak QMP (got {str(greeting)[:60]!r})")
        self.execute("qmp_capabilities")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv(self) -> Any:
        while not self._pending:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise PyvmmError(f"QMP at {self.where} did not answer in time") from None
            except OSError as e:
                raise PyvmmError(f"QMP connection to {self.where} failed: {e.strerror or e}") from None
            if not data:
                raise PyvmmError(f"QMP at {self.where} closed the connection")
            for value, err in self._stream.feed(data):
                if err is None:
                    self._pending.append(value)
        return self._pending.pop(0)

    def execute(self, command: str, arguments: dict | None = None) -> Any:
        """The command's return value; PyvmmError with QMP's error description."""
        msg: dict[str, Any] = {"execute": command, "id": command}
        if arguments:
            msg["arguments"] = arguments
        try:
            self.sock.sendall(json.dumps(msg).encode())
        except OSError as e:
            raise PyvmmError(f"QMP connection to {self.where} failed: {e.strerror or e}") from None
        while True:
            reply = self._recv()
            if isinstance(reply, dict) and "event" in reply:
                self.events.append(reply)
                continue
            if isinstance(reply, dict) and "error" in reply:
                raise PyvmmError(f"{command}: {reply['error'].get('desc', reply['error'])}")
            if isinstance(reply, dict) and "return" in reply:
                return reply["return"]

    def wait_event(self, name: str, timeout: float) -> dict | None:
        """The next event called name (already received ones first), or None after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("event") == name:
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            saved = self.sock.gettimeout()
            self.sock.settimeout(left)
            try:
                msg = self._recv()
            except PyvmmError:
                return None
            finally:
                self.sock.settimeout(saved)
            if isinstance(msg, dict) and "event" in msg:
                self.events.append(msg)


# --- verbs ------------------------------------------------------------------------------------------


def balloon_main(args: argparse.Namespace) -> int:
    """`pyvmm balloon --qmp PATH SIZE [--wait]`: set the target guest size; 0 on success."""
    target = parse_size(args.size, what="balloon size")
    if target <= 0:
        raise ConfigError(f"balloon size {args.size!r} must be above zero")
    with QmpConnection(args.qmp, timeout=args.timeout) as q:
        q.execute("balloon", {"value": target})
        if not args.wait:
            return 0
        return _follow_balloon(q, target, args.timeout)


def _follow_balloon(q: QmpConnection, target: int, timeout: float) -> int:
    """Wait for `actual` to reach the target on a status line (actual -> target, MiB/s); PyvmmError if
    it does not within timeout seconds."""
    from .termout import StatusLine

    t0 = time.monotonic()
    deadline = t0 + timeout
    actual = start = q.execute("query-balloon")["actual"]
    with StatusLine(every=5.0) as status:
        while actual != target:
            elapsed = time.monotonic() - t0
            rate = abs(actual - start) / elapsed / (1 << 20) if elapsed > 0.2 else 0.0
            status.update(f"balloon: actual {format_size(actual)} -> target {format_size(target)}, "
                          f"{rate:.1f} MiB/s, {elapsed:.1f} s")
            left = deadline - time.monotonic()
            if left <= 0:
                status.stop()
                raise PyvmmError(f"the guest reached {format_size(actual)}, not {format_size(target)}, "
                                 f"within {timeout:g} s (is its balloon driver loaded?)")
            ev = q.wait_event("BALLOON_CHANGE", min(left, 0.25))
            actual = ev["data"]["actual"] if ev is not None else q.execute("query-balloon")["actual"]
        elapsed = time.monotonic() - t0
        rate = abs(actual - start) / elapsed / (1 << 20) if elapsed > 0 else 0.0
        status.done(f"balloon: reached {format_size(target)} in {elapsed:.1f} s ({rate:.1f} MiB/s)")
    return 0


def balloon_report(q: QmpConnection) -> dict:
    """What `pyvmm info balloon` shows, in the --json shape (bytes, seconds); stats never received are
    null.  target, host RSS and the rest are pyvmm's own qom properties: a QEMU balloon answers
    query-balloon and its two properties, and the report then has only those."""
    actual = q.execute("query-balloon")["actual"]
    report: dict[str, Any] = {"actual": actual}
    path = _commands.BALLOON_QOM_PATH
    for prop in ("target", "guest-ram-rss", "ballooned-pages", "discarded-bytes"):
        try:
            report[prop] = q.execute("qom-get", {"path": path, "property": prop})
        except PyvmmError:
            pass     # not pyvmm, or not known yet (RSS on a host without mincore)
    try:
        gs = q.execute("qom-get", {"path": path, "property": "guest-stats"})
        interval = q.execute("qom-get", {"path": path, "property": "guest-stats-polling-interval"})
    except PyvmmError:
        return report  # a balloon without id=balloon0 (QEMU) still answers query-balloon
    report["stats"] = {k: (None if v == _commands.STAT_NEVER else v) for k, v in gs["stats"].items()}
    report["last-update"] = gs["last-update"]
    report["stats-age"] = round(max(0.0, time.time() - gs["last-update"]), 1) if gs["last-update"] else None
    report["polling-interval"] = interval
    return report


def _rows(report: dict) -> list[tuple[str, str]]:
    rows = []
    if "target" in report:
        rows.append(("target", format_size(report["target"])))
    rows.append(("actual", format_size(report["actual"])))
    if "guest-ram-rss" in report:
        rows.append(("host RSS of guest RAM", format_size(report["guest-ram-rss"])))
    if "ballooned-pages" in report:
        rows.append(("ballooned pages", str(report["ballooned-pages"])))
    if "discarded-bytes" in report:
        rows.append(("given back to the host", format_size(report["discarded-bytes"])))
    if "stats" in report:
        interval = report["polling-interval"]
        rows.append(("stats polling", f"every {interval} s" if interval else "off"))
        age = report["stats-age"]
        rows.append(("stats received", f"{age:.1f} s ago" if age is not None else "never"))
        byte_stats = {name for name, tag, _ in _commands.QEMU_STATS if tag in (0, 1, 4, 5, 6, 7)}
        for name, value in report["stats"].items():
            if value is None:
                text = "-"
            elif name in byte_stats:
                text = format_size(value)
            else:
                text = str(value)
            rows.append((name, text))
    return rows


def info_main(args: argparse.Namespace) -> int:
    """`pyvmm info balloon --qmp PATH [--json]`: a table for people, JSON for programs."""
    with QmpConnection(args.qmp, timeout=args.timeout) as q:
        report = balloon_report(q)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return 0
    rows = _rows(report)
    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            table = Table(title=f"balloon ({args.qmp})", show_header=False)
            table.add_column("what", style="bold")
            table.add_column("value", justify="right")
            for k, v in rows:
                table.add_row(k, v)
            Console().print(table)
            return 0
    width = max(len(k) for k, _ in rows)
    sys.stdout.write("".join(f"{k:<{width}}  {v}\n" for k, v in rows))
    return 0


def virtqueue_main(args: argparse.Namespace) -> int:
    """`pyvmm info virtqueue`: the monitor's `info virtqueue` over QMP; a picture file is written by the
    VMM, so its path is made absolute here."""
    import os
    import shlex

    words = ["info", "virtqueue", *args.queue]
    for opt in ("svg", "png"):
        path = getattr(args, opt)
        if path is not None:
            words += [f"--{opt}", os.path.abspath(path)]
    if any(not w or any(c.isspace() for c in w) for w in words):
        raise ConfigError(f"info virtqueue: {shlex.join(words[2:])}: names and paths must not contain spaces")
    with QmpConnection(args.qmp, timeout=args.timeout) as q:
        out = q.execute("human-monitor-command", {"command-line": " ".join(words)})
    text = str(out).replace("\r\n", "\n")
    sys.stdout.write(text)
    return 1 if text.startswith("Error:") else 0


def add_control_parsers(subparsers: Any) -> None:
    """Add the `balloon` and `info` verbs to the main CLI's subparsers (each sets args.func)."""
    qmp_help = "the VM's QMP socket: a path, unix:PATH or tcp:HOST:PORT (as given to pyvmm run --qmp)"
    p = subparsers.add_parser("balloon", help="set a running VM's balloon target (its logical RAM size)",
                              description="Ask the guest to shrink or grow to SIZE, as QEMU's balloon command.")
    p.add_argument("--qmp", required=True, metavar="ADDR", help=qmp_help)
    p.add_argument("size", metavar="SIZE", help="target guest size: 64M, 1G, 512K, or a number of MiB")
    p.add_argument("--wait", action="store_true", help="wait until the guest has reached SIZE")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds to wait (default 30)")
    p.set_defaults(func=balloon_main)

    from .top import add_top_parser

    add_top_parser(subparsers)

    i = subparsers.add_parser("info", help="show a running VM's state through its QMP socket")
    what = i.add_subparsers(dest="what", metavar="WHAT", required=True)
    b = what.add_parser("balloon", help="balloon size and guest memory statistics")
    b.add_argument("--qmp", required=True, metavar="ADDR", help=qmp_help)
    b.add_argument("--json", action="store_true", help="print JSON for programs instead of a table")
    b.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for answers")
    b.set_defaults(func=info_main)
    v = what.add_parser("virtqueue", help="one virtqueue's rings and indices, or its picture (--svg/--png)")
    v.add_argument("--qmp", required=True, metavar="ADDR", help=qmp_help)
    v.add_argument("queue", nargs="+", metavar="[DEV] QUEUE",
                   help="the queue by name or index (inflateq, 0), with the device first when several have it")
    v.add_argument("--svg", metavar="FILE", help="draw the queue into FILE as SVG (needs pyvmm[plot])")
    v.add_argument("--png", metavar="FILE", help="draw the queue into FILE as PNG")
    v.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds to wait for the answer (drawing a picture takes a few; default 30)")
    v.set_defaults(func=virtqueue_main)
