"""The traditional virtio memory balloon (device ID 5): inflate, deflate, stats, page reporting.

Spec "Memory Balloon Device".  Inflated pages are given back to the host with one ``discard`` call
per run of contiguous pages; the set of ballooned 4 KiB pages is a bitmap (one bit per page of the
guest-physical address space), so it costs 32 KiB per GiB however full it is.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from ..errors import ConfigError
from ..memory import GuestMemory
from .abi import (
    VIRTIO_BALLOON_PFN_SHIFT,
    BalloonFeature,
    BalloonStat,
    TransportFeature,
    VirtioDeviceID,
)
from .device import Transport
from .queue import SplitQueue, VirtqueueError

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
# Linux fills 10 or 16 stats entries; more than this many are not read.
MAX_STATS_ENTRIES = 64

_MTH = BalloonFeature.VIRTIO_BALLOON_F_MUST_TELL_HOST
_STATS = BalloonFeature.VIRTIO_BALLOON_F_STATS_VQ
_OOM = BalloonFeature.VIRTIO_BALLOON_F_DEFLATE_ON_OOM
_POISON = BalloonFeature.VIRTIO_BALLOON_F_PAGE_POISON
_REPORTING = BalloonFeature.VIRTIO_BALLOON_F_PAGE_REPORTING
_VERSION_1 = int(TransportFeature.VIRTIO_F_VERSION_1)
_STAT_ENTRY = struct.Struct("<HQ")
MAX_STATS_BYTES = MAX_STATS_ENTRIES * _STAT_ENTRY.size
_STAT_NAMES = {int(s): s.short_name for s in BalloonStat}

Listener = Callable[[str, dict[str, Any]], None]

_BOOL = {"on": True, "yes": True, "true": True, "1": True, "off": False, "no": False, "false": False, "0": False}


@dataclass(frozen=True)
class BalloonOptions:
    """What the balloon offers, from ``--balloon deflate-on-oom=on,stats-interval=2,...``."""

    must_tell_host: bool = True
    stats: bool = True
    stats_interval: float = 0.0           # seconds between stats requests; 0 = no polling
    deflate_on_oom: bool = True
    free_page_reporting: bool = False
    page_poison: bool | None = None       # None: offered together with free page reporting

    _KEYS: ClassVar[dict[str, str]] = {
        "must-tell-host": "must_tell_host", "stats": "stats", "stats-interval": "stats_interval",
        "deflate-on-oom": "deflate_on_oom", "free-page-reporting": "free_page_reporting",
        "page-poison": "page_poison",
    }

    @classmethod
    def parse(cls, text: str) -> BalloonOptions:
        """Parse ``key=value,...``; ConfigError names the bad key or value."""
        opts = cls()
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = item.partition("=")
            attr = cls._KEYS.get(key.strip())
            if attr is None:
                raise ConfigError(f"--balloon: unknown option {key!r}; known: {', '.join(cls._KEYS)}")
            if not sep:
                raise ConfigError(f"--balloon: option {key!r} needs a value ({key}=on or {key}=off)")
            value = value.strip().lower()
            if attr == "stats_interval":
                try:
                    seconds = float(value.removesuffix("s"))
                except ValueError:
                    raise ConfigError(f"--balloon: stats-interval={value!r} is not a number of seconds") \
                        from None
                if not seconds >= 0 or seconds == float("inf"):
                    raise ConfigError(f"--balloon: stats-interval={value!r} must be >= 0")
                opts = replace(opts, stats_interval=seconds)
            elif value in _BOOL:
                opts = replace(opts, **{attr: _BOOL[value]})
            else:
                raise ConfigError(f"--balloon: {key}={value!r}: expected on or off")
        return opts

    def features(self) -> int:
        """The balloon feature bits these options offer."""
        bits = 0
        if self.must_tell_host:
            bits |= _MTH
        if self.stats:
            bits |= _STATS
        if self.deflate_on_oom:
            bits |= _OOM
        if self.free_page_reporting:
            bits |= _REPORTING
        poison = self.free_page_reporting if self.page_poison is None else self.page_poison
        if poison:
            bits |= _POISON
        return int(bits)


@dataclass(frozen=True)
class BalloonInfo:
    """A snapshot of the balloon for query-balloon / ``pyvmm balloon info``."""

    ram_size: int
    target: int                   # logical guest size the host asks for, bytes (QEMU's meaning)
    actual: int                   # logical guest size the driver reports, bytes
    num_pages: int                # config num_pages: 4 KiB pages the host wants ballooned
    actual_pages: int             # config actual: pages the driver says it ballooned
    ballooned_pages: int          # pages the host holds as ballooned (its own bitmap)
    discarded_bytes: int          # bytes given back to the host through discard, cumulative
    reported_bytes: int           # of which by free page reporting
    guest_ram_rss: int | None     # bytes of guest RAM resident on the host (mmap-backed RAM only)
    stats: dict[str, int] = field(default_factory=dict)
    stats_age: float | None = None  # seconds since the last stats arrived
    features: tuple[str, ...] = ()
    bad_pfns: int = 0
    duplicate_pfns: int = 0
    never_inflated: int = 0
    unrequested_deflate_pages: int = 0   # deflated below the target (deflate on OOM)
    guest_errors: int = 0
    agree: bool = True            # host's ballooned set size == driver's actual


class VirtioBalloon:
    """The balloon device behind a transport; its control API is set_target(), info(), stats."""

    device_id = int(VirtioDeviceID.BALLOON)
    queue_max_size = QUEUE_SIZE
    feature_flags = BalloonFeature

    def __init__(
        self,
        mem: GuestMemory,
        options: BalloonOptions | None = None,
        discard: Callable[[int, int], None] | None = None,
        *,
        host_page_size: int = PAGE,
    ) -> None:
        if host_page_size < PAGE or host_page_size & (host_page_size - 1):
            raise ValueError(f"host page size {host_page_size} is not a power of 2 >= {PAGE}")
        self.mem = mem
        self.options = options or BalloonOptions()
        self._discard_fn = discard if discard is not None else mem.discard
        self.host_page_size = host_page_size
        self._sub = host_page_size // PAGE          # 4 KiB pages per host page
        self.ram_size = mem.ram_size
        self.ram_pages = self.ram_size >> VIRTIO_BALLOON_PFN_SHIFT
        self._ram_pfns = [(r.gpa >> VIRTIO_BALLOON_PFN_SHIFT, r.end >> VIRTIO_BALLOON_PFN_SHIFT)
                          for r in mem.regions]
        self._bitmap = bytearray(((mem.end >> VIRTIO_BALLOON_PFN_SHIFT) + 7) // 8)
        self.lock: threading.RLock = threading.RLock()   # replaced by the transport's at attach()
        self._transport: Transport | None = None
        self._listeners: list[Listener] = []
        self.num_pages = 0
        self.actual = 0
        self.poison_val = 0
        self.ballooned_pages = 0
        self.discarded_bytes = 0
        self.reported_bytes = 0
        self.discard_calls = 0
        self.bad_pfns = 0
        self.duplicate_pfns = 0
        self.never_inflated = 0
        self.unrequested_deflate_pages = 0
        self.unknown_stats = 0
        self.guest_errors = 0
        self.stats: dict[str, int] = {}
        self.stats_updated: float | None = None
        self._stats_interval = float(self.options.stats_interval)
        self._timer: threading.Timer | None = None
        self._closed = False
        self._reset_driver_state()

    def _reset_driver_state(self) -> None:
        self._features = 0
        self._queues: list[SplitQueue] = []
        self._names: list[str] = []
        self._actual_bytes = bytearray(4)
        self._actual_mask = 0
        self._stats_head: int | None = None
        self._stats_seen = 0

    # --- VirtioDevice interface --------------------------------------------------------------------------

    def device_features(self) -> int:
        return self.options.features()

    def queue_names(self, features: int) -> list[str]:
        # Numbered densely, as Linux's vm_find_vqs does: a queue whose feature was not negotiated
        # takes no index (see the queue-index note in docs/virtio.md).  FREE_PAGE_HINT is not offered.
        names = ["inflateq", "deflateq"]
        if features & _STATS:
            names.append("statsq")
        if features & _REPORTING:
            names.append("reporting_vq")
        return names

    def config_fields(self) -> list[tuple[int, int, str]]:
        return [(0, 4, "num_pages"), (4, 4, "actual"), (8, 4, "free_page_hint_cmd_id"), (12, 4, "poison_val")]

    def attach(self, transport: Transport) -> None:
        self._transport = transport
        self.lock = transport.lock

    def features_ok(self, features: int) -> bool:
        # Spec: a device MAY fail FEATURES_OK if MUST_TELL_HOST is refused; pyvmm accepts any subset,
        # since a page it discards early only reads as zero to a guest that already gave it away.
        return True

    def config_read(self, offset: int, size: int) -> int:
        raw = struct.pack("<IIII", self.num_pages, self.actual, 0, self.poison_val)
        return int.from_bytes(raw[offset: offset + size].ljust(size, b"\0"), "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        data = value.to_bytes(size, "little")
        for i, byte in enumerate(data):
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
                if self._transport is not None and self._transport.live:
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
        self._names = self.queue_names(features)
        self._stats_head = None
        self._stats_seen = 0
        self._schedule_stats()

    def process_queue(self, index: int) -> None:
        if index >= len(self._queues) or index >= len(self._names):
            return  # not activated (the transport only calls once DRIVER_OK is set)
        name = self._names[index]
        q = self._queues[index]
        if name == "inflateq":
            self._process_pfn_queue(q, inflate=True)
        elif name == "deflateq":
            self._process_pfn_queue(q, inflate=False)
        elif name == "statsq":
            self._process_stats(q)
        elif name == "reporting_vq":
            self._process_reports(q)

    def reset(self) -> None:
        # The driver is gone (reboot or unload): every page is the guest's again.
        self._cancel_timer()
        self._bitmap[:] = bytes(len(self._bitmap))
        self.ballooned_pages = 0
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
            if self._transport is not None:
                if self._transport.tracing:
                    self._transport.trace_event("set_target", self.num_pages,
                                                f"= num_pages for a guest of {target} bytes")
                self._transport.signal_config_change()

    @property
    def target(self) -> int:
        return self.ram_size - (self.num_pages << VIRTIO_BALLOON_PFN_SHIFT)

    @property
    def stats_interval(self) -> float:
        return self._stats_interval

    @stats_interval.setter
    def stats_interval(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"stats interval {seconds!r} must be >= 0")
        with self.lock:
            self._stats_interval = float(seconds)
            self._schedule_stats()

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
            feats = tuple(f.name or "" for f in BalloonFeature if self._features & f)
            snapshot = BalloonInfo(
                ram_size=self.ram_size,
                target=self.target,
                actual=self.actual_bytes,
                num_pages=self.num_pages,
                actual_pages=self.actual,
                ballooned_pages=self.ballooned_pages,
                discarded_bytes=self.discarded_bytes,
                reported_bytes=self.reported_bytes,
                guest_ram_rss=None,
                stats=dict(self.stats),
                stats_age=None if self.stats_updated is None else max(0.0, time.time() - self.stats_updated),
                features=feats,
                bad_pfns=self.bad_pfns,
                duplicate_pfns=self.duplicate_pfns,
                never_inflated=self.never_inflated,
                unrequested_deflate_pages=self.unrequested_deflate_pages,
                guest_errors=self.guest_errors,
                agree=self.ballooned_pages == self.actual,
            )
        if rss and all(r.is_mmap for r in self.mem.regions):
            from ..hoststat import mapping_rss  # only info() needs it
            snapshot = replace(snapshot, guest_ram_rss=mapping_rss(self.mem))
        return snapshot

    @property
    def actual_bytes(self) -> int:
        """The logical guest size the driver reports, bytes (QEMU's query-balloon `actual`)."""
        return self.ram_size - (min(self.actual, self.ram_pages) << VIRTIO_BALLOON_PFN_SHIFT)

    def is_ballooned(self, pfn: int) -> bool:
        return bool(self._bitmap[pfn >> 3] & (1 << (pfn & 7))) if 0 <= pfn < len(self._bitmap) * 8 else False

    def close(self) -> None:
        """Stop the stats timer."""
        with self.lock:
            self._closed = True
            self._cancel_timer()

    # --- inflate / deflate ------------------------------------------------------------------------------

    def _pfn_in_ram(self, pfn: int) -> bool:
        for lo, hi in self._ram_pfns:
            if lo <= pfn < hi:
                return True
        return False

    def _process_pfn_queue(self, q: SplitQueue, inflate: bool) -> None:
        used = False
        chains = done = 0
        while chains < MAX_CHAINS_PER_CALL and done < MAX_PFNS_PER_CALL and (chain := q.pop()) is not None:
            chains += 1
            total = chain.readable_len
            if total % 4:
                self._guest_error(f"{'inflate' if inflate else 'deflate'} buffer of {total} bytes "
                                  "is not a whole number of le32 PFNs")
            if total > MAX_PFN_BYTES:
                self._guest_error(f"{total // 4} PFNs in one buffer; only the first {MAX_PFNS_PER_BUFFER} "
                                  "are used")
            data = chain.read_prefix(self.mem, MAX_PFN_BYTES) if chain.readable else b""
            n = len(data) // 4
            done += n
            pfns = struct.unpack_from(f"<{n}I", data) if n else ()
            if inflate:
                self._inflate(pfns)
            else:
                self._deflate(pfns)
            # The ack comes after the discard: the guest may reuse nothing before it (spec
            # "Device Operation").  Legacy drivers ignore the used length; 0 is the truth.
            q.add_used(chain.head, 0)
            used = True
        if used and self._transport is not None:
            self._transport.signal_used_queue(q.index)

    def _inflate(self, pfns: tuple[int, ...]) -> None:
        bitmap = self._bitmap
        fresh = []
        bad = dup = 0
        for pfn in pfns:
            if not self._pfn_in_ram(pfn):
                bad += 1
                continue
            byte, bit = pfn >> 3, 1 << (pfn & 7)
            if bitmap[byte] & bit:
                dup += 1
                continue
            bitmap[byte] |= bit
            fresh.append(pfn)
        self.ballooned_pages += len(fresh)
        if bad:
            self.bad_pfns += bad
            self._guest_error(f"inflate: {bad} PFNs outside guest RAM ignored")
        if dup:
            self.duplicate_pfns += dup
            self._guest_error(f"inflate: {dup} PFNs already in the balloon")
        runs = _runs(sorted(fresh))
        for start, count in runs:
            self._discard_run(start, count)
        if self._transport is not None and self._transport.tracing:
            self._transport.trace_event("inflate", len(pfns),
                                        f"PFNs: {len(fresh)} new in {len(runs)} run(s), {bad} bad, {dup} dup; "
                                        f"{self.ballooned_pages} pages ballooned")

    def _deflate(self, pfns: tuple[int, ...]) -> None:
        bitmap = self._bitmap
        before = self.ballooned_pages
        bad = never = 0
        for pfn in pfns:
            if not self._pfn_in_ram(pfn):
                bad += 1
                continue
            byte, bit = pfn >> 3, 1 << (pfn & 7)
            if bitmap[byte] & bit:
                bitmap[byte] &= ~bit
                self.ballooned_pages -= 1
            else:
                never += 1
        if bad:
            self.bad_pfns += bad
            self._guest_error(f"deflate: {bad} PFNs outside guest RAM ignored")
        if never:
            self.never_inflated += never
            self._guest_error(f"deflate: {never} PFNs that were never inflated")
        # Pages deflated below the host's target were not asked for: deflate on OOM (or a driver
        # leaving).  They are accepted (spec: with DEFLATE_ON_OOM the driver may) and counted.
        below = max(0, self.num_pages - self.ballooned_pages) - max(0, self.num_pages - before)
        if below > 0:
            self.unrequested_deflate_pages += below
            if not self._features & _OOM:
                log.info("guest deflated %d pages below the target without DEFLATE_ON_OOM", below)
            self._notify("DEFLATE_ON_OOM", {"pages": below, "negotiated": bool(self._features & _OOM)})
        if self._transport is not None and self._transport.tracing:
            self._transport.trace_event("deflate", len(pfns),
                                        f"PFNs: {before - self.ballooned_pages} released, {bad} bad, "
                                        f"{never} never inflated; {self.ballooned_pages} pages ballooned")

    def _discard_run(self, start: int, count: int) -> None:
        """Give back the host pages that a run of newly ballooned 4 KiB pages completes."""
        sub = self._sub
        if sub == 1:
            self._discard_range(start << VIRTIO_BALLOON_PFN_SHIFT, count << VIRTIO_BALLOON_PFN_SHIFT)
            return
        # Huge host pages: only a host page whose every 4 KiB page is ballooned may go (QEMU and
        # Cloud Hypervisor keep a partial-page bitmap; the ballooned bitmap is ours).
        first, last = start // sub, (start + count - 1) // sub
        if not self._host_page_full(first):
            first += 1
        if last >= first and not self._host_page_full(last):
            last -= 1
        if last >= first:
            self._discard_range(first * self.host_page_size, (last - first + 1) * self.host_page_size)

    def _host_page_full(self, hp: int) -> bool:
        sub = self._sub
        lo = hp * sub
        if not self._pfn_in_ram(lo) or not self._pfn_in_ram(lo + sub - 1):
            return False
        if sub >= 8:
            return self._bitmap[lo >> 3: (lo + sub) >> 3] == b"\xff" * (sub >> 3)
        return all(self.is_ballooned(p) for p in range(lo, lo + sub))

    def _discard_range(self, gpa: int, length: int) -> None:
        """discard() once per RAM region the range touches (a run never spans the MMIO hole)."""
        end = gpa + length
        for r in self.mem.regions:
            lo, hi = max(gpa, r.gpa), min(end, r.end)
            if lo < hi:
                self._discard_fn(lo, hi - lo)
                self.discard_calls += 1
                self.discarded_bytes += hi - lo

    def _set_actual(self, pages: int) -> None:
        if pages == self.actual:
            return
        self.actual = pages
        if pages > self.ram_pages:
            self._guest_error(f"actual = {pages} pages, more than guest RAM ({self.ram_pages})")
        if self._transport is not None and self._transport.tracing:
            self._transport.trace_event("actual", pages, f"driver reports {pages} pages ballooned")
        self._notify("BALLOON_CHANGE", {"actual": self.ram_size - (min(pages, self.ram_pages) << 12)})

    # --- free page reporting ----------------------------------------------------------------------------

    def _process_reports(self, q: SplitQueue) -> None:
        used = False
        keep = bool(self._features & _POISON) and self.poison_val != 0
        chains = 0
        while chains < MAX_CHAINS_PER_CALL and (chain := q.pop()) is not None:
            chains += 1
            if keep:
                # Spec "Free Page Reporting": with PAGE_POISON the device MUST NOT change reported pages
                # to anything but poison_val, and a discarded page reads zero; so nothing is discarded.
                pass
            else:
                hp = self.host_page_size
                for gpa, length in chain.readable + chain.writable:
                    lo = (gpa + hp - 1) & ~(hp - 1)
                    hi = (gpa + length) & ~(hp - 1)
                    if hi > lo:
                        before = self.discarded_bytes
                        self._discard_range(lo, hi - lo)
                        self.reported_bytes += self.discarded_bytes - before
            q.add_used(chain.head, 0)
            used = True
        if used and self._transport is not None:
            self._transport.signal_used_queue(q.index)

    # --- stats --------------------------------------------------------------------------------------------

    def _process_stats(self, q: SplitQueue) -> None:
        chains = 0
        while chains < MAX_CHAINS_PER_CALL and (chain := q.pop()) is not None:
            chains += 1
            if self._stats_head is not None:
                # "at most one buffer outstanding": hand the older one back rather than leak it.
                self._guest_error("a second stats buffer while one is held")
                q.add_used(self._stats_head, 0)
                if self._transport is not None:
                    self._transport.signal_used_queue(q.index)
            self._stats_head = chain.head
            self._stats_seen += 1
            if chain.readable_len > MAX_STATS_BYTES:
                self._guest_error(f"stats buffer of {chain.readable_len} bytes; only the first "
                                  f"{MAX_STATS_ENTRIES} entries are read")
            data = chain.read_prefix(self.mem, MAX_STATS_BYTES) if chain.readable else b""
            legacy = not self._features & _VERSION_1
            if legacy and self._stats_seen == 1:
                # Spec legacy: "the device SHOULD ignore the values in the first buffer".
                if self._transport is not None and self._transport.tracing:
                    self._transport.trace_event("stats", 0, "first legacy buffer: values ignored")
                continue
            self._decode_stats(data)

    def _decode_stats(self, data: bytes) -> None:
        if len(data) % _STAT_ENTRY.size:
            self._guest_error(f"stats buffer of {len(data)} bytes is not a whole number of 10-byte entries")
        values: dict[str, int] = {}
        for off in range(0, len(data) - _STAT_ENTRY.size + 1, _STAT_ENTRY.size):
            tag, val = _STAT_ENTRY.unpack_from(data, off)
            name = _STAT_NAMES.get(tag)
            if name is None:
                self.unknown_stats += 1   # "MUST ignore unknown tags"
                continue
            values[name] = val
        self.stats = values
        self.stats_updated = time.time()
        if self._transport is not None and self._transport.tracing:
            self._transport.trace_event("stats", len(values),
                                        " ".join(f"{k}={v}" for k, v in values.items()))
        self._notify("STATS", dict(values))

    def _return_stats_buffer(self) -> bool:
        t = self._transport
        if self._stats_head is None or t is None or not t.live or "statsq" not in self._names:
            return False
        index = self._names.index("statsq")
        q = self._queues[index]
        if not q.ready:
            # Spec "MMIO Device Register Layout", QueueReady: the driver stopped the queue (QueueReady
            # or legacy QueuePFN 0), and a device must not touch a queue that is not ready.  The held
            # buffer is the driver's again; nothing is written into its rings.
            return False
        head, self._stats_head = self._stats_head, None
        try:
            q.add_used(head, 0)
        except VirtqueueError as e:
            t.guest_error(f"statsq: {e}", fatal=True)
            return False
        t.signal_used_queue(index)
        return True

    def _schedule_stats(self) -> None:
        self._cancel_timer()
        if self._closed or self._stats_interval <= 0 or not self._features & _STATS:
            return
        timer = threading.Timer(self._stats_interval, self._tick)
        timer.daemon = True
        timer.name = "balloon-stats"
        self._timer = timer
        timer.start()

    def _tick(self) -> None:
        with self.lock:
            if self._timer is None or threading.current_thread() is not self._timer:
                return  # cancelled or superseded while waiting for the lock
            self._return_stats_buffer()
            self._schedule_stats()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- helpers ----------------------------------------------------------------------------------------

    def _guest_error(self, what: str) -> None:
        self.guest_errors += 1
        if self._transport is not None:
            self._transport.guest_error(what)
        else:
            logging.getLogger("pyvmm.guest").warning("balloon: guest error: %s", what)

    def _notify(self, event: str, data: dict[str, Any]) -> None:
        for cb in list(self._listeners):
            try:
                cb(event, data)
            except Exception:  # a listener's bug must not become the guest's problem
                log.exception("balloon listener failed on %s", event)


def _runs(sorted_pfns: list[int]) -> list[tuple[int, int]]:
    """Merge sorted, distinct PFNs into (start, count) runs."""
    runs: list[tuple[int, int]] = []
    if not sorted_pfns:
        return runs
    start = prev = sorted_pfns[0]
    for pfn in sorted_pfns[1:]:
        if pfn != prev + 1:
            runs.append((start, prev - start + 1))
            start = pfn
        prev = pfn
    runs.append((start, prev - start + 1))
    return runs
