"""The developer trace: one line per register access or boot step, to a stream and as JSON lines.

Tracing off must cost one attribute check on the exit path, so each known category is a plain bool
attribute (``tracer.virtio``) that callers test before formatting anything.  The JSON-lines schema is
documented in docs/trace.md.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

# Categories that get a bool attribute of their own; emit() takes any other name as well.
TRACE_KEEP = 100_000     # trace records kept in memory for Machine.trace()
KNOWN_CATEGORIES = ("virtio", "boot")    # virtio: every virtio-mmio access, interrupt and balloon event

_local = threading.local()


def set_current_vcpu(index: int | None) -> None:
    """Called by a vCPU thread once at start: trace lines from this thread carry its index."""
    _local.vcpu = index


def current_vcpu() -> int | None:
    return getattr(_local, "vcpu", None)


class Tracer:
    """Writes trace events of the enabled categories as text lines and, optionally, JSON lines."""

    # Attributes of the known categories; set in __init__ (declared for type checkers).
    virtio: bool
    boot: bool

    def __init__(
        self,
        categories: set[str] | frozenset[str] | tuple[str, ...] = frozenset(),
        stream: TextIO | None = sys.stderr,
        json_path: str | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        cats = set(categories)
        if "all" in cats:
            cats = (cats - {"all"}) | set(KNOWN_CATEGORIES)
        self.categories = frozenset(cats)
        for name in KNOWN_CATEGORIES:
            setattr(self, name, name in self.categories)
        self.enabled = bool(self.categories)
        self._stream = stream
        try:   # a terminal may be in raw mode while the guest runs: end lines with CR LF there
            self._newline = "\r\n" if stream is not None and stream.isatty() else "\n"
        except (AttributeError, ValueError):
            self._newline = "\n"
        self.json_path = json_path
        self._json = open(json_path, "w", encoding="utf-8") if json_path else None  # noqa: SIM115
        self._clock = clock or time.monotonic
        self._t0 = self._clock()
        self._lock = threading.Lock()
        # The latest records, for the Python API (Machine.trace(), a notebook's table): kept only
        # while tracing is on, as the text and JSON sinks are.
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=TRACE_KEEP)

    @classmethod
    def off(cls) -> Tracer:
        """A tracer with every category off: the default of every device."""
        return cls(frozenset(), stream=None)

    def set(self, category: str, on: bool) -> None:
        """Turn a category ("all" for every one) on or off while the VM runs (the monitor's `trace`)."""
        names = KNOWN_CATEGORIES if category == "all" else (category,)
        if any(n not in KNOWN_CATEGORIES for n in names):
            raise ValueError(f"unknown trace category {category!r} (choose from all, {', '.join(KNOWN_CATEGORIES)})")
        cats = set(self.categories)
        cats = cats | set(names) if on else cats - set(names)
        self.categories = frozenset(cats)
        for name in names:
            setattr(self, name, on)
        self.enabled = bool(cats)

    def wants(self, category: str) -> bool:
        return category in self.categories

    # --- sinks ----------------------------------------------------------------------------------------

    def _write(self, line: str, record: dict[str, Any]) -> None:
        with self._lock:
            self.records.append(record)
            if self._stream is not None:
                try:
                    self._stream.write(line + self._newline)
                    self._stream.flush()
                except (OSError, ValueError) as e:     # a closed or broken pipe: the VM goes on
                    self._stream = None
                    _sink_failed("the trace's terminal stream", e)
            if self._json is not None:
                import json  # only a --trace-file run pays for it

                try:
                    self._json.write(json.dumps(record, separators=(",", ":")) + "\n")
                    self._json.flush()
                except OSError as e:                   # a full disk (/dev/full), a yanked device
                    self._json = None
                    _sink_failed(f"the trace file {self.json_path}", e)

    def _head(self) -> tuple[float, int | None, str]:
        t = round(self._clock() - self._t0, 6)
        vcpu = current_vcpu()
        return t, vcpu, f"{t:11.6f} {'cpu' + str(vcpu) if vcpu is not None else '-':>5}"

    def emit(self, category: str, text: str, **fields: Any) -> None:
        """A free-form event of category (a boot step, an exit); fields go to the JSON record."""
        if category not in self.categories:
            return
        t, vcpu, head = self._head()
        record: dict[str, Any] = {"t": t, "vcpu": vcpu, "cat": category, "text": text}
        record.update(fields)
        self._write(f"{head} {category}: {text}", record)

    def access(
        self,
        device: str,
        direction: str,
        register: str,
        value: int,
        meaning: str = "",
        *,
        shown: str | None = None,
        offset: int | None = None,
        size: int | None = None,
        category: str = "virtio",
    ) -> None:
        """One register access or device event of a virtio-mmio device.

        direction is "read" (printed ``->``), "write" (``<-``) or "event" (``!!``: an interrupt, a
        guest error, or what the device did with a buffer).  shown overrides how value is printed
        (``0x0b``); the JSON record always carries the integer.
        """
        t, vcpu, head = self._head()
        line = format_access(device, direction, register, value, meaning, shown=shown)
        record: dict[str, Any] = {
            "t": t, "vcpu": vcpu, "cat": category, "dev": device, "dir": direction,
            "reg": register, "value": value, "text": meaning,
        }
        if offset is not None:
            record["offset"] = offset
        if size is not None:
            record["size"] = size
        self._write(f"{head} {line}", record)

    def close(self) -> None:
        with self._lock:
            if self._json is not None:
                try:
                    self._json.close()
                except OSError as e:            # the last flush on a full disk
                    _sink_failed(f"the trace file {self.json_path}", e)
                self._json = None


def _sink_failed(what: str, err: BaseException) -> None:
    import logging

    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    logging.getLogger("pyvmm").warning("%s failed (%s); tracing to it stops, the VM goes on", what, reason)


_ARROWS = {"read": "->", "write": "<-", "event": "!!"}


def format_access(device: str, direction: str, register: str, value: int, meaning: str = "", *,
                  shown: str | None = None) -> str:
    """One access as the trace prints it after the time and vCPU: ``balloon0 Status <- 0x0f DRIVER_OK``
    (the virtio breakpoints print their hits the same way)."""
    arrow = _ARROWS.get(direction, "!!")
    if shown is None:
        shown = _format_value(value)
    return f"{device} {register} {arrow} {shown}" + (f" {meaning}" if meaning else "")


def _format_value(value: int) -> str:
    return str(value) if 0 <= value < 10 else f"{value:#x}"
