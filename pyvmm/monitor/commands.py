"""The monitor's commands, shared by QMP and the human monitor, and the MachineControl they steer."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .. import __version__
from ..errors import ConfigError

MiB = 1 << 20
PAGE_SIZE = 4096

# The QMP dialect spoken: QEMU 7.2's (greeting, error classes, command and event shapes).
QEMU_VERSION = {"micro": 0, "minor": 2, "major": 7}
PACKAGE = f"pyvmm {__version__}"

# What QEMU calls the balloon for `-device virtio-balloon-device,id=balloon0`.
BALLOON_QOM_PATH = "/machine/peripheral/balloon0"
BALLOON_TYPE = "virtio-balloon-device"

# A target below this leaves the guest too little to run; refused rather than obeyed (QEMU obeys and
# lets the guest driver fight it out, which only ends in an OOM inside the guest).
BALLOON_FLOOR = 16 * MiB

# QEMU reports a stat the guest never sent as (uint64)-1 on the wire; so do we.
STAT_NEVER = (1 << 64) - 1

# QEMU's guest-stats names in QEMU's order (hw/virtio/virtio-balloon.c balloon_stat_names), with the
# virtio stats tag (spec "Memory Statistics Tags") and the Linux short name each corresponds to.
QEMU_STATS: tuple[tuple[str, int, str], ...] = (
    ("stat-swap-in", 0, "swap_in"),
    ("stat-swap-out", 1, "swap_out"),
    ("stat-major-faults", 2, "majflt"),
    ("stat-minor-faults", 3, "minflt"),
    ("stat-free-memory", 4, "memfree"),
    ("stat-total-memory", 5, "memtot"),
    ("stat-available-memory", 6, "avail"),
    ("stat-disk-caches", 7, "caches"),
    ("stat-htlb-pgalloc", 8, "htlb_pgalloc"),
    ("stat-htlb-pgfail", 9, "htlb_pgfail"),
)


# --- what the monitor needs from the machine --------------------------------------------------------

Listener = Callable[[str, dict], None]


@dataclass(frozen=True)
class QueueInfo:
    """One virtqueue as `info virtqueue` shows it (describe_queue() reads it off the transport)."""

    index: int
    name: str                 # "inflateq", "deflateq", "statsq"
    size: int                 # QueueSize the driver chose
    max_size: int             # QueueSizeMax the device offers
    ready: bool               # QueueReady (legacy: QueuePFN != 0)
    desc_gpa: int             # descriptor table
    avail_gpa: int            # driver area (available ring)
    used_gpa: int             # device area (used ring)
    avail_idx: int | None     # avail->idx as the guest last wrote it (None: ring not readable)
    used_idx: int             # used->idx as the device last wrote it
    last_avail_idx: int       # next available entry the device will take
    in_flight: int            # chains taken from the available ring, not yet returned as used


@dataclass(frozen=True)
class VirtioDeviceInfo:
    """One virtio-mmio transport and its device, as `info virtio` shows it."""

    name: str                 # the id: "balloon0"
    device_name: str          # "virtio-balloon"
    base_gpa: int
    irq: int
    version: int              # virtio-mmio Version: 1 legacy, 2 modern
    features: tuple[str, ...]   # negotiated, by name
    status: tuple[str, ...]     # status bits set, by name
    num_queues: int           # queues the negotiated features give the device


class SplitQueueView(Protocol):
    """The attributes of pyvmm.virtio.queue.SplitQueue the monitor reads."""

    index: int
    size: int
    max_size: int
    ready: bool
    desc: int
    avail: int
    used: int
    last_avail: int
    next_used: int


class VirtioTransportView(Protocol):
    """The attributes of pyvmm.virtio.mmio.VirtioMmio the monitor reads (base and irq_gsi are set by
    the builder); everything else about virtio is derived from these in describe_device/describe_queue."""

    name: str
    version: int
    status: int
    driver_features: int
    base: int
    irq_gsi: int
    queues: Sequence[SplitQueueView]
    mem: Any                  # the GuestMemory the rings live in
    device: Any               # .device_id and .feature_flags (an IntFlag of the device's feature bits)

    @property
    def active_queue_names(self) -> list[str]: ...


class BalloonInfoView(Protocol):
    """The fields of the balloon's BalloonInfo the commands rely on; `info balloon` prints them all."""

    @property
    def target(self) -> int: ...           # logical guest size asked for, bytes (ram - num_pages * 4 KiB)
    @property
    def actual(self) -> int: ...           # logical guest size reached, bytes (ram - actual * 4 KiB)


