"""The `make run` demo's driver on a fake machine: the status line is always cleared, the summary says the
low point it used, and host RSS comes from pyvmm.hoststat."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import pytest

from pyvmm import demo, hoststat, termout
from pyvmm.memory import GuestMemory

MiB = 1 << 20


class _Balloon:
    """Reaches every target at once; info() can be made to raise as Ctrl-C would."""

    def __init__(self, ram: int, interrupt_after: int | None = None) -> None:
        self.ram = ram
        self.pages = 0
        self.stats = {"memfree": 100 * MiB, "minflt": 7}
        self.stats_interval = 0
        self.calls = 0
        self.interrupt_after = interrupt_after

    def set_target(self, target: int) -> None:
        self.pages = (self.ram - target) >> 12

    def info(self, rss: bool = True):
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise KeyboardInterrupt
        return SimpleNamespace(actual=self.ram - (self.pages << 12), actual_pages=self.pages,
                               ballooned_pages=self.pages, guest_ram_rss=None, discarded_bytes=0,
                               bad_pfns=0, agree=True)


class _Machine:
    def __init__(self, balloon: _Balloon) -> None:
        self.ram_size = balloon.ram
        self.balloon = balloon
        self.memory = GuestMemory.from_bytearray(1 * MiB)
        self.stopped = threading.Event()
        self.stopped_with: tuple[int, str] | None = None
        self.console = SimpleNamespace(written=0)
        self.waits: list[tuple[str, int]] = []

    def wait_for_console(self, pattern: str, timeout: float, since: int = 0) -> None:
        self.waits.append((pattern, since))
        self.console.written += 100           # the guest goes on writing

    def stop(self, code: int, why: str) -> None:
        self.stopped_with = (code, why)


def test_status_line_is_cleared_when_the_loop_raises(monkeypatch):
    r, w = os.pipe()
    made = []

    class OnTerminal(termout.StatusLine):
        def __init__(self, *a, **kw):
            super().__init__(w, *a[1:], **kw)
            self.tty = True            # a terminal, as far as the status line goes
            made.append(self)

    monkeypatch.setattr(demo, "StatusLine", OnTerminal)
    machine = _Machine(_Balloon(256 * MiB, interrupt_after=1))
    try:
        with pytest.raises(KeyboardInterrupt):
            demo.move_balloon(machine, 128 * MiB, label="inflate")
        assert len(made) == 1 and termout._status is None      # output flows again
        os.close(w)
        drawn = os.read(r, 65536)
        assert b"balloon inflate: target 128.0 MiB" in drawn and drawn.endswith(b"\r\x1b[K")
    finally:
        os.close(r)


def test_summary_names_the_low_point_and_rss_comes_from_hoststat(monkeypatch, capfd):
    machine = _Machine(_Balloon(256 * MiB))
    seen = []

    def rss(mem):
        assert mem is machine.memory, "the demo measures all of guest RAM through hoststat"
        seen.append(mem)
        return 42 * MiB

    monkeypatch.setattr(hoststat, "mapping_rss", rss)
    monkeypatch.setattr(demo.time, "sleep", lambda s: None)
    demo.drive_demo(machine, low=128 * MiB)
    err = capfd.readouterr().err
    assert "guest stats at 128.0 MiB: memfree=100.0 MiB, minflt=7" in err
    assert "64.0 MiB" not in err
    assert "42.0 MiB" in err and seen
    assert machine.stopped_with == (0, "demo finished")


def test_the_table_waits_for_the_guests_own_line_after_the_deflate(monkeypatch):
    """The guest prints its deflated state a moment after the device sees it: the demo waits for that
    line, written after the mark it took before the deflate (the same line was printed at boot too)."""
    machine = _Machine(_Balloon(256 * MiB))
    monkeypatch.setattr(hoststat, "mapping_rss", lambda mem: 0)
    monkeypatch.setattr(demo.time, "sleep", lambda s: None)
    demo.drive_demo(machine, low=128 * MiB)
    (first, since0), (last, since) = machine.waits
    assert first.startswith("dirty") and since0 == 0
    assert last.startswith("balloon: target=0 actual=0") and since == 100
