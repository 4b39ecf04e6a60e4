"""QEMU's spellings on `pyvmm run`: the values of -smp, -device, -serial, -monitor, -M, -accel, -cpu and -d
parsed into what pyvmm's VmConfig means by them, and a one-line pointer for each QEMU option pyvmm lacks.

pyvmm is one machine, close to QEMU's microvm on KVM: options that choose another machine or another
accelerator, or that configure devices pyvmm does not model, are refused with what to use instead.
docs/qemu.md has the table, and where pyvmm chose differently from QEMU.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import ConfigError

_BOOL = {"on": True, "yes": True, "true": True, "1": True, "off": False, "no": False, "false": False, "0": False}

# QEMU options pyvmm does not have: what a QEMU user should do instead.
UNSUPPORTED: dict[str, str] = {
    "-drive": "pyvmm has no block devices: boot the kernel with -kernel and its root file system with -initrd",
    "-hda": "pyvmm has no disks: use -kernel and -initrd",
    "-hdb": "pyvmm has no disks: use -kernel and -initrd",
    "-cdrom": "pyvmm has no CD-ROM: use -kernel and -initrd",
    "-fda": "pyvmm has no floppy: use -kernel",
    "-boot": "pyvmm boots the kernel given with -kernel (PVH, Multiboot or bzImage); there is no boot order",
    "-bios": "pyvmm boots through its own ROM (--firmware FILE, or --no-firmware), not a PC BIOS",
    "-netdev": "pyvmm has no network devices",
    "-net": "pyvmm has no network devices",
    "-nic": "pyvmm has no network devices",
    "-vnc": "pyvmm has no graphical display: the VGA text screen is drawn on the terminal (--vga text)",
    "-spice": "pyvmm has no graphical display: the VGA text screen is drawn on the terminal (--vga text)",
    "-vga": "use --vga text or --vga none (pyvmm's VGA is a text console only)",
    "-usb": "pyvmm has no USB",
    "-usbdevice": "pyvmm has no USB",
    "-chardev": "pyvmm's console is COM1 on -serial stdio|null|file:PATH; its monitors are -monitor and -qmp",
    "-mon": "use -monitor stdio|none|unix:PATH or -qmp unix:PATH",
    "-audiodev": "pyvmm has no sound",
    "-soundhw": "pyvmm has no sound",
    "-object": "pyvmm has no QOM objects to create; guest RAM is anonymous memory (-m, -mem-prealloc)",
    "-numa": "pyvmm has one NUMA node",
    "-global": "pyvmm has no device properties to set globally: give them to -device",
    "-rtc": "pyvmm has no RTC",
    "-k": "pyvmm has no keyboard layouts: typed characters are sent as a US keyboard's scan codes",
    "-incoming": "pyvmm cannot migrate",
    "-loadvm": "pyvmm has no snapshots",
    "-snapshot": "pyvmm has no disks to snapshot",
    "-daemonize": "run pyvmm in the background with & and steer it with -qmp",
    "-L": "pyvmm loads no firmware directory: --firmware FILE",
    "-fw_cfg": "pyvmm has no fw_cfg: the kernel's command line is -append",
    "-overcommit": "pyvmm's guest RAM is always overcommitted (MAP_NORESERVE); -mem-prealloc faults it in",
    "-sandbox": "pyvmm installs no seccomp sandbox",
    "-icount": "pyvmm runs on KVM: there is no instruction counting",
    "-singlestep": "use pyvmm's gdbstub (-s) and gdb's stepi",
    "-watchdog": "pyvmm has no watchdog device",
    "-semihosting": "pyvmm has no semihosting",
    "-trace": "use --trace virtio|boot|all (pyvmm's named trace) or -d virtio",
    "-plugin": "pyvmm runs on KVM: there are no TCG plugins",
}


@dataclass(frozen=True)
class DeviceSpec:
    """One -device DRIVER[,key=value...]: the driver and its properties, as QEMU spells them."""

    driver: str
    props: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str | None:
        return self.props.get("id")


# -device drivers pyvmm has, and what to say for those QEMU users often reach for.
DEVICE_DRIVERS = ("virtio-balloon-device", "virtio-rng-device", "isa-debug-exit", "python:FILE:CLASS")
# No PCI here: the short names can mean only these.
_DEVICE_ALIASES = {"virtio-balloon": "virtio-balloon-device", "virtio-rng": "virtio-rng-device"}
_DEVICE_POINTERS = {
    "virtio-balloon-pci": "pyvmm has no PCI bus: its balloon is virtio-mmio, -device virtio-balloon-device",
    "virtio-balloon-ccw": "pyvmm has no CCW bus: its balloon is virtio-mmio, -device virtio-balloon-device",
    "virtio-rng-pci": "pyvmm has no PCI bus: its entropy device is virtio-mmio, -device virtio-rng-device",
    "virtio-rng-ccw": "pyvmm has no CCW bus: its entropy device is virtio-mmio, -device virtio-rng-device",
    "virtio-net": "pyvmm has no network devices",
    "virtio-blk": "pyvmm has no block devices: give the root file system with -initrd",
    "virtio-serial": "pyvmm's console is COM1 (-serial)",
    "virtio-gpu": "pyvmm has no graphics: the VGA text screen is --vga text",
    "e1000": "pyvmm has no network devices",
    "isa-serial": "pyvmm's one serial port, COM1, is always there (-serial)",
    "VGA": "pyvmm's VGA is a text console: --vga text",
}
BALLOON_PROPS = {
    # QEMU's virtio-balloon properties (and their defaults there), and two of pyvmm's own.
    "deflate-on-oom": "deflate_on_oom", "free-page-reporting": "free_page_reporting",
    "page-poison": "page_poison", "guest-stats-polling-interval": "stats_interval",
    "must-tell-host": "must_tell_host", "stats": "stats",
}


def parse_device(text: str) -> DeviceSpec:
    """-device DRIVER[,PROP=VALUE...] for a driver pyvmm has; ConfigError with a pointer otherwise."""
    driver, props = parse_props(text, "-device")
    if driver in ("help", "?"):
        raise ConfigError(f"-device: pyvmm's drivers are {', '.join(DEVICE_DRIVERS)} (docs/qemu.md)")
    driver = _DEVICE_ALIASES.get(driver, driver)
    if driver.startswith("python:"):
        return DeviceSpec(driver, props)        # checked by pyvmm.virtio.user when it is loaded
    if driver not in DEVICE_DRIVERS:
        family = next((k for k in _DEVICE_POINTERS if driver == k or driver.startswith(k + "-")), None)
        if family is not None:
            raise ConfigError(f"-device {driver}: {_DEVICE_POINTERS[family]}")
        raise ConfigError(f"-device {driver}: unknown driver; pyvmm has {', '.join(DEVICE_DRIVERS)}")
    if driver == "isa-debug-exit":
        for key, value in props.items():
            if key == "iobase" and _int(value, "-device isa-debug-exit,iobase") != 0xF4:
                raise ConfigError(f"-device isa-debug-exit,iobase={value}: pyvmm's debug-exit port is 0xf4 "
                                  "(iobase=0xf4,iosize=0x04)")
            if key == "iosize" and _int(value, "-device isa-debug-exit,iosize") not in (1, 2, 4):
                raise ConfigError(f"-device isa-debug-exit,iosize={value}: 1, 2 or 4")
            if key not in ("iobase", "iosize", "id"):
                raise ConfigError(f"-device isa-debug-exit: unknown property {key!r} (iobase, iosize)")
        if "iobase" not in props:
            raise ConfigError("-device isa-debug-exit: QEMU's default port is 0x501; pyvmm's is 0xf4: "
                              "give iobase=0xf4,iosize=0x04")
    return DeviceSpec(driver, props)


def rng_options(spec: DeviceSpec):
    """virtio-rng-device's properties -> RngOptions: QEMU's max-bytes and period (ms), pyvmm's seed."""
    from .virtio.rng import RngOptions

    values: dict[str, int] = {}
    names = {"seed": "seed", "max-bytes": "max_bytes", "period": "period_ms"}
    for key, value in spec.props.items():
        if key == "id":
            continue
        if key == "rng":
            raise ConfigError(f"-device virtio-rng-device,rng={value}: pyvmm has no -object rng-*; its "
                              "bytes come from os.urandom (or seed=N)")
        if key not in names:
            raise ConfigError(f"-device virtio-rng-device: unknown property {key!r} (seed, max-bytes, period)")
        values[names[key]] = _int(value, f"-device virtio-rng-device,{key}")
    if values.get("period_ms", 1) == 0:
        raise ConfigError("-device virtio-rng-device,period=0: the period is milliseconds, at least 1")
    if values.get("max_bytes", 1) == 0:
        raise ConfigError("-device virtio-rng-device,max-bytes=0: the device would never give a byte")
    return RngOptions(**values)


