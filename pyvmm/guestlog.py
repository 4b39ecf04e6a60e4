"""Guest errors: rate-limited lines on the "pyvmm.guest" logger, apart from the developer trace."""

from __future__ import annotations

import logging
import time

guest_log = logging.getLogger("pyvmm.guest")


class GuestErrorLog:
    """Rate-limited guest-error lines: a burst, then at most one per interval, with a count of the rest.

    A misbehaving guest can hit the same error millions of times a second; the log must tell the
    user it happens without becoming the bottleneck (QEMU's LOG_GUEST_ERROR, rate-limited)."""

    def __init__(self, name: str, burst: int = 10, interval: float = 1.0) -> None:
        self.name = name
        self.burst = burst
        self.interval = interval
        self._window = -1e9
        self._in_window = 0
        self.suppressed = 0
        self.count = 0

    def __call__(self, text: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._window >= self.interval:
            if self.suppressed:
                guest_log.warning("%s: %d more guest errors not shown", self.name, self.suppressed)
                self.suppressed = 0
            self._window = now
            self._in_window = 0
        if self._in_window < self.burst:
            self._in_window += 1
            guest_log.warning("%s: guest error: %s", self.name, text)
        else:
            self.suppressed += 1
