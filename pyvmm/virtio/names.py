"""Names of virtio values for people: feature bits, status, interrupt bits and device types.

One decoding, shared by the register trace, the monitor (`info virtio`), the pictures and the docs.
"""

from __future__ import annotations

from enum import IntFlag
from typing import Any

from ..bits import flag_names
from .abi import VIRTIO_MMIO_MAGIC_VALUE, InterruptBit, Reg, Status, TransportFeature, VirtioDeviceID


def status_names(value: int) -> str:
    """Device status bits: ``ACKNOWLEDGE|DRIVER|FEATURES_OK``."""
    return flag_names(Status, value)


def interrupt_names(value: int) -> str:
    """InterruptStatus bits: ``USED_BUFFER|CONFIG_CHANGE``."""
    return flag_names(InterruptBit, value)


def _known_features(value: int, device_flags: type[IntFlag] | None) -> tuple[list[str], int]:
    names: list[str] = []
    rest = value
    for flags in (TransportFeature, device_flags):
        if flags is None:
            continue
        for member in flags:
            if member.value and rest & member.value == member.value:
                names.append(member.name or "")
                rest &= ~member.value
    return names, rest


def feature_list(value: int, device_flags: type[IntFlag] | None = None) -> list[str]:
    """Every feature bit of value by its full name (the transport's bits first), unknown bits in hex."""
    names, rest = _known_features(value, device_flags)
    return names + ([f"{rest:#x}"] if rest else [])


def short_feature_name(name: str) -> str:
    """``VIRTIO_BALLOON_F_STATS_VQ`` -> ``STATS_VQ``, ``VIRTIO_F_VERSION_1`` -> ``VERSION_1``."""
    return name.removeprefix("VIRTIO_F_").split("_F_")[-1]


def feature_window_names(window: int, value: int, device_flags: type[IntFlag] | None = None) -> str:
    """The 32 feature bits of DeviceFeatures/DriverFeatures[window] by short name: ``STATS_VQ|VERSION_1``."""
    if window >= 2:
        return f"{value:#x}" if value else ""
    names, rest = _known_features(value << (32 * window), device_flags)
    out = [short_feature_name(n) for n in names]
    if rest:
        out.append(f"{rest >> (32 * window):#x}")
    return "|".join(out)


def device_name(device_id: int) -> str:
    """``virtio-balloon`` for 5, ``virtio-rng`` for 4; ``virtio device 42`` for one pyvmm does not know."""
    try:
        return "virtio-" + VirtioDeviceID(device_id).name.lower()
    except ValueError:
        return f"virtio device {device_id}"


_QUEUE_REGS = frozenset({
    Reg.QueueSizeMax, Reg.QueueSize, Reg.QueueReady, Reg.QueueAlign, Reg.QueuePFN,
    Reg.QueueDescLow, Reg.QueueDescHigh, Reg.QueueDriverLow, Reg.QueueDriverHigh,
    Reg.QueueDeviceLow, Reg.QueueDeviceHigh,
})
# Counts and indices are shown in decimal, bit masks and addresses in hex (docs/trace.md).
_DECIMAL_REGS = frozenset({Reg.QueueSel, Reg.QueueSizeMax, Reg.QueueSize, Reg.QueueNotify, Reg.QueueReady,
                           Reg.DeviceFeaturesSel, Reg.DriverFeaturesSel, Reg.ConfigGeneration, Reg.SHMSel,
                           Reg.Version, Reg.DeviceID})


def describe_register(t: Any, direction: str, offset: int, value: int, note: str = "") -> tuple[str, str | None, str]:
    """(label, value as shown, meaning) of a register access on transport t, for the trace:
    ``("DriverFeatures[1]", "0x00000001", "VERSION_1")``; shown None means the trace's default."""
    reg = Reg(offset)
    label = reg.name
    shown: str | None = None
    meaning = ""
    if reg in (Reg.DeviceFeatures, Reg.DriverFeatures):
        window = t.device_features_sel if reg == Reg.DeviceFeatures else t.driver_features_sel
        label = f"{reg.name}[{window}]"
        shown = f"{value:#010x}"
        meaning = feature_window_names(window, value, t.device.feature_flags)
    elif reg == Reg.Status:
        shown = f"{value:#04x}"
        meaning = status_names(value) if value else "(reset)" if direction == "write" else ""
    elif reg in (Reg.InterruptStatus, Reg.InterruptACK):
        meaning = interrupt_names(value) if value else ""
    elif reg in (Reg.QueueSel, Reg.QueueNotify):
        meaning = f"({t.queue_name(value)})"
    elif reg in _QUEUE_REGS:
        meaning = f"({t.queue_name(t.queue_sel)})"
    elif reg == Reg.MagicValue:
        meaning = '"virt"' if value == VIRTIO_MMIO_MAGIC_VALUE else "(bad magic)"
    elif reg == Reg.Version:
        meaning = "(virtio 1.x)" if value == 2 else "(legacy)"
    elif reg == Reg.DeviceID:
        meaning = f"({device_name(value).removeprefix('virtio-')})"
    elif reg in (Reg.SHMLenLow, Reg.SHMLenHigh, Reg.SHMBaseLow, Reg.SHMBaseHigh):
        meaning = "(no such region)"
    if note:
        meaning = f"{meaning} {note}".strip()
    if reg in _DECIMAL_REGS:
        shown = str(value)
    return label, shown, meaning


_REG_NAMES = {int(r): r.name for r in Reg}


def describe_bad_access(offset: int, size: int, direction: str, version: int, window: int, known: bool) -> str:
    """What was wrong with a register access, for the guest-error line: ``2-byte read of Status: ...``."""
    name = _REG_NAMES.get(offset & ~3, f"offset {offset:#x}")
    if offset >= window or offset < 0:
        return f"{direction} of {size} bytes at {offset:#x}, outside the {window:#x} window"
    if size != 4:
        return f"{size}-byte {direction} of {name}: registers are 32 bits wide"
    if offset & 3:
        return f"unaligned {direction} at {offset:#x} ({name})"
    if offset in _REG_NAMES and known:
        return f"{direction} of {'write-only' if direction == 'read' else 'read-only'} register {name}"
    return f"{direction} of {name}, which is not a version {version} register"


def describe_config(fields: dict[int, tuple[str, int, int]], rel: int, size: int) -> str:
    """The config-space field an access touches, as the trace labels it: ``actual``, ``actual[+1]``."""
    field = fields.get(rel)
    if field is None:
        return f"Config[{rel:#x}]"
    if rel == field[1] and size == field[2]:
        return field[0]
    return f"{field[0]}[+{rel - field[1]}]"


__all__ = ["describe_register", "describe_bad_access", "describe_config", "flag_names", "status_names",
           "interrupt_names", "feature_list", "short_feature_name", "feature_window_names", "device_name"]