def virtio_devices(specs: list[DeviceSpec]) -> tuple:
    """The -device entries that are virtio devices besides the balloon, in order: RngOptions and UserDevice
    (each with a ``name`` stem and ``make()``)."""
    out = []
    for spec in specs:
        if spec.driver == "virtio-rng-device":
            out.append(rng_options(spec))
        elif spec.driver.startswith("python:"):
            from .virtio.user import parse_user_device

            out.append(parse_user_device(spec.driver, spec.props))
    return tuple(out)


def balloon_options(spec: DeviceSpec):
    """virtio-balloon-device's properties -> BalloonOptions, with QEMU's defaults: deflate-on-oom and
    free-page-reporting off, page-poison on, no stats polling; VIRTIO_BALLOON_F_MUST_TELL_HOST off (QEMU
    never offers it)."""
    from .virtio.balloon import BalloonOptions

    values: dict[str, object] = {"must_tell_host": False, "deflate_on_oom": False, "free_page_reporting": False,
                                 "page_poison": True, "stats": True, "stats_interval": 0.0}
    for key, value in spec.props.items():
        if key == "id":
            continue
        if key == "free-page-hint":
            if parse_bool(value, "-device virtio-balloon-device,free-page-hint"):
                raise ConfigError("-device virtio-balloon-device,free-page-hint=on: pyvmm does not implement "
                                  "free page hinting (a migration aid); free-page-reporting=on returns free pages")
            continue
        attr = BALLOON_PROPS.get(key)
        if attr is None:
            raise ConfigError(f"-device virtio-balloon-device: unknown property {key!r} "
                              f"({', '.join(BALLOON_PROPS)})")
        if attr == "stats_interval":
            seconds = _int(value, f"-device virtio-balloon-device,{key}")
            values[attr] = float(seconds)
        else:
            values[attr] = parse_bool(value, f"-device virtio-balloon-device,{key}")
    return BalloonOptions(**values)  # type: ignore[arg-type]


