"""What stopped the machine for a debugger: one event that gdb and the monitor both see."""

from __future__ import annotations

from dataclasses import dataclass

SIGINT = 2
SIGTRAP = 5


@dataclass(frozen=True)
class StopEvent:
    """Why every vCPU is stopped, and on which one.

    ``reason`` is one of "swbreak", "hwbreak", "watch" (``address`` is the data address written),
    "step", "vbreak", "interrupt" (gdb's Ctrl-C), "attach" (gdb connected) or "debug" (another
    debug exception).  ``text`` is what the monitor prints (a virtio breakpoint's decoded access and
    rings), and what gdb shows as console output before it reports the stop.
    """

    cpu: int | None
    reason: str
    signal: int = SIGTRAP
    address: int | None = None
    text: str = ""
