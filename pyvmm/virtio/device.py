"""The two small interfaces between a virtio transport and a virtio device: Transport and VirtioDevice."""

from __future__ import annotations

import threading
from enum import IntFlag
from typing import Protocol

from ..memory import GuestMemory
from .queue import DescChain, SplitQueue


class Transport(Protocol):
    """What a device may ask of the transport it sits behind (virtio-mmio here).

    Every call from the device happens with ``lock`` held: the transport takes it around each
    register access and queue notification, and the device's control API (called from the monitor
    thread) takes it too.
    """

    lock: threading.RLock
    mem: GuestMemory

    def signal_used_queue(self, index: int) -> None:
        """Used buffers were added to queue index: raise a used-buffer interrupt unless suppressed."""

    def signal_config_change(self) -> None:
        """The device changed its config space: bump ConfigGeneration, raise a config interrupt."""

    def serve_queue(self, index: int) -> None:
        """Serve queue index's available buffers now, as a notification would (the lock is taken)."""

    def guest_error(self, what: str, *, fatal: bool = False) -> None:
        """Log a guest error (rate-limited); fatal sets DEVICE_NEEDS_RESET."""

    def trace_event(self, what: str, value: int, meaning: str = "") -> None:
        """A device-level trace line (what the device did with a buffer); cheap when tracing is off."""

    @property
    def tracing(self) -> bool:
        """True when device-level trace lines are wanted."""

    @property
    def live(self) -> bool:
        """DRIVER_OK is set and neither DEVICE_NEEDS_RESET nor FAILED: queues may be used."""


class VirtioDevice(Protocol):
    """A virtio device type, independent of the transport (spec "Device Types")."""

    device_id: int

    @property
    def queue_max_size(self) -> int:
        """QueueNumMax of every queue (a device may give each its own with queue_size(index))."""

    @property
    def feature_flags(self) -> type[IntFlag]:
        """The IntFlag of the device's own feature bits, for decoding them in the trace."""

    def device_features(self) -> int:
        """Device-specific feature bits offered (the transport adds its own)."""

    def queue_names(self, features: int) -> list[str]:
        """Names of the queues, in the order the driver numbers them for these accepted features."""

    def config_fields(self) -> list[tuple[int, int, str]]:
        """(offset, size, name) of each config-space field, for the trace."""

    def attach(self, transport: Transport) -> None:
        """Called once by the transport that owns the device."""

    def features_ok(self, features: int) -> bool:
        """Whether the device accepts this feature set (FEATURES_OK is refused otherwise)."""

    def config_read(self, offset: int, size: int) -> int:
        """A little-endian read of size bytes at offset in config space; 0 outside it."""

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A little-endian write into config space."""

    def activate(self, features: int, queues: list[SplitQueue]) -> None:
        """DRIVER_OK was set with these features; queues[i] is the driver's queue i."""

    def process_queue(self, index: int) -> None:
        """The driver notified queue index (or the device polls it at activation)."""

    def reset(self) -> None:
        """The driver reset the device: forget queues and negotiated state (not host-side state)."""

    def describe_buffer(self, queue: str, data: bytes) -> str:
        """What a device-readable buffer on this queue says, for people (a virtio breakpoint shows it);
        "" if the device has nothing to add to the raw descriptors."""


# --- the device API: a base class to write a device on ------------------------------------------------

class NoFeatures(IntFlag):
    """The device-specific feature bits of a device that has none."""


# A chain's device-readable bytes are the guest's to size: read() copies at most this many per call,
# so a descriptor claiming gigabytes cannot make the device copy them.
MAX_READ = 1 << 16
# The default pop loop takes at most this many chains per call; the transport calls again (with its
# lock released in between) while buffers remain.
MAX_CHAINS_PER_CALL = 64


