"""The monitor's commands, shared by QMP and the human monitor, and the MachineControl they steer."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .. import __version__
from ..errors import ConfigError
from ..units import format_size

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


class VirtioTransportView(Protocol):
    """What the monitor reads of a pyvmm.virtio.mmio.VirtioMmio; everything else about virtio is derived
    from these in describe_device/describe_queue."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def status(self) -> int: ...
    @property
    def driver_features(self) -> int: ...
    @property
    def offered(self) -> int: ...
    @property
    def base(self) -> int: ...
    @property
    def irq_gsi(self) -> int: ...
    @property
    def queues(self) -> Sequence[Any]: ...      # pyvmm.virtio.queue.SplitQueue: .snapshot()
    @property
    def device(self) -> Any: ...                # .device_id, .feature_flags, .queue_names()
    @property
    def lock(self) -> Any: ...
    @property
    def active_queue_names(self) -> list[str]: ...


class BalloonInfoView(Protocol):
    """The fields of the balloon's BalloonInfo the commands rely on; `info balloon` prints them all."""

    @property
    def target(self) -> int: ...           # logical guest size asked for, bytes (ram - num_pages * 4 KiB)
    @property
    def actual(self) -> int: ...           # logical guest size reached, bytes (ram - actual * 4 KiB)
    @property
    def ram_size(self) -> int: ...
    @property
    def guest_ram_rss(self) -> int | None: ...   # bytes of guest RAM resident on the host, if known


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
        from ..errors import one_line

        desc = one_line(desc)          # what it quotes of the request stays on the line
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


# pyvmm's read-only balloon properties beside QEMU's two (a QEMU balloon does not have them).
BALLOON_EXTRA_PROPS = ("target", "actual", "guest-ram-rss", "ballooned-pages", "discarded-bytes")


def qom_get(machine: MachineControl, path: str, prop: str) -> Any:
    _balloon_path_ok(machine, path)
    dev = require_balloon(machine)
    if prop == "guest-stats":
        return guest_stats(machine)
    if prop == "guest-stats-polling-interval":
        return int(dev.stats_interval)
    if prop in BALLOON_EXTRA_PROPS:
        info = dev.info(rss=prop == "guest-ram-rss")
        value = {"target": info.target, "actual": info.actual, "guest-ram-rss": info.guest_ram_rss,
                 "ballooned-pages": getattr(info, "ballooned_pages", None),
                 "discarded-bytes": getattr(info, "discarded_bytes", None)}[prop]
        if value is None:
            raise CommandError("GenericError", f"Property '{BALLOON_TYPE}.{prop}' is not available")
        return int(value)
    raise CommandError("GenericError", f"Property '{BALLOON_TYPE}.{prop}' not found")


def qom_list(machine: MachineControl, path: str) -> list[dict]:
    """QEMU's qom-list over the objects pyvmm has: /machine, its peripherals, and the balloon."""
    path = path.rstrip("/") or "/"
    devices = list(machine.virtio_devices)
    if path == "/":
        return [{"name": "machine", "type": "child<pyvmm-machine>"}, {"name": "type", "type": "string"}]
    if path == "/machine":
        return [{"name": "type", "type": "string"}, {"name": "peripheral", "type": "child<container>"},
                {"name": "unattached", "type": "child<container>"}]
    if path == "/machine/peripheral":
        return [{"name": t.name, "type": f"child<{device_type(t)}>"} for t in devices]
    if path == "/machine/unattached":
        cpus = getattr(machine, "cpus", None)
        return [{"name": f"device[{i}]", "type": "child<x86_64-cpu>"} for i in range(len(cpus()) if cpus else 1)]
    for t in devices:
        if path in (f"/machine/peripheral/{t.name}", t.name):
            props = [{"name": "type", "type": "string"}]
            if machine.balloon is not None and t.name == BALLOON_QOM_PATH.rsplit("/", 1)[1]:
                props += [{"name": "guest-stats", "type": "guest statistics"},
                          {"name": "guest-stats-polling-interval", "type": "int"}]
                props += [{"name": n, "type": "int"} for n in BALLOON_EXTRA_PROPS]
            return props
    raise CommandError("DeviceNotFound", f"Device '{path}' not found")


