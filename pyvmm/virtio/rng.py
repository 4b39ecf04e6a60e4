"""The entropy device (virtio-rng, device ID 4): fills every device-writable buffer with random bytes.

Spec "Entropy Device": one queue (requestq), no feature bits, no config space.  The bytes come from
os.urandom, or, with a seed, from splitmix64's stream (reproducible, for tests; not cryptographic).
A rate limit as QEMU's: at most ``max_bytes`` per ``period_ms`` milliseconds; a buffer that finds the
quota spent waits for the next period (a timer serves the queue then), one that finds it partly spent
gets what is left, as QEMU's virtio-rng does.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .abi import VirtioDeviceID
from .device import Chain, VirtioDeviceBase

QUEUE_SIZE = 64
MAX_BYTES_PER_BUFFER = 1 << 16      # a larger buffer gets its first 64 KiB (used length says so)
_MASK64 = (1 << 64) - 1


class SplitMix64:
    """splitmix64 as a byte stream: each 64-bit output little-endian, in order.  guest/rng.c has the
    same generator, so a seeded guest can check the bytes it reads."""

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK64
        self._left = b""

    def next64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def read(self, n: int) -> bytes:
        out = bytearray(self._left[:n])
        self._left = self._left[n:]
        while len(out) < n:
            word = self.next64().to_bytes(8, "little")
            take = n - len(out)
            out += word[:take]
            self._left = word[take:]
        return bytes(out)


@dataclass(frozen=True)
class RngOptions:
    """-device virtio-rng-device[,seed=N][,max-bytes=B,period=MS] (QEMU's names and defaults)."""

    seed: int | None = None
    max_bytes: int = (1 << 63) - 1       # QEMU: INT64_MAX
    period_ms: int = 1 << 16             # QEMU: 65536 ms

    name = "rng"                         # the transport's name stem: rng0

    def make(self) -> VirtioRng:
        return VirtioRng(self)


class VirtioRng(VirtioDeviceBase):
    """virtio-rng on the device API: the whole device is handle() and the rate limit."""

    device_id = int(VirtioDeviceID.RNG)
    queues = ("requestq",)
    queue_sizes = (QUEUE_SIZE,)

    def __init__(self, options: RngOptions | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.options = options or RngOptions()
        self.source: Callable[[int], bytes] = (os.urandom if self.options.seed is None
                                               else SplitMix64(self.options.seed).read)
        self._clock = clock
        self._period = self.options.period_ms / 1000.0
        self._window_start = clock()
        self._quota = self.options.max_bytes
        self._timer: threading.Timer | None = None
        self.bytes_served = 0
        self.buffers_served = 0

    def _refill(self) -> None:
        now = self._clock()
        if now - self._window_start >= self._period:
            self._window_start = now
            self._quota = self.options.max_bytes

    def want_buffer(self, queue: int) -> bool:
        self._refill()
        if self._quota > 0:
            return True
        self._wait_for_quota()
        return False

    def handle(self, queue: int, chain: Chain) -> bool | None:
        n = min(chain.writable_len, MAX_BYTES_PER_BUFFER, self._quota)
        if chain.readable_len:
            self.guest_error(f"requestq buffer with {chain.readable_len} device-readable bytes (ignored)")
        chain.write(self.source(n))
        self._quota -= n
        self.bytes_served += n
        self.buffers_served += 1
        self.trace("entropy", n, f"bytes into a {chain.writable_len}-byte buffer")
        return True

    def _wait_for_quota(self) -> None:
        if self._timer is not None:
            return
        delay = max(0.0, self._window_start + self._period - self._clock())

        def fire() -> None:
            with self.lock:
                self._timer = None
            self.serve(0)

        self._timer = threading.Timer(delay, fire)
        self._timer.daemon = True
        self._timer.start()
        self.trace("rate-limit", self.options.max_bytes, f"bytes per {self.options.period_ms} ms spent: "
                   f"waiting {delay:.3f} s")

    def qdev_properties(self) -> dict[str, object]:
        """What `info qtree` lists under the device (QEMU's property names)."""
        props: dict[str, object] = {"max-bytes": self.options.max_bytes, "period": self.options.period_ms}
        if self.options.seed is not None:
            props["seed"] = self.options.seed
        return props

    def on_reset(self) -> None:
        self._cancel()

    def close(self) -> None:
        with self.lock:
            self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