class BalloonControl(Protocol):
    """pyvmm.virtio.balloon's control surface."""

    stats_interval: float                   # seconds between stats requests, 0 = off

    def set_target(self, target_bytes: int) -> None: ...
    def info(self, rss: bool = True) -> BalloonInfoView: ...   # rss=False: no mincore over guest RAM
    def add_listener(self, cb: Listener) -> None: ...   # ("BALLOON_CHANGE", {"actual": bytes})
    @property
    def stats(self) -> Mapping[Any, int]: ...           # last stats by name (or tag)
    @property
    def stats_updated(self) -> float | None: ...        # time.time() of the last stats, None if never


class MachineControl(Protocol):
    """Everything the monitor asks of a running machine; pyvmm.vm implements it, tests fake it."""

    @property
    def ram_size(self) -> int: ...
    @property
    def balloon(self) -> BalloonControl | None: ...
    @property
    def virtio_devices(self) -> Sequence[VirtioTransportView]: ...

    def status(self) -> str:
        """"running", "paused", "shutdown", or "created" before start (QMP shows it as "prelaunch")."""
        ...

    def pause(self) -> None: ...            # emits STOP through the listeners when it stops the vCPUs
    def resume(self) -> None: ...           # emits RESUME
    def quit(self) -> None: ...             # emits SHUTDOWN {"guest": false, "reason": "host-qmp-quit"}

    def reset(self) -> None:
        """System reset; NotImplementedError (or no such method) if the machine cannot."""
        ...

    def vcpu_registers(self, cpu: int) -> str:
        """A formatted register dump of one vCPU; ValueError for a vCPU that does not exist."""
        ...

    def memory_map(self) -> Sequence[tuple[int, int, str]]:
        """The guest-physical map as (first gpa, last gpa inclusive, name), for `info mtree`."""
        ...

    def read_memory(self, gpa: int, length: int) -> bytes:
        """Guest RAM bytes; GuestMemoryError outside RAM."""
        ...

    def set_trace(self, category: str, on: bool) -> None:
        """Turn a trace category ("all", "mmio", ...) on or off; ValueError for an unknown one."""
        ...

    def add_listener(self, cb: Listener) -> None:
        """Call cb(event, data) for machine events: STOP, RESUME, SHUTDOWN (RESET if it has one)."""
        ...


# --- errors -----------------------------------------------------------------------------------------


class CommandError(Exception):
    """A command that failed: QEMU's error class and a clear one-line description."""

    def __init__(self, cls: str, desc: str) -> None:
        super().__init__(desc)
        self.cls = cls
        self.desc = desc


def _no_balloon() -> CommandError:
    return CommandError("DeviceNotActive", "No balloon device has been activated")


def require_balloon(machine: MachineControl) -> BalloonControl:
    balloon = machine.balloon
    if balloon is None:
        raise _no_balloon()
    return balloon


# --- sizes ------------------------------------------------------------------------------------------

