"""The two small interfaces between a virtio transport and a virtio device: Transport and VirtioDevice."""

from __future__ import annotations

import threading
from enum import IntFlag
from typing import Protocol

from .queue import SplitQueue


class Transport(Protocol):
    """What a device may ask of the transport it sits behind (virtio-mmio here).

    Every call from the device happens with ``lock`` held: the transport takes it around each
    register access and queue notification, and the device's control API (called from the monitor
    thread) takes it too.
    """

    lock: threading.RLock

    def signal_used_queue(self, index: int) -> None:
        """Used buffers were added to queue index: raise a used-buffer interrupt unless suppressed."""

    def signal_config_change(self) -> None:
        """The device changed its config space: bump ConfigGeneration, raise a config interrupt."""

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
    queue_max_size: int

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