def device_type(t: VirtioTransportView) -> str:
    """QEMU's type name of the device behind a transport."""
    return {5: "virtio-balloon-device", 4: "virtio-rng-device"}.get(int(getattr(t.device, "device_id", 0)),
                                                                   f"virtio-device-{getattr(t.device, 'device_id', 0)}")


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
    """The balloon for people: sizes in MiB (one style everywhere), pages as counts, the stats' age."""
    dev = require_balloon(machine)
    info = dev.info()
    rows: list[tuple[str, str]] = [
        ("target", format_size(info.target)),
        ("actual", format_size(info.actual)),
        ("guest RAM", format_size(info.ram_size)),
    ]
    rss = getattr(info, "guest_ram_rss", None)
    rows.append(("host RSS of guest RAM", "unknown" if rss is None else format_size(rss)))
    for name in ("num_pages", "actual_pages", "ballooned_pages"):
        if hasattr(info, name):
            rows.append((name.replace("_", " "), str(getattr(info, name))))
    if hasattr(info, "discarded_bytes"):
        rows.append(("given back to the host", format_size(info.discarded_bytes)))
    age = stats_age(machine)
    rows.append(("stats", "never received" if age is None else f"received {age:.1f} s ago"))
    features = getattr(info, "features", ())
    if features:
        rows.append(("features", " ".join(features)))
    for name in ("bad_pfns", "duplicate_pfns", "never_inflated", "unrequested_deflate_pages", "guest_errors"):
        value = getattr(info, name, 0)
        if value:
            rows.append((name.replace("_", " "), str(value)))
    if not getattr(info, "agree", True):
        rows.append(("WARNING", "the host's ballooned pages and the driver's actual differ"))
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


MAX_PMEMSAVE = 64 * MiB    # bytes one pmemsave may write


def pmemsave(machine: MachineControl, gpa: int, size: int, filename: str) -> None:
    """QEMU's pmemsave: size bytes of guest-physical memory from gpa into filename."""
    from ..errors import GuestMemoryError

    if size < 0 or gpa < 0:
        raise CommandError("GenericError", "Invalid parameter: val and size must not be negative")
    if size > MAX_PMEMSAVE:
        raise CommandError("GenericError", f"pmemsave of {size} bytes: pyvmm saves at most {MAX_PMEMSAVE} at once")
    try:
        data = machine.read_memory(gpa, size)
    except GuestMemoryError as e:
        raise CommandError("GenericError", str(e)) from None
    try:
        with open(filename, "wb") as f:
            f.write(data)
    except OSError as e:
        raise CommandError("GenericError", f"could not open '{filename}': {e.strerror}") from None


def memsave(machine: MachineControl, gva: int, size: int, filename: str, cpu: int = 0) -> None:
    """QEMU's memsave: size bytes at a virtual address (through the vCPU's page tables) into filename."""
    from ..errors import GuestMemoryError

    if size < 0 or gva < 0:
        raise CommandError("GenericError", "Invalid parameter: val and size must not be negative")
    if size > MAX_PMEMSAVE:
        raise CommandError("GenericError", f"memsave of {size} bytes: pyvmm saves at most {MAX_PMEMSAVE} at once")
    read_virtual = getattr(machine, "read_virtual", None)
    if read_virtual is None:
        raise CommandError("GenericError", "this machine cannot read virtual addresses")
    try:
        data = read_virtual(gva, size, cpu)
    except GuestMemoryError as e:
        raise CommandError("GenericError", f"Invalid addr 0x{gva:x}/size {size} specified: {e}") from None
    except ValueError as e:
        raise CommandError("GenericError", f"Invalid parameter: {e}") from None
    try:
        with open(filename, "wb") as f:
            f.write(data)
    except OSError as e:
        raise CommandError("GenericError", f"could not open '{filename}': {e.strerror}") from None


