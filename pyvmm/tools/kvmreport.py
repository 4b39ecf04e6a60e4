"""What kvmtrace writes: a line per traced ioctl (rate-limited for exits), JSON lines for tools, and the
summary of ioctls by name and exits by reason, port and MMIO window (a rich table).

The tracer hands over finished records; nothing here knows about ptrace, so the tests drive it directly.
"""

from __future__ import annotations

import errno as errno_mod
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

from .kvmdecode import Decoded, ExitRecord, Role, mmio_name, port_name

SCHEMA_VERSION = 1


@dataclass(slots=True)
class IoctlRecord:
    """One traced ioctl, from its entry to its return (or to the tracee's end: ``unfinished``)."""

    time: float                # seconds since the trace started, at entry
    pid: int                   # thread group (process)
    tid: int
    fd: int
    role: Role
    request: int
    name: str
    arg: Decoded | None = None
    ret: int | None = None
    errno: int | None = None
    duration_ns: int = 0
    exit: ExitRecord | None = None
    unfinished: bool = False

    def result_text(self) -> str:
        if self.unfinished:
            return "<unfinished>"
        if self.errno is not None:
            return f"-1 {errno_mod.errorcode.get(self.errno, str(self.errno))}"
        return str(self.ret)

    def as_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "ioctl", "time": round(self.time, 6), "pid": self.pid, "tid": self.tid,
                             "fd": self.fd, "role": self.role.kind, "request": self.name,
                             "request_number": self.request}
        if self.role.kind == "vcpu":
            d["vcpu"] = self.role.index
        if self.role.kind == "device":
            d["device"] = self.role.name
        if self.arg is not None:
            d["arg"] = self.arg.fields
        d["ret"] = self.ret
        d["errno"] = errno_mod.errorcode.get(self.errno, str(self.errno)) if self.errno is not None else None
        d["duration_us"] = round(self.duration_ns / 1000, 3)
        if self.exit is not None:
            d["exit"] = {"reason": self.exit.reason, **self.exit.fields}
        if self.unfinished:
            d["unfinished"] = True
        return d


def duration_text(ns: int) -> str:
    if ns >= 1_000_000:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1000:.1f} us"


def format_line(rec: IoctlRecord, verbose: bool = False) -> str:
    """``  0.004211 4711 vcpu0  KVM_RUN = 0 <8.1 us> IO out 0x3f8 (COM1 RBR/THR) size 1: 70 'p'``"""
    head = f"{rec.time:10.6f} {rec.tid:<7} {str(rec.role):<7} {rec.name}"
    if rec.arg is not None:
        head += " " + rec.arg.text
    line = f"{head} = {rec.result_text()} <{duration_text(rec.duration_ns)}>"
    if rec.exit is not None:
        line += " " + rec.exit.text()
    if verbose and rec.arg is not None and rec.arg.verbose:
        line += "\n" + "\n".join(rec.arg.verbose)
    return line


# ---- the summary ---------------------------------------------------------------------------------


@dataclass(slots=True)
class IoctlStat:
    count: int = 0
    total_ns: int = 0
    errors: Counter = field(default_factory=Counter)


