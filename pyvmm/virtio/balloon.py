"""The traditional virtio memory balloon (device ID 5): inflate, deflate, stats, page reporting.

Spec "Memory Balloon Device".  Inflated pages are given back to the host with one ``discard`` call
per run of contiguous pages; the set of ballooned 4 KiB pages is a bitmap (one bit per page of the
guest-physical address space), so it costs 32 KiB per GiB however full it is.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..memory import GuestMemory
from .abi import (
    VIRTIO_BALLOON_CONFIG,
    VIRTIO_BALLOON_PFN_SHIFT,
    BalloonFeature,
    TransportFeature,
    VirtioDeviceID,
)
from .balloon_info import BalloonInfo
from .device import VirtioDeviceBase
from .pages import BalloonedPages, describe_pfns
from .queue import DescChain, SplitQueue
from .stats import BalloonStats, describe_stats

log = logging.getLogger("pyvmm.balloon")

PAGE = 1 << VIRTIO_BALLOON_PFN_SHIFT
QUEUE_SIZE = 256
# Linux sends at most 256 PFNs per buffer; a guest that sends a huge buffer only slows itself down,
# but the lock would stall the monitor meanwhile, so the device reads at most this many per buffer
# (descriptor lengths are the guest's: only this prefix of a chain is ever copied out of guest RAM).
MAX_PFNS_PER_BUFFER = 1 << 16
MAX_PFN_BYTES = MAX_PFNS_PER_BUFFER * 4
# One process_queue call takes at most this many chains, and stops taking more once this many PFNs
# have been handled; the transport releases the lock and calls again while buffers remain.
MAX_CHAINS_PER_CALL = 64
MAX_PFNS_PER_CALL = MAX_PFNS_PER_BUFFER

_MTH = int(BalloonFeature.VIRTIO_BALLOON_F_MUST_TELL_HOST)
_STATS = int(BalloonFeature.VIRTIO_BALLOON_F_STATS_VQ)
_OOM = int(BalloonFeature.VIRTIO_BALLOON_F_DEFLATE_ON_OOM)
_POISON = int(BalloonFeature.VIRTIO_BALLOON_F_PAGE_POISON)
_REPORTING = int(BalloonFeature.VIRTIO_BALLOON_F_PAGE_REPORTING)
_VERSION_1 = int(TransportFeature.VIRTIO_F_VERSION_1)

Listener = Callable[[str, dict[str, Any]], None]


class BalloonQueue(enum.Enum):
    """The balloon's virtqueues by the spec's names.  Numbered densely, as Linux's vm_find_vqs does: a
    queue whose feature was not negotiated takes no index (docs/virtio.md, the queue-index note)."""

    INFLATE = "inflateq"
    DEFLATE = "deflateq"
    STATS = "statsq"
    REPORTING = "reporting_vq"

    @staticmethod
    def for_features(features: int) -> list[BalloonQueue]:
        queues = [BalloonQueue.INFLATE, BalloonQueue.DEFLATE]
        if features & _STATS:
            queues.append(BalloonQueue.STATS)
        if features & _REPORTING:
            queues.append(BalloonQueue.REPORTING)
        return queues


@dataclass(frozen=True)
class BalloonOptions:
    """What the balloon offers (``--balloon`` / ``-device virtio-balloon-device,...``, parsed by config)."""

    must_tell_host: bool = True
    stats: bool = True
    stats_interval: float = 0.0           # seconds between stats requests; 0 = no polling
    deflate_on_oom: bool = True
    free_page_reporting: bool = False
    page_poison: bool | None = None       # None: offered together with free page reporting

    def features(self) -> int:
        """The balloon feature bits these options offer."""
        poison = self.free_page_reporting if self.page_poison is None else self.page_poison
        return ((_MTH if self.must_tell_host else 0) | (_STATS if self.stats else 0)
                | (_OOM if self.deflate_on_oom else 0) | (_REPORTING if self.free_page_reporting else 0)
                | (_POISON if poison else 0))


class VirtioBalloon(VirtioDeviceBase):
    """The balloon device on the device API (its own pop loop, config layout and queue numbering);
    its control API is set_target(), info(), stats."""

    device_id = int(VirtioDeviceID.BALLOON)
    queues = tuple(q.value for q in BalloonQueue)
    queue_sizes = (QUEUE_SIZE,) * len(BalloonQueue)
    feature_flags = BalloonFeature
    config_layout = ((0, 4, "num_pages"), (4, 4, "actual"), (8, 4, "free_page_hint_cmd_id"), (12, 4, "poison_val"))
    config_size = VIRTIO_BALLOON_CONFIG.size

    def __init__(self, mem: GuestMemory, options: BalloonOptions | None = None,
                 discard: Callable[[int, int], None] | None = None, *, host_page_size: int = PAGE) -> None:
        super().__init__()
        self.mem = mem
        self.options = options or BalloonOptions()
        self.pages = BalloonedPages(mem, discard if discard is not None else mem.discard, host_page_size)
        self.ram_size = mem.ram_size
        self.ram_pages = self.ram_size >> VIRTIO_BALLOON_PFN_SHIFT
        self._listeners: list[Listener] = []
        self._stats = BalloonStats(self.options.stats_interval, on_stats=lambda v: self._notify("STATS", v),
                                   guest_error=self._guest_error, trace=self._trace)
        self._handlers: dict[BalloonQueue, Callable[[SplitQueue, DescChain], int]] = {
            BalloonQueue.INFLATE: self._inflate_chain, BalloonQueue.DEFLATE: self._deflate_chain,
            BalloonQueue.STATS: self._stats_chain, BalloonQueue.REPORTING: self._report_chain,
        }
        self.num_pages = 0
        self.actual = 0
        self.poison_val = 0
        self.reported_bytes = 0
        self.bad_pfns = 0
        self.duplicate_pfns = 0
        self.never_inflated = 0
        self.unrequested_deflate_pages = 0
        self.guest_errors = 0
        self._closed = False
        self._reset_driver_state()

    # The counters people and tests read, from the parts that keep them.
    ballooned_pages = property(lambda self: self.pages.count, doc="pages the host holds as ballooned")
    discarded_bytes = property(lambda self: self.pages.discarded_bytes, doc="bytes given back, cumulative")
    discard_calls = property(lambda self: self.pages.discard_calls)
    stats = property(lambda self: self._stats.values, doc="the last statistics by short name")
    stats_updated = property(lambda self: self._stats.updated, doc="time.time() of the last stats")
    unknown_stats = property(lambda self: self._stats.unknown)
    host_page_size = property(lambda self: self.pages.host_page_size)

    def is_ballooned(self, pfn: int) -> bool:
        return pfn in self.pages

    def _reset_driver_state(self) -> None:
        self._features = 0
        self._queues: list[SplitQueue] = []
        self._active: list[BalloonQueue] = []
        self._actual_bytes = bytearray(4)
        self._actual_mask = 0
        self._stats.restart()

    # --- VirtioDevice interface --------------------------------------------------------------------------

    def device_features(self) -> int:
        return self.options.features()

    def queue_names(self, features: int) -> list[str]:
        return [q.value for q in BalloonQueue.for_features(features)]   # FREE_PAGE_HINT is not offered

    def features_ok(self, features: int) -> bool:
        # Spec: a device MAY fail FEATURES_OK if MUST_TELL_HOST is refused; pyvmm accepts any subset,
        # since a page it discards early only reads as zero to a guest that already gave it away.
        return True

    def config_read(self, offset: int, size: int) -> int:
        raw = VIRTIO_BALLOON_CONFIG.pack(self.num_pages, self.actual, 0, self.poison_val)
        return int.from_bytes(raw[offset: offset + size].ljust(size, b"\0"), "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        if offset == 4 and size == 4:
            # One write of the whole field replaces it at once, whatever narrow writes came before.
            self._actual_mask = 0
            self._set_actual(value)
            return
        for i, byte in enumerate(value.to_bytes(size, "little")):
            rel = offset + i
            if 4 <= rel < 8:
                # `actual` is used only once all four bytes have been written since the last time
                # (spec legacy: "SHOULD NOT use actual until its MSB has been written"; Linux's
                # legacy driver writes it one byte at a time, LSB first).
                self._actual_bytes[rel - 4] = byte
                self._actual_mask |= 1 << (rel - 4)
                if self._actual_mask == 0xF:
                    self._actual_mask = 0
                    self._set_actual(int.from_bytes(self._actual_bytes, "little"))
            elif 12 <= rel < 16:
                if self.transport is not None and self.transport.live:
                    self._guest_error("poison_val written while DRIVER_OK is set")
                    return
                b = bytearray(self.poison_val.to_bytes(4, "little"))
                b[rel - 12] = byte
                self.poison_val = int.from_bytes(b, "little")
            else:
                name = "num_pages" if rel < 4 else "free_page_hint_cmd_id" if rel < 12 else f"+{rel:#x}"
                self._guest_error(f"config write to {name}, which the driver may not write")
                return

    def activate(self, features: int, queues: list[SplitQueue]) -> None:
        self._features = features
        self._queues = queues
        self._active = BalloonQueue.for_features(features)
        self._stats.restart()
        self._schedule_stats()

    def process_queue(self, index: int) -> None:
        """Up to MAX_CHAINS_PER_CALL chains of queue index (or MAX_PFNS_PER_CALL PFNs): the one pop loop."""
        if index >= len(self._queues) or index >= len(self._active):
            return  # not activated (the transport only calls once the queues may be used)
        q = self._queues[index]
        handle = self._handlers[self._active[index]]
        before = q.next_used
        budget = MAX_PFNS_PER_CALL
        for _ in range(MAX_CHAINS_PER_CALL):
            if budget <= 0 or (chain := q.pop()) is None:
                break
            budget -= handle(q, chain)
        if q.next_used != before:
            self.signal_used(index)

    def reset(self) -> None:
        # The driver is gone (reboot or unload): every page is the guest's again.
        self._stats.cancel()
        self.pages.clear()
        if self.actual:
            self._set_actual(0)
        self.poison_val = 0
        self._reset_driver_state()

    # --- control API (monitor thread) ------------------------------------------------------------------

    def add_listener(self, callback: Listener) -> None:
        """callback(event, data) for BALLOON_CHANGE ({"actual": bytes}) and STATS ({name: value}).

        Called on the thread that caused the event with the device lock held: queue it, don't block.
        """
        self._listeners.append(callback)

    def set_target(self, target_bytes: int) -> None:
        """Ask the guest to be target_bytes big (QEMU's ``balloon value``); a config interrupt follows."""
        with self.lock:
            target = max(0, min(int(target_bytes), self.ram_size))
            self.num_pages = (self.ram_size - target) >> VIRTIO_BALLOON_PFN_SHIFT
            self._trace("set_target", self.num_pages, lambda: f"= num_pages for a guest of {target} bytes")
            self.signal_config()

    @property
    def target(self) -> int:
        return self.ram_size - (self.num_pages << VIRTIO_BALLOON_PFN_SHIFT)

    @property
    def stats_interval(self) -> float:
        return self._stats.interval

    @stats_interval.setter
    def stats_interval(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"stats interval {seconds!r} must be >= 0")
        with self.lock:
            self._stats.interval = float(seconds)
            self._schedule_stats()

    def timeline(self, interval: float = 0.25) -> Any:
        """Start sampling target, actual, host RSS and the guest's free memory every ``interval``
        seconds: a pyvmm.timeline.BalloonTimeline (``.stop()``, ``.samples``, ``.plot(path)``)."""
        from ..timeline import BalloonTimeline

        return BalloonTimeline(self, interval)

    def request_stats(self) -> bool:
        """Give the held stats buffer back now, asking the driver for fresh stats; False if none held."""
        with self.lock:
            return self._return_stats_buffer()

    def info(self, rss: bool = True) -> BalloonInfo:
        """A snapshot of the balloon; rss=False skips measuring guest-RAM RSS (query-balloon's path).

        The counters are taken under the device lock, the RSS after it is released: mincore over all
        of guest RAM takes time in proportion to RAM, and a vCPU's notify must not wait for it.
        """
        with self.lock:
            updated = self._stats.updated
            snapshot = BalloonInfo(
                ram_size=self.ram_size, target=self.target, actual=self.actual_bytes, num_pages=self.num_pages,
                actual_pages=self.actual, ballooned_pages=self.pages.count,
                discarded_bytes=self.pages.discarded_bytes, reported_bytes=self.reported_bytes, guest_ram_rss=None,
                stats=dict(self._stats.values),
                stats_age=None if updated is None else max(0.0, time.time() - updated),
                features=tuple(f.name or "" for f in BalloonFeature if self._features & f),
                bad_pfns=self.bad_pfns, duplicate_pfns=self.duplicate_pfns, never_inflated=self.never_inflated,
                unrequested_deflate_pages=self.unrequested_deflate_pages, guest_errors=self.guest_errors,
                agree=self.pages.count == self.actual,
            )
        if rss and all(r.is_mmap for r in self.mem.regions):
            from ..hoststat import mapping_rss  # only info() needs it
            try:
                snapshot = replace(snapshot, guest_ram_rss=mapping_rss(self.mem))
            except ValueError:      # the machine was closed: its guest RAM is unmapped
                pass
        return snapshot

    @property
    def actual_bytes(self) -> int:
        """The logical guest size the driver reports, bytes (QEMU's query-balloon `actual`)."""
        return self.ram_size - (min(self.actual, self.ram_pages) << VIRTIO_BALLOON_PFN_SHIFT)

    def close(self) -> None:
        """Stop the stats timer."""
        with self.lock:
            self._closed = True
            self._stats.cancel()

    def describe_buffer(self, queue: str, data: bytes) -> str:
        """Inflate and deflate buffers as their PFNs in runs (spec "Device Operation": an array of le32
        page frame numbers), stats buffers as tag=value (spec "Memory Statistics")."""
        if queue in (BalloonQueue.INFLATE.value, BalloonQueue.DEFLATE.value):
            return describe_pfns(data)
        return describe_stats(data) if queue == BalloonQueue.STATS.value else ""

    # --- inflate / deflate ------------------------------------------------------------------------------

    def _pfns(self, chain: DescChain, what: str) -> list[int]:
        total = chain.readable_len
        if total % 4:
            self._guest_error(f"{what} buffer of {total} bytes is not a whole number of le32 PFNs")
        if total > MAX_PFN_BYTES:
            self._guest_error(f"{total // 4} PFNs in one buffer; only the first {MAX_PFNS_PER_BUFFER} are used")
        data = chain.read_prefix(self.mem, MAX_PFN_BYTES) if chain.readable else b""
        n = len(data) // 4
        return memoryview(data)[: 4 * n].cast("I").tolist() if n else []   # le32 on this little-endian host

    def _inflate_chain(self, q: SplitQueue, chain: DescChain) -> int:
        pfns = self._pfns(chain, "inflate")
        fresh, runs, bad, dup = self.pages.add(pfns)
        if bad:
            self.bad_pfns += bad
            self._guest_error(f"inflate: {bad} PFNs outside guest RAM ignored")
        if dup:
            self.duplicate_pfns += dup
            self._guest_error(f"inflate: {dup} PFNs already in the balloon")
        self._trace("inflate", len(pfns), lambda: f"PFNs: {fresh} new in {runs} run(s), {bad} bad, "
                    f"{dup} dup; {self.pages.count} pages ballooned")
        # The ack comes after the discard: the guest may reuse nothing before it (spec "Device
        # Operation").  Legacy drivers ignore the used length; 0 is the truth.
        q.add_used(chain.head, 0)
        return len(pfns)

    def _deflate_chain(self, q: SplitQueue, chain: DescChain) -> int:
        pfns = self._pfns(chain, "deflate")
        before = self.pages.count
        released, bad, never = self.pages.remove(pfns)
        if bad:
            self.bad_pfns += bad
            self._guest_error(f"deflate: {bad} PFNs outside guest RAM ignored")
        if never:
            self.never_inflated += never
            self._guest_error(f"deflate: {never} PFNs that were never inflated")
        # Pages deflated below the host's target were not asked for: deflate on OOM (or a driver
        # leaving).  They are accepted (spec: with DEFLATE_ON_OOM the driver may) and counted.
        below = max(0, self.num_pages - self.pages.count) - max(0, self.num_pages - before)
        if below > 0:
            self.unrequested_deflate_pages += below
            if not self._features & _OOM:
                log.info("guest deflated %d pages below the target without DEFLATE_ON_OOM", below)
            self._notify("DEFLATE_ON_OOM", {"pages": below, "negotiated": bool(self._features & _OOM)})
        self._trace("deflate", len(pfns), lambda: f"PFNs: {released} released, {bad} bad, "
                    f"{never} never inflated; {self.pages.count} pages ballooned")
        q.add_used(chain.head, 0)
        return len(pfns)

    def _set_actual(self, pages: int) -> None:
        if pages == self.actual:
            return
        self.actual = pages
        if pages > self.ram_pages:
            self._guest_error(f"actual = {pages} pages, more than guest RAM ({self.ram_pages})")
        self._trace("actual", pages, lambda: f"driver reports {pages} pages ballooned")
        self._notify("BALLOON_CHANGE", {"actual": self.ram_size - (min(pages, self.ram_pages) << 12)})

    # --- free page reporting ----------------------------------------------------------------------------

    def _report_chain(self, q: SplitQueue, chain: DescChain) -> int:
        # Spec "Free Page Reporting": the driver reports in device-writable buffers, and "a device MUST
        # NOT write to a device-readable buffer" (discarding is writing zeros); QEMU too acts only on
        # the writable part.  With PAGE_POISON the device MUST NOT change reported pages to anything but
        # poison_val, and a discarded page reads zero; so nothing is discarded then.
        if chain.readable:
            self._guest_error(f"free page report with {len(chain.readable)} device-readable buffer(s): "
                              "not discarded")
        if not (self._features & _POISON and self.poison_val != 0):
            for gpa, length in chain.writable:
                self.reported_bytes += self.pages.discard_free(gpa, length)
        q.add_used(chain.head, 0)
        return 0

    # --- stats --------------------------------------------------------------------------------------------

    def _stats_chain(self, q: SplitQueue, chain: DescChain) -> int:
        self._stats.take(q, chain, self.mem, legacy=not self._features & _VERSION_1)
        return 0

    def _return_stats_buffer(self) -> bool:
        t = self.transport
        if t is None or not t.live or BalloonQueue.STATS not in self._active:
            return False
        index = self._active.index(BalloonQueue.STATS)
        return self._stats.give_back(self._queues[index], t)

    def _schedule_stats(self) -> None:
        if self._closed or not self._features & _STATS:
            self._stats.cancel()
            return
        self._stats.schedule(self._tick)

    def _tick(self, timer: threading.Timer) -> None:
        with self.lock:
            if not self._stats.is_current(timer):
                return  # cancelled or superseded while waiting for the lock
            self._return_stats_buffer()
            self._schedule_stats()

    # --- helpers ----------------------------------------------------------------------------------------

    def _trace(self, what: str, value: int, meaning: Callable[[], str]) -> None:
        """A device trace line; ``meaning`` is only formatted when tracing is on."""
        t = self.transport
        if t is not None and t.tracing:
            t.trace_event(what, value, meaning())

    def _guest_error(self, what: str) -> None:
        self.guest_errors += 1
        if self.transport is not None:
            self.transport.guest_error(what)
        else:
            logging.getLogger("pyvmm.guest").warning("balloon: guest error: %s", what)

    def _notify(self, event: str, data: dict[str, Any]) -> None:
        for cb in list(self._listeners):
            try:
                cb(event, data)
            except Exception:  # a listener's bug must not become the guest's problem
                log.exception("balloon listener failed on %s", event)