def query_cpus_fast(machine: MachineControl) -> list[dict]:
    cpus = getattr(machine, "cpus", None)
    if cpus is None:
        return [{"cpu-index": 0, "qom-path": "/machine/unattached/device[0]", "thread-id": 0,
                 "props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, "target": "x86_64"}]
    return list(cpus())


def query_counters(machine: MachineControl) -> dict:
    """x-pyvmm-query-counters: Machine.counters() (exits, accesses, interrupts, notifications)."""
    counters = getattr(machine, "counters", None)
    if counters is None:
        raise CommandError("CommandNotFound", "this machine keeps no counters")
    return counters()


def query_name(machine: MachineControl) -> dict:
    name = getattr(getattr(machine, "config", None), "name", "")
    return {"name": name} if name else {}


# --- keyboard and screen ----------------------------------------------------------------------------

DEFAULT_HOLD_MS = 100     # QEMU's send-key hold-time default


def resolve_key(value: Any) -> str:
    """A QMP KeyValue ({"type": "qcode", "data": "a"} or {"type": "number", "data": 30}) as a key name."""
    from ..devices import keycodes

    if not isinstance(value, dict) or set(value) != {"type", "data"}:
        raise CommandError("GenericError", "Parameter 'keys' expects a list of {'type': 'qcode'|'number', "
                                           "'data': ...} objects")
    kind, data = value["type"], value["data"]
    if kind == "qcode":
        name = keycodes.lookup(data) if isinstance(data, str) else None
        if name is None:
            raise CommandError("GenericError", f"Parameter 'data' does not accept value '{data}'")
        return name
    if kind == "number":
        if not isinstance(data, int) or isinstance(data, bool):
            raise CommandError("GenericError", "Invalid parameter type for 'data', expected: integer")
        name = keycodes.key_from_number(data)
        if name is None:
            raise CommandError("GenericError", f"pyvmm's keyboard has no key with number {data:#x}")
        return name
    raise CommandError("GenericError", f"Parameter 'type' does not accept value '{kind}'")


def send_key(machine: MachineControl, keys: Sequence[str], hold_ms: int | None = None) -> None:
    """QMP send-key / HMP sendkey: press keys together, release them hold_ms (100) later."""
    sender = getattr(machine, "send_keys", None)
    if sender is None:
        raise CommandError("GenericError", "this machine has no keyboard")
    if not keys:
        raise CommandError("GenericError", "Parameter 'keys' is empty")
    hold = DEFAULT_HOLD_MS if hold_ms is None else hold_ms
    if not 0 <= hold <= 60_000:
        raise CommandError("GenericError", f"hold-time {hold} ms is out of range (0 to 60000)")
    sender(list(keys), hold)


def screendump(machine: MachineControl, filename: str, fmt: str | None = None) -> str:
    """QMP/HMP screendump: the VGA screen as PPM (QEMU's default), PNG, or text for a .txt file."""
    dump = getattr(machine, "screendump", None)
    if dump is None or getattr(machine, "vga", None) is None:
        raise CommandError("GenericError", "There is no QemuConsole I can screendump from.")
    try:
        return dump(filename, fmt)
    except ValueError as e:
        raise CommandError("GenericError", str(e)) from None
    except OSError as e:
        raise CommandError("GenericError", f"failed to open file '{filename}': {e.strerror}") from None


# --- virtio devices ---------------------------------------------------------------------------------


def describe_device(t: VirtioTransportView) -> VirtioDeviceInfo:
    """What `info virtio` prints about one transport, read under its lock."""
    from ..virtio.abi import Status
    from ..virtio.names import device_name, feature_list, flag_names

    with t.lock:
        status = flag_names(Status, t.status)
        return VirtioDeviceInfo(
            name=t.name,
            device_name=device_name(t.device.device_id),
            base_gpa=t.base,
            irq=t.irq_gsi,
            version=t.version,
            features=tuple(feature_list(t.driver_features, t.device.feature_flags)),
            status=tuple(status.split("|")) if t.status else (),
            num_queues=len(t.queues),
        )


def queue_names(t: VirtioTransportView) -> list[str]:
    """The queues' names: for the features negotiated, or (before that) for those offered."""
    names = t.active_queue_names if t.driver_features else []
    offered = list(t.device.queue_names(t.offered))
    return names + offered[len(names):] + [f"queue{i}" for i in range(len(offered), len(t.queues))]


def describe_queue(t: VirtioTransportView, index: int) -> tuple[str, Any]:
    """(name, QueueSnapshot) of one queue, read under the transport's lock; IndexError if there is none."""
    with t.lock:
        if not 0 <= index < len(t.queues):
            raise IndexError(f"{t.name} has no queue {index} ({len(t.queues)} queues)")
        return queue_names(t)[index], t.queues[index].snapshot()