def _int(text: str, what: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise ConfigError(f"{what}={text!r} is not a number") from None
    if value < 0:
        raise ConfigError(f"{what}={text!r} must not be negative")
    return value


def parse_props(text: str, what: str) -> tuple[str, dict[str, str]]:
    """"name,key=value,flag" -> ("name", {"key": "value", "flag": "on"}); QEMU's ",," escapes a comma."""
    parts = [p.replace("\0", ",") for p in text.replace(",,", "\0").split(",")]
    head, props = parts[0].strip(), {}
    for item in parts[1:]:
        if not item:
            continue
        key, sep, value = item.partition("=")
        props[key.strip()] = value.strip() if sep else "on"
    if not head:
        raise ConfigError(f"{what} {text!r}: nothing before the first comma")
    return head, props


def parse_bool(value: str, what: str) -> bool:
    try:
        return _BOOL[value.lower()]
    except KeyError:
        raise ConfigError(f"{what}={value!r}: expected on or off") from None


def parse_smp(text: str) -> int:
    """-smp N or -smp [cpus=]N[,sockets=S][,cores=C][,threads=T][,maxcpus=M] -> the number of vCPUs."""
    if text.isdigit():
        return int(text)
    head, props = parse_props(text, "-smp")
    if head.isdigit():
        props.setdefault("cpus", head)
    elif "=" not in text.split(",")[0]:
        raise ConfigError(f"-smp {text!r}: expected N or cpus=N,sockets=S,cores=C,threads=T")
    else:
        key, _, value = head.partition("=")
        props[key] = value
    numbers = {}
    for key, value in props.items():
        if key not in ("cpus", "sockets", "cores", "threads", "maxcpus", "dies", "clusters"):
            raise ConfigError(f"-smp: unknown property {key!r} (cpus, sockets, cores, threads, maxcpus)")
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"-smp: {key}={value!r} is not a positive number")
        numbers[key] = int(value)
    product = numbers.get("sockets", 1) * numbers.get("dies", 1) * numbers.get("clusters", 1) * \
        numbers.get("cores", 1) * numbers.get("threads", 1)
    cpus = numbers.get("cpus", product)
    if {"sockets", "cores", "threads"} & numbers.keys() and product != cpus:
        raise ConfigError(f"-smp {text}: {cpus} CPUs do not match sockets*cores*threads = {product}")
    if numbers.get("maxcpus", cpus) != cpus:
        raise ConfigError(f"-smp {text}: pyvmm has no CPU hotplug, so maxcpus must equal cpus")
    return cpus


