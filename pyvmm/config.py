"""The validated, frozen description of a VM, and the parsing of sizes such as "256M"."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .units import format_size, parse_size

PAGE_SIZE = 4096
_ROOT = Path(__file__).resolve().parent.parent
_DATA = Path(__file__).resolve().parent / "_data"   # where `pip install .` puts the built guest and ROM


def _bundled(source: Path, name: str) -> Path:
    """The artefact in the source tree (make build) when there is one, else the installed package's."""
    return source if source.exists() or not (_DATA / name).exists() else _DATA / name


DEFAULT_GUEST = _bundled(_ROOT / "guest" / "build" / "guest.elf", "guest.elf")
DEFAULT_FIRMWARE = _bundled(_ROOT / "firmware" / "build" / "firmware.elf", "firmware.elf")


def linux_cache() -> Path:
    """Where `make linux-guest` leaves the minimal Linux guest (outside the clone, shared by clones)."""
    base = os.environ.get("PYVMM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pyvmm")
    return Path(base) / "linux"


# The minimal Linux's command line when none is given.  On a nested kvm_pvm host the guest's CPUID
# instruction is not always intercepted, so the CPUID policy alone does not keep Linux off the
# instructions the host's emulator lacks: the kernel is told as well (docs/linux.md, "CPUID").
LINUX_DEFAULT_APPEND = "console=ttyS0"
# On a kvm_pvm host: CPUID masks the nested host cannot honour (docs/linux.md), and timekeeping on the
# jiffies clocksource, since emulated kvm-clock reads in every periodic tick can take the whole tick on a
# loaded host and stall the boot (docs/linux.md, "A loaded host and the clocksource").
LINUX_PVM_APPEND = "noxsave clearcpuid=141,308,151,298,145,137 nofsgsbase clocksource=refined-jiffies"

_BOOL = {"on": True, "yes": True, "true": True, "1": True, "off": False, "no": False, "false": False, "0": False}
_BALLOON_KEYS = {
    "must-tell-host": "must_tell_host", "stats": "stats", "stats-interval": "stats_interval",
    "deflate-on-oom": "deflate_on_oom", "free-page-reporting": "free_page_reporting", "page-poison": "page_poison",
}


def parse_balloon_options(text: str) -> Any:
    """``--balloon deflate-on-oom=on,stats-interval=2,...`` -> BalloonOptions; ConfigError names the bad
    key or value."""
    from .virtio.balloon import BalloonOptions

    values: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        attr = _BALLOON_KEYS.get(key.strip())
        if attr is None:
            raise ConfigError(f"--balloon: unknown option {key!r}; known: {', '.join(_BALLOON_KEYS)}")
        if not sep:
            raise ConfigError(f"--balloon: option {key!r} needs a value ({key}=on or {key}=off)")
        value = value.strip().lower()
        if attr == "stats_interval":
            try:
                seconds = float(value.removesuffix("s"))
            except ValueError:
                raise ConfigError(f"--balloon: stats-interval={value!r} is not a number of seconds") from None
            if not seconds >= 0 or seconds == float("inf"):
                raise ConfigError(f"--balloon: stats-interval={value!r} must be >= 0")
            values[attr] = seconds
        elif value in _BOOL:
            values[attr] = _BOOL[value]
        else:
            raise ConfigError(f"--balloon: {key}={value!r}: expected on or off")
    return BalloonOptions(**values)


def host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 1 << 40


MAX_VIRTIO_DEVICES = 3                   # GSIs 5, 6, 7: below them serial and i8042, above RTC


