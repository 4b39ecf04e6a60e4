"""The balloon's statistics queue (spec "Memory Statistics"): the one buffer held, decoding, and polling.

The driver keeps one buffer in the stats queue.  The device holds it, and when it wants fresh values
it returns the buffer (a used buffer); the driver refills it and makes it available again, and its
contents are the new statistics.  With a polling interval the device asks on a timer, as QEMU's
``guest-stats-polling-interval`` does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..memory import GuestMemory
from .abi import VIRTIO_BALLOON_STAT, BalloonStat
from .device import Transport
from .queue import DescChain, SplitQueue, VirtqueueError

# Linux fills 10 or 16 stats entries; more than this many are not read.
MAX_STATS_ENTRIES = 64
MAX_STATS_BYTES = MAX_STATS_ENTRIES * VIRTIO_BALLOON_STAT.size
_STAT_NAMES = {int(s): s.short_name for s in BalloonStat}


class BalloonStats:
    """The last statistics by short name (``memfree``), when they came, and the buffer the device holds."""

    def __init__(self, interval: float, *, on_stats: Callable[[dict[str, int]], None],
                 guest_error: Callable[[str], None], trace: Callable[[str, int, Callable[[], str]], None]) -> None:
        self.interval = float(interval)
        self.values: dict[str, int] = {}
        self.updated: float | None = None     # time.time() of the last stats, None if never
        self.unknown = 0                      # entries with tags pyvmm does not know ("MUST ignore")
        self.head: int | None = None          # the driver's buffer, held until the device asks again
        self.seen = 0                         # buffers taken since the driver set the queue up
        self._on_stats = on_stats
        self._guest_error = guest_error
        self._trace = trace
        self._timer: threading.Timer | None = None

    def restart(self) -> None:
        """A new driver (activation or reset): no buffer held, none seen."""
        self.head = None
        self.seen = 0

    def take(self, q: SplitQueue, chain: DescChain, mem: GuestMemory, *, legacy: bool) -> None:
        """A buffer from the stats queue: hold it, and decode what it carries."""
        if self.head is not None:
            # "at most one buffer outstanding": hand the older one back rather than leak it.
            self._guest_error("a second stats buffer while one is held")
            q.add_used(self.head, 0)
        self.head = chain.head
        self.seen += 1
        if chain.readable_len > MAX_STATS_BYTES:
            self._guest_error(f"stats buffer of {chain.readable_len} bytes; only the first "
                              f"{MAX_STATS_ENTRIES} entries are read")
        data = chain.read_prefix(mem, MAX_STATS_BYTES) if chain.readable else b""
        if legacy and self.seen == 1:
            # Spec legacy: "the device SHOULD ignore the values in the first buffer".
            self._trace("stats", 0, lambda: "first legacy buffer: values ignored")
        else:
            self.decode(data)

    def decode(self, data: bytes) -> None:
        entry = VIRTIO_BALLOON_STAT
        if len(data) % entry.size:
            self._guest_error(f"stats buffer of {len(data)} bytes is not a whole number of 10-byte entries")
        values: dict[str, int] = {}
        for tag, val in entry.iter_unpack(data[: len(data) - len(data) % entry.size]):
            name = _STAT_NAMES.get(tag)
            if name is None:
                self.unknown += 1
                continue
            values[name] = val
        self.values = values
        self.updated = time.time()
        self._trace("stats", len(values), lambda: " ".join(f"{k}={v}" for k, v in values.items()))
        self._on_stats(dict(values))

    def give_back(self, q: SplitQueue, transport: Transport) -> bool:
        """Return the held buffer (the driver then sends fresh stats); False if there is none to return."""
        if self.head is None or not q.ready:
            # Spec "MMIO Device Register Layout", QueueReady: the driver stopped the queue (QueueReady
            # or legacy QueuePFN 0), and a device must not touch a queue that is not ready.  The held
            # buffer is the driver's again; nothing is written into its rings.
            return False
        head, self.head = self.head, None
        try:
            q.add_used(head, 0)
        except VirtqueueError as e:
            transport.guest_error(f"statsq: {e}", fatal=True)
            return False
        transport.signal_used_queue(q.index)
        return True

    # --- polling ------------------------------------------------------------------------------------

    def schedule(self, tick: Callable[[threading.Timer], None]) -> None:
        """(Re)arm the polling timer; tick(timer) runs on the timer's thread after ``interval`` seconds."""
        self.cancel()
        if self.interval <= 0:
            return
        timer = threading.Timer(self.interval, lambda: tick(timer))
        timer.daemon = True
        timer.name = "balloon-stats"
        self._timer = timer
        timer.start()

    def is_current(self, timer: threading.Timer) -> bool:
        """Whether timer is still the armed one (not cancelled or superseded while it waited)."""
        return self._timer is timer

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def polling(self) -> bool:
        return self._timer is not None


def describe_stats(data: bytes) -> str:
    """A stats buffer as tag=value (spec "Memory Statistics"), tags by their short names."""
    size = VIRTIO_BALLOON_STAT.size
    stats = [VIRTIO_BALLOON_STAT.unpack_from(data, i) for i in range(0, len(data) - size + 1, size)]
    names = {int(s): s.short_name for s in BalloonStat}
    return "stats: " + " ".join(f"{names.get(tag, tag)}={val}" for tag, val in stats)
