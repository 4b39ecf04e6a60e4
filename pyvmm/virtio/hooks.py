"""What an injected transport hook sees (the virtio breakpoints of pyvmm.debug set one on a transport)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .mmio import VirtioMmio


@dataclass(frozen=True, slots=True)
class VirtioEvent:
    """What a transport hook sees: a driver's register or config access, or an event of the device.

    ``kind`` is "read" / "write" (a register at ``offset``), "config-read" / "config-write" (``offset``
    into the device configuration, ``size`` bytes), "notify" (QueueNotify of queue ``queue``, also
    through ioeventfd), "irq" (InterruptStatus now ``value``, raised for ``queue`` or -1 for a config
    change) or "used" (the device returned buffers on ``queue``; ``value`` is its used index).
    """

    kind: str
    offset: int
    value: int
    size: int = 4
    queue: int = -1
    note: str = ""


# The hook runs under the transport's lock; for a "notify" it returns True to hold the notification
# (the device serves it when serve_held() is called), False to let the device serve it now.
VirtioHook = Callable[["VirtioMmio", VirtioEvent], bool]