class Summary:
    """Counts that every record updates: ioctls by name, exits by reason and by where they went."""

    def __init__(self) -> None:
        self.ioctls: dict[str, IoctlStat] = {}
        self.exits: Counter[str] = Counter()
        self.exit_where: Counter[tuple[str, str]] = Counter()
        self.vcpu_exits: Counter[str] = Counter()
        self.first_run: float | None = None
        self.last_run: float | None = None
        self.windows: dict[str, str] = {}          # exit key -> name learnt for it (virtio-mmio@...)

    def add(self, rec: IoctlRecord) -> None:
        st = self.ioctls.get(rec.name)
        if st is None:
            st = self.ioctls[rec.name] = IoctlStat()
        st.count += 1
        st.total_ns += rec.duration_ns
        if rec.errno is not None:
            st.errors[errno_mod.errorcode.get(rec.errno, str(rec.errno))] += 1
        ex = rec.exit
        if ex is not None:
            self.exits[ex.reason] += 1
            self.exit_where[(ex.reason, ex.key)] += 1
            self.vcpu_exits[str(rec.role)] += 1
            if self.first_run is None:
                self.first_run = rec.time
            self.last_run = rec.time
            if ex.reason == "MMIO" and "window" in ex.fields:
                self.windows[ex.key] = ex.fields["window"]

    @property
    def total_exits(self) -> int:
        return sum(self.exits.values())

    def where_name(self, reason: str, key: str) -> str:
        if key in self.windows:
            return self.windows[key]
        try:
            number = int(key.split()[0], 16)
        except (ValueError, IndexError):
            return ""
        if reason == "IO":
            return port_name(number)
        if reason == "MMIO":
            return mmio_name(number)
        return ""

    def as_json(self, duration: float) -> dict[str, Any]:
        span = (self.last_run or 0) - (self.first_run or 0)
        return {
            "type": "summary", "duration_s": round(duration, 6),
            "ioctls": {name: {"count": s.count, "total_us": round(s.total_ns / 1000, 3),
                              "mean_us": round(s.total_ns / 1000 / s.count, 3) if s.count else 0,
                              "errors": dict(s.errors)} for name, s in sorted(self.ioctls.items())},
            "exits": {"total": self.total_exits, "per_second": round(self.total_exits / span, 1) if span > 0 else None,
                      "by_reason": dict(self.exits.most_common()),
                      "by_vcpu": dict(self.vcpu_exits),
                      "by_where": [{"reason": r, "where": k, "name": self.where_name(r, k), "count": n}
                                   for (r, k), n in self.exit_where.most_common()]},
        }

    def render(self, out: IO[str], duration: float, title: str) -> None:
        """The two tables (rich; plain columns where rich cannot be imported)."""
        ioctl_rows = [(name, f"{s.count:,}", duration_text(s.total_ns),
                       duration_text(s.total_ns // s.count if s.count else 0),
                       ", ".join(f"{k} x{v}" for k, v in s.errors.most_common()))
                      for name, s in sorted(self.ioctls.items(), key=lambda kv: (-kv[1].count, kv[0]))]
        total = self.total_exits
        exit_rows = [(reason, key, self.where_name(reason, key), f"{n:,}", f"{100 * n / total:.1f}%")
                     for (reason, key), n in self.exit_where.most_common(30)]
        span = (self.last_run or 0) - (self.first_run or 0)
        rate = f", {total / span:,.0f} exits/s" if span > 0 and total > 1 else ""
        caption = f"{total:,} KVM_RUN exits{rate} over {duration:.2f} s"
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            out.write(f"{title}\n" + ("" if ioctl_rows else "no KVM ioctl was traced\n"))
            for row in ioctl_rows:
                out.write("  ".join(row) + "\n")
            out.write(caption + "\n")
            for erow in exit_rows:
                out.write("  ".join(erow) + "\n")
            return
        console = Console(file=out, highlight=False, width=max(100, Console(file=out).width))
        console.print(title, markup=False)
        if not ioctl_rows:
            console.print("no KVM ioctl was traced", markup=False)
            return
        t = Table()
        for col, justify in (("ioctl", "left"), ("calls", "right"), ("total", "right"), ("mean", "right"),
                             ("errors", "left")):
            t.add_column(col, justify=justify)  # type: ignore[arg-type]
        for row in ioctl_rows:
            t.add_row(*row)
        console.print(t)
        if exit_rows:
            e = Table(title=f"exits: {caption}", title_justify="left")
            for col, justify in (("reason", "left"), ("where", "left"), ("what", "left"), ("count", "right"),
                                 ("share", "right")):
                e.add_column(col, justify=justify)  # type: ignore[arg-type]
            for erow in exit_rows:
                e.add_row(*erow)
            if len(self.exit_where) > 30:
                e.caption = f"{len(self.exit_where) - 30} more places (see --json)"
            console.print(e)


# ---- the sinks ---------------------------------------------------------------------------------------


class Report:
    """Routes each finished record to the summary and to the output: every record as JSON, or a text line
    subject to the exit policy ("auto": lines until a budget runs out, then a summary line a second;
    "all"; "none"), or nothing but the summary (``summary_only``)."""

    BURST = 2000             # lines shown before the budget starts to bite: a short run is shown whole
    RATE = 100.0             # lines a second after that

    def __init__(self, out: IO[str], *, json_lines: bool = False, exits: str = "auto", summary_only: bool = False,
                 verbose: bool = False, clock=time.monotonic) -> None:
        self.out = out
        self.json = json_lines
        self.exits = exits
        self.summary_only = summary_only
        self.verbose = verbose
        self.summary = Summary()
        self.clock = clock
        self.tokens = float(self.BURST)
        self.last_refill = clock()
        self.hidden: Counter[str] = Counter()
        self.hidden_since = clock()
        self.last_flush = clock()

    # records and events

    def record(self, rec: IoctlRecord) -> None:
        self.summary.add(rec)
        now = self.clock()
        if now - self.last_flush > 0.5:          # a file fills in as it goes (tail -f), not only at the end
            self.out.flush()
            self.last_flush = now
        if self.summary_only:
            return
        if self.json:
            self._write_json(rec.as_json())
            return
        if rec.exit is not None or rec.name == "KVM_RUN":
            if self.exits == "none":
                return
            if self.exits == "auto" and not self._take_token():
                self.hidden[f"{rec.role} {rec.exit.reason + ' ' + rec.exit.key if rec.exit else rec.name}"] += 1
                self._maybe_report_hidden()
                return
        self.out.write(format_line(rec, self.verbose) + "\n")

    def event(self, kind: str, text: str, **fields: Any) -> None:
        """A process event (start, new process, exit, detach): JSON, or a strace-style ``+++`` line."""
        if self.json and not self.summary_only:
            self._write_json({"type": kind, **fields})
        elif not self.json and not self.summary_only:
            self.out.write(f"+++ {text} +++\n")
        self.out.flush()

    def finish(self, duration: float, title: str) -> None:
        self._report_hidden(final=True)
        if self.json:
            self._write_json(self.summary.as_json(duration))
        else:
            self.summary.render(self.out, duration, title)
        self.out.flush()

    # the budget

    def _take_token(self) -> bool:
        now = self.clock()
        self.tokens = min(float(self.BURST), self.tokens + (now - self.last_refill) * self.RATE)
        self.last_refill = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def _maybe_report_hidden(self) -> None:
        if self.clock() - self.hidden_since >= 1.0:
            self._report_hidden()

    def _report_hidden(self, final: bool = False) -> None:
        if not self.hidden:
            return
        now = self.clock()
        n = sum(self.hidden.values())
        top = ", ".join(f"{k} x{v:,}" for k, v in self.hidden.most_common(4))
        more = f", {len(self.hidden) - 4} more kinds" if len(self.hidden) > 4 else ""
        self.out.write(f"... {n:,} exits not shown in {now - self.hidden_since:.1f} s: {top}{more}"
                       f"{' (--exits shows every one)' if not final else ''}\n")
        self.hidden.clear()
        self.hidden_since = now

    def _write_json(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj, separators=(",", ":")) + "\n")