@dataclass
class Frontends:
    """What -serial, -monitor, -display, -nographic said about where the console and monitors go."""

    console: str = "stdio"                   # stdio | none | file:PATH
    monitor: bool = True                     # the Ctrl-A c monitor on the terminal
    monitor_sockets: list[str] = field(default_factory=list)   # human monitors on unix:/tcp: sockets
    display: str = "terminal"                # none: the VGA screen is not drawn on the terminal


def apply_serial(fe: Frontends, text: str) -> None:
    """-serial stdio|mon:stdio|null|none|file:PATH (COM1; pyvmm has one serial port)."""
    if text in ("stdio", "mon:stdio"):
        fe.console = "stdio"
    elif text in ("null", "none"):
        fe.console = "none"
    elif text.startswith("file:") and len(text) > 5:
        fe.console = text
    else:
        raise ConfigError(f"-serial {text!r}: pyvmm's COM1 goes to stdio, mon:stdio, null or file:PATH")


def apply_monitor(fe: Frontends, text: str) -> None:
    """-monitor stdio|none|unix:PATH[,server,nowait]|tcp:HOST:PORT[,server,nowait]."""
    if text in ("stdio", "mon:stdio"):
        fe.monitor = True
    elif text in ("none", "null"):
        fe.monitor = False
    elif text.startswith(("unix:", "tcp:")):
        from .monitor.qmp import parse_address

        parse_address(text, "-monitor")      # one-line errors now, not when the VM starts
        fe.monitor_sockets.append(text)
    else:
        raise ConfigError(f"-monitor {text!r}: use stdio, none, unix:PATH[,server,nowait] or tcp:HOST:PORT")


def apply_display(fe: Frontends, text: str) -> None:
    """-display none|default|curses: pyvmm draws its VGA text screen on the terminal, or not."""
    kind = text.split(",")[0]
    if kind == "none":
        fe.display = "none"
    elif kind in ("default", "curses", "console"):
        fe.display = "terminal"
    else:
        raise ConfigError(f"-display {text!r}: pyvmm has no windows; -display none or curses (the terminal)")