def format_size(n: int) -> str:
    """"128 MiB", "1.5 GiB", "4096 B": for people."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if abs(n) >= 1 << shift:
            v = n / (1 << shift)
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


# --- the commands -----------------------------------------------------------------------------------


def query_version() -> dict:
    return {"qemu": dict(QEMU_VERSION), "package": PACKAGE}


def query_status(machine: MachineControl) -> dict:
    status = machine.status()
    if status == "created":
        status = "prelaunch"    # QEMU's name for "built, vCPUs not started yet"
    return {"status": status, "singlestep": False, "running": status == "running"}


def stop(machine: MachineControl) -> None:
    if machine.status() == "running":
        machine.pause()


def cont(machine: MachineControl) -> None:
    status = machine.status()
    if status == "shutdown":
        raise CommandError("GenericError", "the guest has shut down; it cannot be continued")
    if status != "running":
        machine.resume()


def system_reset(machine: MachineControl) -> None:
    reset = getattr(machine, "reset", None)
    try:
        if reset is None:
            raise NotImplementedError
        reset()
    except NotImplementedError:
        raise CommandError("GenericError", "system_reset is not supported by this machine") from None


def balloon(machine: MachineControl, value: int) -> int:
    """Ask the guest to shrink or grow to value bytes (QEMU's `balloon`); returns the target set.

    Like QEMU, a target above guest RAM is clamped to RAM (the balloon empties); unlike QEMU, a target
    below BALLOON_FLOOR is refused, because obeying it only drives the guest out of memory.
    """
    dev = require_balloon(machine)
    if value <= 0:
        raise CommandError("GenericError", "Parameter 'target' expects a size")
    ram = machine.ram_size
    floor = min(BALLOON_FLOOR, ram)
    if value < floor:
        raise CommandError(
            "GenericError",
            f"balloon target {format_size(value)} is below the floor of {format_size(floor)} "
            f"(guest RAM {format_size(ram)})",
        )
    target = min(value, ram)
    try:
        dev.set_target(target)
    except (ValueError, ConfigError) as e:
        raise CommandError("GenericError", str(e)) from None
    return target


def query_balloon(machine: MachineControl) -> dict:
    # Only `actual` is wanted: skip the guest-RAM RSS measurement, which walks all of guest RAM.
    return {"actual": int(require_balloon(machine).info(rss=False).actual)}


def _stat_lookup(stats: Mapping[Any, int]) -> dict[int, int]:
    """Stats keyed by virtio tag, whatever the balloon keys them by (tag, enum, short or QEMU name)."""
    by_name = {}
    for qemu_name, tag, short in QEMU_STATS:
        by_name[qemu_name] = tag
        by_name[short] = tag
        by_name[f"virtio_balloon_s_{short}"] = tag
    out: dict[int, int] = {}
    for key, value in stats.items():
        if isinstance(key, int):      # an int tag or an IntEnum member
            out[int(key)] = int(value)
        elif isinstance(key, str) and key.lower() in by_name:
            out[by_name[key.lower()]] = int(value)
    return out


def guest_stats(machine: MachineControl) -> dict:
    """QEMU's `guest-stats` property: every stat by QEMU name, (uint64)-1 if never received."""
    dev = require_balloon(machine)
    by_tag = _stat_lookup(dev.stats or {})
    stats = {name: by_tag.get(tag, STAT_NEVER) & STAT_NEVER for name, tag, _ in QEMU_STATS}
    updated = dev.stats_updated
    return {"stats": stats, "last-update": int(updated) if updated else 0}


def _balloon_path_ok(machine: MachineControl, path: str) -> None:
    # QEMU resolves partial QOM paths too, so "balloon0" alone names the same object.
    if path not in (BALLOON_QOM_PATH, BALLOON_QOM_PATH.rsplit("/", 1)[1]) or machine.balloon is None:
        raise CommandError("DeviceNotFound", f"Device '{path}' not found")


def qom_get(machine: MachineControl, path: str, prop: str) -> Any:
    _balloon_path_ok(machine, path)
    dev = require_balloon(machine)
    if prop == "guest-stats":
        return guest_stats(machine)
    if prop == "guest-stats-polling-interval":
        return int(dev.stats_interval)
    raise CommandError("GenericError", f"Property '{BALLOON_TYPE}.{prop}' not found")


def qom_set(machine: MachineControl, path: str, prop: str, value: Any) -> None:
    _balloon_path_ok(machine, path)
    dev = require_balloon(machine)
    if prop == "guest-stats":
        raise CommandError("GenericError", f"Property '{BALLOON_TYPE}.{prop}' is not writable")
    if prop != "guest-stats-polling-interval":
        raise CommandError("GenericError", f"Property '{BALLOON_TYPE}.{prop}' not found")
    if not isinstance(value, int) or isinstance(value, bool):
        raise CommandError("GenericError", f"Invalid parameter type for '{prop}', expected: integer")
    if value < 0:
        raise CommandError("GenericError", f"{prop} must be 0 (off) or a number of seconds, not {value}")
    if value > 0xFFFF_FFFF:
        raise CommandError("GenericError", f"{prop} of {value} seconds is too big")
    dev.stats_interval = value


def balloon_details(machine: MachineControl) -> list[tuple[str, str]]:
    """Every field of BalloonInfo as (name, value) for people, sizes also in MiB/GiB."""
    info = require_balloon(machine).info()
    rows: list[tuple[str, str]] = []
    fields = dataclasses.fields(info) if dataclasses.is_dataclass(info) else ()
    for f in fields:
        value = getattr(info, f.name)
        if isinstance(value, Mapping):
            continue  # stats and counters have their own command
        if isinstance(value, int) and not isinstance(value, bool) and (
            f.name in ("ram_size", "target", "actual") or "bytes" in f.name or "rss" in f.name
        ):
            text = f"{value} ({format_size(value)})"
        elif isinstance(value, tuple):
            text = " ".join(map(str, value)) or "-"
        elif isinstance(value, float):
            text = f"{value:.3f}"
        else:
            text = str(value)
        rows.append((f.name, text))
    return rows


def balloon_counters(machine: MachineControl) -> list[tuple[str, str]]:
    """The Mapping-valued fields of BalloonInfo (e.g. counters), flattened as name.key rows."""
    info = require_balloon(machine).info()
    rows: list[tuple[str, str]] = []
    if dataclasses.is_dataclass(info):
        for f in dataclasses.fields(info):
            value = getattr(info, f.name)
            if isinstance(value, Mapping) and "stat" not in f.name:
                rows.extend((f"{f.name}.{k}", str(v)) for k, v in value.items())
    return rows


def stats_age(machine: MachineControl, now: float | None = None) -> float | None:
    updated = require_balloon(machine).stats_updated
    if updated is None:
        return None
    return max(0.0, (time.time() if now is None else now) - updated)


# --- virtio devices ---------------------------------------------------------------------------------


def _locked(t: Any) -> Any:
    lock = getattr(t, "lock", None)
    return lock if lock is not None else contextlib.nullcontext()


def describe_device(t: VirtioTransportView) -> VirtioDeviceInfo:
    """What `info virtio` prints about one transport, read under its lock."""
    from ..virtio.abi import Status, TransportFeature, VirtioDeviceID

    with _locked(t):
        try:
            device_name = "virtio-" + VirtioDeviceID(t.device.device_id).name.lower()
        except ValueError:
            device_name = f"virtio device {t.device.device_id}"
        feats = t.driver_features
        names: list[str] = []
        for flags in (t.device.feature_flags, TransportFeature):
            for member in flags:
                if member.value and feats & member.value == member.value:
                    names.append(member.name or "")
                    feats &= ~member.value
        if feats:
            names.append(f"{feats:#x}")
        status = tuple(s.name or "" for s in Status if t.status & s)
        return VirtioDeviceInfo(
            name=t.name,
            device_name=device_name,
            base_gpa=int(getattr(t, "base", 0)),
            irq=int(getattr(t, "irq_gsi", 0)),
            version=t.version,
            features=tuple(names),
            status=status,
            num_queues=len(t.queues),
        )


def describe_queue(t: VirtioTransportView, index: int) -> QueueInfo:
    """What `info virtqueue` prints about one queue; IndexError if the transport has no such queue."""
    from ..errors import GuestMemoryError

    with _locked(t):
        if not 0 <= index < len(t.queues):
            raise IndexError(f"{t.name} has no queue {index} ({len(t.queues)} queues)")
        q = t.queues[index]
        names = t.active_queue_names if t.driver_features else []
        if index >= len(names):
            names = list(getattr(t.device, "queue_names", lambda f: [])(getattr(t, "offered", 0)))
        avail_idx: int | None = None
        if q.ready:
            try:
                avail_idx = int.from_bytes(_read_guest(t, q.avail + 2, 2), "little")
            except GuestMemoryError:
                avail_idx = None
        return QueueInfo(
            index=index,
            name=names[index] if index < len(names) else f"queue{index}",
            size=q.size,
            max_size=q.max_size,
            ready=bool(q.ready),
            desc_gpa=q.desc,
            avail_gpa=q.avail,
            used_gpa=q.used,
            avail_idx=avail_idx,
            used_idx=q.next_used & 0xFFFF,
            last_avail_idx=q.last_avail & 0xFFFF,
            # Every chain the device takes is returned exactly once, so the distance between the
            # two device-side indices is what it holds (e.g. the balloon's stats buffer).
            in_flight=(q.last_avail - q.next_used) & 0xFFFF,
        )


def _read_guest(t: Any, gpa: int, length: int) -> bytes:
    return t.mem.read(gpa, length)