@dataclass(frozen=True)
class VmConfig:
    """Everything needed to build a machine; validate() gives one-line errors for bad values."""

    kernel: Path | None = None            # None: the bundled demo guest
    memory: int = 256 << 20
    smp: int = 1
    append: str = ""
    initrd: Path | None = None
    firmware: Path | None = DEFAULT_FIRMWARE   # None: enter the kernel directly (--no-firmware)
    balloon: Any = "default"             # BalloonOptions, None (off), or "default"
    devices: tuple[Any, ...] = ()        # more virtio devices after the balloon, in order: RngOptions,
                                         # UserDevice (a name stem and make()), or a VirtioDeviceBase
    virtio_version: int = 2
    trace: frozenset[str] = frozenset()
    trace_file: Path | None = None
    trace_text: bool = True              # trace lines on stderr (or -D's file); off: only --trace-file's JSON
    ioeventfd: bool = True
    irqfd: bool = False
    console: Any = "stdio"               # "stdio" (interactive when a terminal), "none" (kept only),
                                         # "capture" (the caller's sys.stdout: a notebook cell), a
                                         # callable given each piece of text, "file:PATH" (-serial file:)
    qmp: tuple[str, ...] = ()
    monitor: bool = True                 # Ctrl-A c human monitor on an interactive console
    console_log: Path | None = None      # --console-log FILE: a copy of every byte of the console
    hmp: tuple[str, ...] = ()            # human monitors on sockets (-monitor unix:PATH,server,nowait)
    display: str = "terminal"            # "none" (-display none, -nographic): the VGA screen is not drawn
    log_file: Path | None = None         # -D FILE: trace and guest-error lines go there, not to stderr
    cpu_passthrough: bool | None = None  # None: mask what this host cannot emulate (kvm_pvm), else pass
    mem_prealloc: bool = False          # fault all guest RAM in at start (QEMU's -mem-prealloc)
    virtio_cmdline: bool | None = None   # virtio_mmio.device= on the command line; None: unless the
                                         # kernel is Linux and finds the devices in ACPI (as microvm)
    acpi: bool = True                    # ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) for the guest
    start_paused: bool = False           # -S: the vCPUs wait for `cont` (QMP, monitor, gdb)
    no_reboot: bool = False              # -no-reboot: a guest's reset request ends the VM instead
    no_shutdown: bool = False            # -no-shutdown: a guest's power-off stops it instead of ending it
    name: str = ""                       # -name: shown by the monitor and query-name
    vga: str | None = None               # "text" or "none"; None: text for Multiboot kernels, else none
    gdb: str | None = None               # -gdb tcp:[HOST]:PORT (-s: tcp::1234): the gdbstub listens there

    def __post_init__(self) -> None:
        # The Python API takes what people type: paths as str or Path, sizes as bytes or "256M" (MiB by
        # default, as -m), trace categories and QMP addresses as one string or several.
        for name in ("kernel", "initrd", "firmware", "trace_file", "log_file", "console_log"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
        if isinstance(self.memory, str):
            object.__setattr__(self, "memory", parse_size(self.memory, what="memory size (-m)"))
        if isinstance(self.trace, str):
            object.__setattr__(self, "trace", frozenset(t.strip() for t in self.trace.split(",") if t.strip()))
        elif not isinstance(self.trace, frozenset):
            object.__setattr__(self, "trace", frozenset(self.trace))
        for name in ("qmp", "hmp"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, (getattr(self, name),))

    def validate(self, max_vcpus: int | None = None) -> VmConfig:
        if self.memory <= 0:
            raise ConfigError("memory size (-m) must be greater than zero")
        if self.memory % PAGE_SIZE:
            raise ConfigError(f"memory size (-m) {self.memory} is not a multiple of the 4 KiB page size")
        if self.memory < 2 << 20:
            raise ConfigError("memory size (-m) must be at least 2M")
        if self.memory > host_memory():
            raise ConfigError(f"memory size (-m) {format_size(self.memory)} is more than this host has "
                              f"({format_size(host_memory())})")
        if self.smp < 1:
            raise ConfigError("--smp must be at least 1")
        if self.smp > MAX_SMP:
            raise ConfigError(f"--smp {self.smp}: at most {MAX_SMP} vCPUs (xAPIC ids)")
        if max_vcpus is not None and self.smp > max_vcpus:
            raise ConfigError(f"--smp {self.smp} is more than this host's KVM allows ({max_vcpus})")
        if self.virtio_version not in (1, 2):
            raise ConfigError("--virtio-version must be 1 (legacy) or 2 (modern)")
        count = len(self.devices) + (self.balloon is not None)
        if count > MAX_VIRTIO_DEVICES:
            raise ConfigError(f"-device: {count} virtio devices; at most {MAX_VIRTIO_DEVICES} (one interrupt line "
                              "each, GSI 5-7)")
        if callable(self.console):
            pass
        elif not isinstance(self.console, str) or (
                self.console not in ("stdio", "none", "capture")
                and not (self.console.startswith("file:") and len(self.console) > 5)):
            raise ConfigError(f"console {self.console!r}: choose stdio, none, capture, file:PATH or a callable "
                              "that takes the guest's text")
        if self.display not in ("terminal", "none"):
            raise ConfigError(f"display {self.display!r}: choose terminal or none")
        if self.vga not in (None, "none", "text"):
            raise ConfigError(f"--vga {self.vga}: choose none or text (pyvmm has no VGA graphics modes)")
        if self.gdb is not None:
            from .debug.gdbstub import parse_gdb_address

            parse_gdb_address(self.gdb)
        unknown = set(self.trace) - TRACE_CATEGORIES
        if unknown:
            raise ConfigError(f"unknown trace category {sorted(unknown)[0]!r} "
                              f"(choose from {', '.join(sorted(TRACE_CATEGORIES))})")
        return self

    @property
    def kernel_path(self) -> Path:
        return self.kernel if self.kernel is not None else DEFAULT_GUEST


TRACE_CATEGORIES = frozenset({"virtio", "boot", "all"})
MAX_SMP = 254          # xAPIC ids in the MADT (255 is the broadcast id)
