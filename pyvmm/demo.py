"""The `make run` demo: the guest dirties its memory, the host balloons it down and back, and shows it."""

from __future__ import annotations

import sys
import time

from . import hoststat
from .errors import PyvmmError
from .termout import StatusLine, emit_line
from .units import format_size

MiB = 1 << 20


def _rss(machine) -> int:
    return hoststat.mapping_rss(machine.memory)


def move_balloon(machine, target: int, *, timeout: float = 300.0, label: str = "") -> tuple[float, bool]:
    """Set the target and follow `actual` until it gets there, on a status line; returns (seconds,
    reached)."""
    balloon = machine.balloon
    balloon.set_target(target)
    want_pages = (machine.ram_size - target) >> 12
    with StatusLine(every=1.0) as status:
        t0 = time.monotonic()
        reached = False
        while time.monotonic() - t0 < timeout and not machine.stopped.is_set():
            info = balloon.info()
            rss = info.guest_ram_rss if info.guest_ram_rss is not None else _rss(machine)
            status.update(f"balloon {label}: target {format_size(target)}, guest at {format_size(info.actual)} "
                          f"({info.actual_pages} pages ballooned), host RSS of guest RAM {format_size(rss)}")
            if info.actual_pages == want_pages and info.ballooned_pages == want_pages:
                reached = True
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - t0
        info = balloon.info(rss=False)
        status.done(f"balloon {label}: {'reached' if reached else 'did not reach'} {format_size(target)} in "
                    f"{elapsed:.2f} s (actual {format_size(info.actual)}, host RSS {format_size(_rss(machine))})")
    return elapsed, reached


def drive_demo(machine, *, low: int = 64 * MiB, plot=None) -> None:
    """The scripted scenario of `make run`; stops the machine when done.  With ``plot`` (a .png or
    .svg path) the balloon's timeline over the whole scenario is drawn there."""
    rows = []
    timeline = None
    try:
        if machine.balloon is None:
            emit_line("pyvmm: the demo needs the balloon (drop --balloon off)\n")
            machine.stop(2, "demo needs a balloon")
            return
        machine.balloon.stats_interval = 1
        machine.wait_for_console(r"dirty: \d+ pages", timeout=300)
        if plot is not None:
            timeline = machine.balloon.timeline(interval=0.2)
            time.sleep(0.5)      # a little of the steady state before the inflate
        ram = machine.ram_size
        rss0 = _rss(machine)
        t_in, ok_in = move_balloon(machine, low, label="inflate")
        rss_low = _rss(machine)
        rows.append(("inflate", ram, low, t_in, ok_in, rss0, rss_low))
        time.sleep(1.2)   # one stats round at the low point
        stats_low = dict(machine.balloon.stats)
        before_deflate = machine.console.written
        t_out, ok_out = move_balloon(machine, ram, label="deflate")
        rss_high = _rss(machine)
        rows.append(("deflate", low, ram, t_out, ok_out, rss_low, rss_high))
        _guest_line_after_deflate(machine, before_deflate)
        if timeline is not None:
            time.sleep(0.6)
            timeline.stop()
            from .plot import plot_timeline

            plot_timeline(timeline, plot, title=f"pyvmm demo: balloon {format_size(ram)} -> "
                          f"{format_size(low)} -> {format_size(ram)}")
            emit_line(f"pyvmm: balloon timeline ({len(timeline.samples)} samples) written to {plot}\n")
        _table(machine, rows, stats_low, low)
        machine.stop(0 if ok_in and ok_out else 1, "demo finished")
    except TimeoutError as e:
        emit_line(f"pyvmm: demo: {e}\n")
        machine.stop(1, "demo failed")
    except PyvmmError as e:         # the picture could not be written
        emit_line(f"pyvmm: demo: {e}\n")
        machine.stop(1, "demo failed")
    finally:
        if timeline is not None:
            timeline.stop()


def _guest_line_after_deflate(machine, since: int) -> None:
    """The guest prints its own line once it has deflated, a moment after the device saw `actual`
    reach 0: wait a little for it, so the table comes after it and the VM is not stopped mid-line."""
    try:
        machine.wait_for_console(r"balloon: target=0 actual=0 free=\d+\r?\n", timeout=2.0, since=since)
    except TimeoutError:
        pass                 # a guest that does not say so: the table goes on without it


def _table(machine, rows, stats_low, low: int) -> None:
    info = machine.balloon.info(rss=False)
    lines = [("step", "from", "to", "time", "reached", "host RSS before", "host RSS after")]
    for step, a, b, t, ok, r0, r1 in rows:
        lines.append((step, format_size(a), format_size(b), f"{t:.2f} s", "yes" if ok else "NO",
                      format_size(r0), format_size(r1)))
    stats = ", ".join(f"{k}={format_size(v)}" if "mem" in k or "avail" in k or "caches" in k else f"{k}={v}"
                      for k, v in stats_low.items()) or "none received"
    summary = (f"guest stats at {format_size(low)}: {stats}\n"
               f"discarded in all: {format_size(info.discarded_bytes)}; bad PFNs {info.bad_pfns}; "
               f"host and guest agree: {info.agree}\n")
    if sys.stderr.isatty():
        import io
        import os

        from rich.console import Console
        from rich.table import Table

        table = Table(title="pyvmm balloon demo")
        for h in lines[0]:
            table.add_column(h)
        for row in lines[1:]:
            table.add_row(*row)
        buf = io.StringIO()
        Console(file=buf, force_terminal=True, width=os.get_terminal_size(2).columns).print(table)
        text = buf.getvalue()
    else:
        widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
        text = "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() + "\n" for r in lines)
    emit_line(text + summary)     # one write: no guest line lands inside the table