def parse_machine(text: str) -> dict[str, bool]:
    """-M / -machine microvm[,acpi=on|off,...]: pyvmm is microvm-like; returns the settings it honours."""
    head, props = parse_props(text, "-M")
    if head not in ("microvm", "pyvmm") and not head.startswith("accel="):
        raise ConfigError(f"-M {head}: pyvmm models one machine, close to QEMU's microvm; use -M microvm "
                          "or leave -M out")
    if head.startswith("accel="):
        props["accel"] = head.split("=", 1)[1]
    out: dict[str, bool] = {}
    for key, value in props.items():
        if key == "acpi":
            out["acpi"] = value != "off" and parse_bool(value if value != "auto" else "on", "-M acpi")
        elif key == "accel":
            check_accel(value)
        elif key in ("pit", "pic", "rtc", "isa-serial", "x-option-roms", "auto-kernel-cmdline", "ioapic2"):
            continue                             # microvm's device switches: pyvmm's set is fixed
        else:
            raise ConfigError(f"-M microvm: unknown property {key!r}; pyvmm honours acpi=on|off")
    return out


def check_accel(text: str) -> None:
    """-accel kvm / -enable-kvm are what pyvmm always does; any other accelerator is refused."""
    kind = text.split(",")[0]
    if kind != "kvm":
        raise ConfigError(f"-accel {kind}: pyvmm runs guests on KVM only (-accel kvm, or leave it out)")


def parse_cpu(text: str) -> bool | None:
    """-cpu host (or max): KVM's CPUID passed through; the default: pyvmm's CPUID policy. Returns the
    VmConfig's cpu_passthrough."""
    head = text.split(",")[0]
    if head in ("host", "max"):
        return True
    if head in ("auto", "default"):
        return None
    raise ConfigError(f"-cpu {head}: pyvmm gives the guest the host's CPUID (KVM's supported leaves masked "
                      "for what this host cannot emulate); -cpu host passes them through unmasked")


# -d items pyvmm has (its trace categories and the guest-error log) and QEMU's TCG items it cannot have.
DEBUG_ITEMS = {"virtio": "trace", "boot": "trace", "all": "trace", "guest_errors": "log"}
_TCG_ITEMS = {"out_asm", "in_asm", "op", "op_opt", "op_ind", "int", "exec", "cpu", "fpu", "mmu", "pcall",
              "cpu_reset", "unimp", "page", "nochain", "plugin", "strace", "tid", "invalid_mem"}


def parse_debug(text: str) -> tuple[frozenset[str], bool]:
    """-d items -> (trace categories, guest errors shown)."""
    trace: set[str] = set()
    guest = False
    for item in filter(None, (x.strip() for x in text.split(","))):
        if item.startswith("trace:"):
            pattern = item[6:]
            matched = {c for c in ("virtio", "boot") if re.fullmatch(pattern.replace("*", ".*"), c)}
            if not matched:
                raise ConfigError(f"-d {item}: pyvmm's trace categories are virtio and boot")
            trace |= matched
        elif DEBUG_ITEMS.get(item) == "trace":
            trace.add(item)
        elif item == "guest_errors":
            guest = True
        elif item in _TCG_ITEMS:
            raise ConfigError(f"-d {item}: a log item of QEMU's TCG emulator, which a KVM VMM does not have; "
                              "pyvmm logs virtio, boot and guest_errors")
        else:
            raise ConfigError(f"-d {item}: unknown log item; pyvmm logs virtio, boot and guest_errors")
    return frozenset(trace), guest


def check_unsupported(argv: Sequence[str], known: set[str], takes_value: set[str]) -> None:
    """A one-line pointer for the first QEMU option pyvmm lacks, before argparse sees it (argparse would
    read -drive as -d rive).  ``known`` are the parser's option strings, ``takes_value`` those with a value."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--":
            return
        if not arg.startswith("-") or arg.startswith("--") or arg == "-":
            continue
        name = arg.split("=", 1)[0]
        if name in known:
            skip = name in takes_value and "=" not in arg
            continue
        if name in UNSUPPORTED:
            raise ConfigError(f"{name}: {UNSUPPORTED[name]}")
        if len(name) > 2:
            raise ConfigError(f"unknown option {name} (pyvmm run --help lists the QEMU spellings it knows)")
