"""The guest's console output: kept in memory for the API and the monitor, and passed on to a sink."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

CONSOLE_KEEP = 8 << 20   # bytes of console output kept in memory for the API and the monitor


class ConsoleLog:
    """Bytes the guest wrote to its serial port: the latest CONSOLE_KEEP of them, and waiters on them.

    ``sink`` (stdout, a console multiplexer, a notebook cell) gets every byte as it comes; it may be
    replaced while the VM runs.
    """

    def __init__(self, sink: Callable[[bytes], None] | None = None, keep: int = CONSOLE_KEEP) -> None:
        self.sink = sink
        self.keep = keep
        self._buf = bytearray()
        self._cond = threading.Condition()
        self.closed = False        # set when the VM stops: waiters give up
        self.written = 0           # bytes the guest wrote in all (a mark for wait_for's since)

    def write(self, data: bytes) -> None:
        with self._cond:
            self.written += len(data)
            self._buf += data
            if len(self._buf) > self.keep:
                del self._buf[: len(self._buf) - self.keep]
            self._cond.notify_all()
        sink = self.sink
        if sink is not None:
            sink(data)

    def text(self) -> str:
        with self._cond:
            return self._buf.decode("utf-8", "replace")

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30.0, since: int = 0) -> re.Match:
        """Wait until the output matches the regex; TimeoutError otherwise (or once the VM stopped).
        With ``since`` (an earlier ``written``) only what the guest wrote after that mark counts;
        the match's offsets are then from the mark.

        Each wake-up searches only what arrived since the last look (plus an overlap of 4 KiB for a
        match that straddles it), and waits at least 20 ms between looks, so a chatty guest does not
        turn the waiting thread into a busy loop that competes with the vCPU for the GIL.
        """
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        start = 0
        while True:
            with self._cond:
                seen = len(self._buf)
                begin = max(0, since - (self.written - seen))    # the mark's place in what is kept
                text = self._buf[begin:].decode("utf-8", "replace")
            m = rx.search(text, max(0, start - 4096))
            if m:
                first = rx.search(text) if start else m     # the first match, as re.search gives
                assert first is not None
                return first
            start = len(text)
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                raise TimeoutError(f"console never matched {pattern!r}" + (" (the VM stopped)" if self.closed else ""))
            time.sleep(min(left, 0.02))
            with self._cond:
                if len(self._buf) == seen and not self.closed:
                    self._cond.wait(min(max(0.0, deadline - time.monotonic()), 0.5))
