"""The `make run` demo: the guest dirties its memory, the host balloons it down and back, and shows it."""

from __future__ import annotations

import sys
import time

from . import hoststat

MiB = 1 << 20


def _rss(machine) -> int:
    return hoststat.mapping_rss(machine.memory)


class _Progress:
    """A live line on a terminal (rich), a line a second otherwise; a context manager that always
    stops the live display, so an exception (Ctrl-C) does not leave the cursor hidden."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.live = None
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self.console = Console(file=sys.stderr)
            self.live = Live(console=self.console, transient=True, refresh_per_second=8)
            self.live.start()

    def update(self, text: str) -> None:
        if self.live is not None:
            self.live.update(text)
        elif time.monotonic() - self.last >= 1.0:
            self.last = time.monotonic()
            sys.stderr.write(text + "\n")

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def done(self, text: str) -> None:
        self.stop()
        sys.stderr.write(text + "\n")

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def move_balloon(machine, target: int, *, timeout: float = 300.0, label: str = "") -> tuple[float, bool]:
    """Set the target and follow `actual` until it gets there; returns (seconds, reached)."""
    balloon = machine.balloon
    balloon.set_target(target)
    want_pages = (machine.ram_size - target) >> 12
    with _Progress() as progress:
        t0 = time.monotonic()
        reached = False
        while time.monotonic() - t0 < timeout and not machine.stopped.is_set():
            info = balloon.info()
            progress.update(f"balloon {label}: target {target // MiB} MiB, guest at {info.actual // MiB} MiB "
                            f"({info.actual_pages} pages ballooned), host RSS of guest RAM "
                            f"{(info.guest_ram_rss or _rss(machine)) / MiB:.1f} MiB")
            if info.actual_pages == want_pages and info.ballooned_pages == want_pages:
                reached = True
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - t0
        info = balloon.info(rss=False)
        progress.done(f"balloon {label}: {'reached' if reached else 'did not reach'} {target // MiB} MiB in "
                      f"{elapsed:.2f} s (actual {info.actual // MiB} MiB, host RSS "
                      f"{_rss(machine) / MiB:.1f} MiB)")
    return elapsed, reached


def drive_demo(machine, *, low: int = 64 * MiB) -> None:
    """The scripted scenario of `make run`; stops the machine when done."""
    rows = []
    try:
        if machine.balloon is None:
            sys.stderr.write("pyvmm: the demo needs the balloon (drop --balloon off)\n")
            machine.stop(2, "demo needs a balloon")
            return
        machine.balloon.stats_interval = 1
        machine.wait_for_console(r"dirty: \d+ pages", timeout=300)
        ram = machine.ram_size
        rss0 = _rss(machine)
        t_in, ok_in = move_balloon(machine, low, label="inflate")
        rss_low = _rss(machine)
        rows.append(("inflate", ram, low, t_in, ok_in, rss0, rss_low))
        time.sleep(1.2)   # one stats round at the low point
        stats_low = dict(machine.balloon.stats)
        t_out, ok_out = move_balloon(machine, ram, label="deflate")
        rss_high = _rss(machine)
        rows.append(("deflate", low, ram, t_out, ok_out, rss_low, rss_high))
        _table(machine, rows, stats_low, low)
        machine.stop(0 if ok_in and ok_out else 1, "demo finished")
    except TimeoutError as e:
        sys.stderr.write(f"pyvmm: demo: {e}\n")
        machine.stop(1, "demo failed")


def _table(machine, rows, stats_low, low: int) -> None:
    info = machine.balloon.info(rss=False)
    lines = [("step", "from", "to", "time", "reached", "host RSS before", "host RSS after")]
    for step, a, b, t, ok, r0, r1 in rows:
        lines.append((step, f"{a // MiB} MiB", f"{b // MiB} MiB", f"{t:.2f} s", "yes" if ok else "NO",
                      f"{r0 / MiB:.1f} MiB", f"{r1 / MiB:.1f} MiB"))
    stats = ", ".join(f"{k}={v // MiB} MiB" if "mem" in k or "avail" in k else f"{k}={v}"
                      for k, v in stats_low.items()) or "none received"
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title="pyvmm balloon demo")
        for h in lines[0]:
            table.add_column(h)
        for row in lines[1:]:
            table.add_row(*row)
        console = Console(file=sys.stderr)
        console.print(table)
        console.print(f"guest stats at {low // MiB} MiB: {stats}")
        console.print(f"discarded in all: {info.discarded_bytes // MiB} MiB; bad PFNs {info.bad_pfns}; "
                      f"host and guest agree: {info.agree}")
    else:
        widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
        for r in lines:
            sys.stderr.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "\n")
        sys.stderr.write(f"guest stats at {low // MiB} MiB: {stats}\n")
        sys.stderr.write(f"discarded in all: {info.discarded_bytes // MiB} MiB; bad PFNs {info.bad_pfns}; "
                         f"host and guest agree: {info.agree}\n")