class Chain:
    """One available buffer as a device handler sees it: bounded reads of its device-readable part,
    writes into its device-writable part, and the used length that goes back to the driver.

    ``read(n)`` returns the next at most n readable bytes (fewer at the end of the chain; never more
    than MAX_READ); ``write(data)`` writes at the current writable offset and returns how many bytes
    fitted (the rest is dropped: the driver gave no more room).  ``written`` is the used length the
    default loop reports to the driver.
    """

    __slots__ = ("_mem", "desc", "_rpos", "written")

    def __init__(self, mem: GuestMemory, desc: DescChain) -> None:
        self._mem = mem
        self.desc = desc
        self._rpos = 0
        self.written = 0

    @property
    def head(self) -> int:
        return self.desc.head

    @property
    def readable_len(self) -> int:
        """Device-readable bytes in the chain (the driver's claim, not yet copied)."""
        return self.desc.readable_len

    @property
    def writable_len(self) -> int:
        """Device-writable bytes in the chain."""
        return self.desc.writable_len

    @property
    def writable_left(self) -> int:
        return self.desc.writable_len - self.written

    def read(self, n: int = MAX_READ) -> bytes:
        """The next at most min(n, MAX_READ) device-readable bytes; b"" at the end."""
        want = max(0, min(n, MAX_READ))
        parts: list[bytes] = []
        pos = 0
        for gpa, length in self.desc.readable:
            if want <= 0:
                break
            if pos + length <= self._rpos:
                pos += length
                continue
            skip = max(0, self._rpos - pos)
            take = min(length - skip, want)
            parts.append(self._mem.read(gpa + skip, take))
            self._rpos += take
            want -= take
            pos += length
        return b"".join(parts)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write data at the current device-writable offset; returns the bytes that fitted."""
        view = memoryview(data).cast("B")
        done = 0
        pos = 0
        for gpa, length in self.desc.writable:
            if done >= len(view):
                break
            if pos + length <= self.written:
                pos += length
                continue
            skip = self.written - pos
            take = min(length - skip, len(view) - done)
            self._mem.write(gpa + skip, view[done: done + take])
            self.written += take
            done += take
            pos += length
        return done


class VirtioDeviceBase:
    """A virtio device on pyvmm's device API (docs/devices.md): subclass it, set the class attributes,
    write ``handle(queue, chain)``.  It knows nothing of KVM nor of the transport's registers: it works
    behind virtio-mmio version 1 and 2 alike, and in unit tests on a bytearray-backed memory.

    Class attributes:
      device_id      the spec's Device ID (4 entropy, 5 balloon, ...)
      queues         the virtqueues' names, in the driver's order
      queue_sizes    each queue's maximum size (QueueNumMax), a power of 2 up to 32768
      features       device-specific feature bits offered (bits 0-23; the transport adds its own)
      feature_flags  an IntFlag naming them, for the trace
      config_layout  (offset, size, name) of each config-space field, for the trace
      config_size    bytes of config space; ``self.config`` is a bytearray of that size, read by the
                     default config_read

    What a device calls: ``signal_used(queue)`` (used buffers were added: a used-buffer interrupt unless
    the driver suppressed it), ``signal_config()`` (config space changed: a new ConfigGeneration and a
    config-change interrupt), ``guest_error(text)``, ``trace(what, value, meaning)``.  Everything it is
    called with runs under the transport's lock; an exception escaping from it is contained by the
    transport (DEVICE_NEEDS_RESET and one log line), never a VMM crash.
    """

    device_id: int = 0
    queues: tuple[str, ...] = ()
    queue_sizes: tuple[int, ...] = ()
    features: int = 0
    feature_flags: type[IntFlag] = NoFeatures
    config_layout: tuple[tuple[int, int, str], ...] = ()
    config_size: int = 0
    mem: GuestMemory                  # guest memory, from attach()

    def __init__(self) -> None:
        self.config = bytearray(self.config_size)
        self.transport: Transport | None = None
        self.lock: threading.RLock = threading.RLock()   # the transport's, from attach()
        self.accepted = 0                                # the driver's features, from activate()
        self.vqs: list[SplitQueue] = []

    # --- what a device writes ----------------------------------------------------------------------

    def handle(self, queue: int, chain: Chain) -> bool | None:
        """One available buffer of queue (its index): read and write it through chain.  Return False
        to leave it unused for now (the default loop stops; call ``serve(queue)`` later), anything
        else to give it back with ``chain.written`` as its used length."""
        return None

    def want_buffer(self, queue: int) -> bool:
        """Whether the default loop should take another buffer of queue now (a rate limit says no)."""
        return True

    def on_activate(self) -> None:
        """DRIVER_OK: ``self.accepted`` and ``self.vqs`` are set."""

    def on_reset(self) -> None:
        """The driver reset the device (its queues are gone); host-side state may stay."""

    def config_changed(self, offset: int, data: bytes) -> bool:
        """The driver writes data at offset in config space: return True to store it in ``self.config``.
        The default refuses (a guest error): the config space is read-only."""
        self.guest_error(f"config write at +{offset:#x}: this device's config space is read-only")
        return False

    # --- what a device calls ------------------------------------------------------------------------

    def signal_used(self, queue: int) -> None:
        if self.transport is not None:
            self.transport.signal_used_queue(queue)

    def signal_config(self) -> None:
        if self.transport is not None:
            self.transport.signal_config_change()

    def serve(self, queue: int) -> None:
        """Serve queue's available buffers now, as a notification would (from a timer, say)."""
        if self.transport is not None:
            self.transport.serve_queue(queue)

    def guest_error(self, what: str, *, fatal: bool = False) -> None:
        if self.transport is not None:
            self.transport.guest_error(what, fatal=fatal)

    def trace(self, what: str, value: int, meaning: str = "") -> None:
        t = self.transport
        if t is not None and t.tracing:
            t.trace_event(what, value, meaning)

    # --- the VirtioDevice interface the transport calls ---------------------------------------------

    @property
    def queue_max_size(self) -> int:
        return max(self.queue_sizes, default=256)

    def queue_size(self, index: int) -> int:
        return self.queue_sizes[index] if index < len(self.queue_sizes) else self.queue_max_size

    def device_features(self) -> int:
        return self.features

    def queue_names(self, features: int) -> list[str]:
        return list(self.queues)

    def config_fields(self) -> list[tuple[int, int, str]]:
        return list(self.config_layout)

    def attach(self, transport: Transport) -> None:
        self.transport = transport
        self.lock = transport.lock
        self.mem = transport.mem

    def features_ok(self, features: int) -> bool:
        return True

    def config_read(self, offset: int, size: int) -> int:
        return int.from_bytes(bytes(self.config[offset: offset + size]).ljust(size, b"\0"), "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        data = value.to_bytes(size, "little")
        if offset + size > len(self.config):
            self.guest_error(f"config write at +{offset:#x}, beyond the {len(self.config)}-byte config space")
            return
        if self.config_changed(offset, data):
            self.config[offset: offset + size] = data

    def activate(self, features: int, queues: list[SplitQueue]) -> None:
        self.accepted = features
        self.vqs = queues
        self.on_activate()

    def process_queue(self, index: int) -> None:
        """The default pop loop: up to MAX_CHAINS_PER_CALL chains, handle() each, one signal_used."""
        if index >= len(self.vqs):
            return
        q = self.vqs[index]
        before = q.next_used
        for _ in range(MAX_CHAINS_PER_CALL):
            if not self.want_buffer(index):
                break
            desc = q.pop()
            if desc is None:
                break
            chain = Chain(self.mem, desc)
            if self.handle(index, chain) is False:
                q.unpop()
                break
            q.add_used(desc.head, chain.written)
        if q.next_used != before:
            self.signal_used(index)

    def reset(self) -> None:
        self.accepted = 0
        self.vqs = []
        self.on_reset()

    def describe_buffer(self, queue: str, data: bytes) -> str:
        return ""
