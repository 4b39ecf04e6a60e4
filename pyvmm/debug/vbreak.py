"""Virtio breakpoints: stop the machine at a driver's access to a virtio-mmio register or config field, or
when the device raises an interrupt or returns buffers, with the access decoded and the rings shown.

``vbreak QueueNotify inflateq``, ``vbreak Status DRIVER_OK``, ``vbreak DriverFeatures``, ``vbreak irq``,
``vbreak used inflateq``, ``vbreak config num_pages`` (the monitor's command; docs/gdb.md).  Each
breakpoint is matched in the transport's hook (pyvmm.virtio.mmio.VirtioEvent), under its lock, before
a register write takes effect: the message says what the driver did, as the trace line does, names
the spec's field, and for a QueueNotify lists the buffers the driver just made available.  A
QueueNotify that stops the machine is held: the device serves it when the machine runs again, so
the rings are seen as the driver left them.  Nothing here knows KVM.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntFlag

from ..errors import GuestMemoryError
from ..trace import format_access
from ..virtio.abi import InterruptBit, Reg, Status, TransportFeature
from ..virtio.mmio import VirtioEvent, VirtioMmio
from ..virtio.names import describe_register, device_name, interrupt_names, short_feature_name

log = logging.getLogger("pyvmm.debug")

MAX_BUFFER_BYTES = 4096        # of each new buffer, read to decode it (a balloon buffer is 1 KiB)
MAX_LISTED = 8                 # new buffers listed per notify

_ALIASES = {"HostFeatures": Reg.DeviceFeatures, "HostFeaturesSel": Reg.DeviceFeaturesSel,
            "GuestFeatures": Reg.DriverFeatures, "GuestFeaturesSel": Reg.DriverFeaturesSel,
            "QueueNum": Reg.QueueSize, "QueueNumMax": Reg.QueueSizeMax}
_REGISTERS = {r.name.lower(): r for r in Reg if r != Reg.Config} | {k.lower(): v for k, v in _ALIASES.items()}
_QUEUE_REGS = frozenset({Reg.QueueSizeMax, Reg.QueueSize, Reg.QueueReady, Reg.QueueAlign, Reg.QueuePFN,
                         Reg.QueueDescLow, Reg.QueueDescHigh, Reg.QueueDriverLow, Reg.QueueDriverHigh,
                         Reg.QueueDeviceLow, Reg.QueueDeviceHigh, Reg.QueueReset})
_FEATURE_REGS = frozenset({Reg.DeviceFeatures, Reg.DriverFeatures})
# Where the spec defines each register beyond its row in "MMIO Device Register Layout".
_SECTIONS = {Reg.Status: "Device Status Field", Reg.DeviceFeatures: "Feature Bits",
             Reg.DriverFeatures: "Feature Bits", Reg.QueueNotify: "Driver Notifications",
             Reg.InterruptStatus: "Notifications From The Device", Reg.InterruptACK: "Notifications From The Device",
             Reg.ConfigGeneration: "Device Configuration Space"}


@dataclass
class VirtioBreakpoint:
    """One virtio breakpoint as the monitor shows it in `info vbreak`."""

    number: int
    text: str                   # as `info vbreak` names it: "balloon0 QueueNotify inflateq"
    what: str                   # "register", "irq", "used", "config"
    device: str | None = None   # the transport's name, None for every device
    register: Reg | None = None
    queue: str | None = None    # a queue name or index, as given
    bits: int = 0               # flag bits the access must set (Status, InterruptStatus, a feature)
    window: int | None = None   # for a feature bit: the 32-bit feature window it lies in
    value: int | None = None    # the exact value of the access
    field: str | None = None    # config: the field name
    hits: int = 0
    last: str = ""              # the message of the last hit

    def applies_to(self, t: VirtioMmio) -> bool:
        return self.device is None or self.device == t.name


@dataclass(frozen=True)
class VirtioBreakpointHit:
    breakpoint: VirtioBreakpoint
    transport: VirtioMmio
    event: VirtioEvent
    text: str


def _queue_names(t: VirtioMmio) -> list[str]:
    names = list(t.active_queue_names) if t.driver_features else []
    offered = list(t.device.queue_names(t.offered))
    return names + offered[len(names):]


def _queue_index(t: VirtioMmio, key: str) -> int | None:
    if key.isdigit():
        return int(key)
    names = _queue_names(t)
    return names.index(key) if key in names else None


def _number(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def _flag_bits(flags: type[IntFlag], text: str) -> int | None:
    """``DRIVER_OK`` or ``ACKNOWLEDGE|DRIVER`` in flags, case-insensitive; None if a name is unknown."""
    bits = 0
    for name in text.split("|"):
        member = next((m for m in flags if (m.name or "").lower() == name.lower()), None)
        if member is None:
            return None
        bits |= int(member)
    return bits


def _feature_bit(t: VirtioMmio, text: str) -> int | None:
    """The feature bit number of VERSION_1 / VIRTIO_F_VERSION_1 / STATS_VQ / VIRTIO_BALLOON_F_STATS_VQ."""
    want = text.upper()
    for flags in (TransportFeature, t.device.feature_flags):
        for member in flags:
            name = member.name or ""
            if want in (name, short_feature_name(name)):
                return int(member).bit_length() - 1
    return None


class VirtioBreakpoints:
    """The machine's virtio breakpoints, their hooks in the transports, and their messages."""

    def __init__(self, transports: Sequence[VirtioMmio], on_hit: Callable[[VirtioBreakpointHit], bool],
                 notify_exits: Callable[[VirtioMmio, bool], str] | None = None) -> None:
        self.transports = list(transports)
        self.on_hit = on_hit              # True if the machine stopped for the hit
        self.notify_exits = notify_exits  # (transport, True): make QueueNotify exit to the vCPU; returns a note
        self.breakpoints: list[VirtioBreakpoint] = []
        self._next = 1

    # --- the monitor's commands -------------------------------------------------------------------------

    def add(self, words: list[str]) -> tuple[VirtioBreakpoint, str]:
        """Parse ``[DEVICE] REGISTER [queue|value]``, ``irq [queue|config]``, ``used [queue]`` or
        ``config [field]``; returns the breakpoint and a line for the monitor.  ValueError (one line)
        for anything it cannot match."""
        if not self.transports:
            raise ValueError("no virtio devices: there is nothing for a virtio breakpoint to watch")
        words = list(words)
        device = None
        if words and any(words[0] in (t.name, device_name(t.device.device_id)) for t in self.transports):
            t0 = next(t for t in self.transports if words[0] in (t.name, device_name(t.device.device_id)))
            device = t0.name
            words = words[1:]
        if not words or len(words) > 2:
            raise ValueError("usage: vbreak [DEVICE] REGISTER [queue|value] | irq [queue] | used [queue] | "
                             "config [field]   (e.g. vbreak QueueNotify inflateq)")
        targets = [t for t in self.transports if device is None or t.name == device]
        what, arg = words[0], (words[1] if len(words) == 2 else None)
        bp = VirtioBreakpoint(self._next, "", "register", device=device)
        if what.lower() in ("irq", "interrupt"):
            bp.what = "irq"
            if arg is not None:
                if arg.lower() in ("config", "config_change"):
                    bp.bits = int(InterruptBit.CONFIG_CHANGE)
                elif arg.lower() == "used_buffer":
                    bp.bits = int(InterruptBit.USED_BUFFER)
                else:
                    bp.queue = self._check_queue(targets, arg)
        elif what.lower() == "used":
            bp.what = "used"
            if arg is not None:
                bp.queue = self._check_queue(targets, arg)
        elif what.lower() == "config":
            bp.what = "config"
            if arg is not None:
                fields = {name for t in targets for _, _, name in t.device.config_fields()}
                if arg not in fields:
                    raise ValueError(f"no config field '{arg}' (fields: {', '.join(sorted(fields))})")
                bp.field = arg
        else:
            reg = _REGISTERS.get(what.lower())
            if reg is None:
                known = ", ".join(r.name for r in Reg if r != Reg.Config)
                raise ValueError(f"unknown virtio-mmio register '{what}' (registers: {known}; "
                                 "or irq, used, config)")
            bp.register = reg
            if arg is not None:
                self._register_arg(bp, reg, arg, targets)
        name = bp.register.name if bp.register is not None else what.lower()
        bp.text = " ".join(([device] if device else []) + [name] + ([arg] if arg is not None else []))
        self._next += 1
        self.breakpoints.append(bp)
        note = self._install()
        return bp, f"vbreak {bp.number}: {bp.text} ({self._meaning(bp)}){note}"

    def delete(self, number: int | None = None) -> int:
        """Delete breakpoint ``number`` (None: all); returns how many went; ValueError if none has it."""
        before = len(self.breakpoints)
        if number is None:
            self.breakpoints.clear()
        else:
            if not any(b.number == number for b in self.breakpoints):
                raise ValueError(f"no virtio breakpoint {number} (see info vbreak)")
            self.breakpoints = [b for b in self.breakpoints if b.number != number]
        self._install()
        return before - len(self.breakpoints)

    def describe(self) -> str:
        """`info vbreak`."""
        if not self.breakpoints:
            return "no virtio breakpoints\n"
        width = max(len(b.text) for b in self.breakpoints)
        out = [f"{'Num':<4} {'What':<{width}}  Hits  Stops at"]
        for b in self.breakpoints:
            out.append(f"{b.number:<4} {b.text:<{width}}  {b.hits:<4}  {self._meaning(b)}")
            if b.last:
                out.append("     last hit: " + b.last.splitlines()[0])
        return "\n".join(out) + "\n"

    # --- hooks -------------------------------------------------------------------------------------------

    def _install(self) -> str:
        """Hook the transports some breakpoint applies to (unhook the rest); make QueueNotify exit on the
        vCPU thread where a breakpoint wants it.  Returns a note for the monitor."""
        notes = []
        for t in self.transports:
            mine = [b for b in self.breakpoints if b.applies_to(t)]
            t.hook = self._hook if mine else None
            if self.notify_exits is not None:
                note = self.notify_exits(t, any(b.register == Reg.QueueNotify for b in mine))
                if note:
                    notes.append(note)
        return "".join(f"\n  {n}" for n in notes)

    def _hook(self, t: VirtioMmio, ev: VirtioEvent) -> bool:
        matched = [bp for bp in self.breakpoints if bp.applies_to(t) and self._matches(bp, t, ev)]
        if not matched:
            return False
        numbers = ", ".join(str(bp.number) for bp in matched)
        text = f"vbreak {numbers}: " + self._message(t, ev)
        for bp in matched:                   # as gdb, every breakpoint the access meets counts it
            bp.hits += 1
            bp.last = text
        stopped = self.on_hit(VirtioBreakpointHit(matched[0], t, ev, text))
        return stopped and ev.kind == "notify"

    def _matches(self, bp: VirtioBreakpoint, t: VirtioMmio, ev: VirtioEvent) -> bool:
        if bp.what == "used":
            return ev.kind == "used" and (bp.queue is None or _queue_index(t, bp.queue) == ev.queue)
        if bp.what == "irq":
            if ev.kind != "irq":
                return False
            if bp.bits == int(InterruptBit.CONFIG_CHANGE):
                return ev.queue == -1
            if bp.bits == int(InterruptBit.USED_BUFFER):
                return ev.queue >= 0
            return bp.queue is None or _queue_index(t, bp.queue) == ev.queue
        if bp.what == "config":
            if ev.kind not in ("config-read", "config-write"):
                return False
            if bp.field is None:
                return True
            field = t.config_field(ev.offset)
            return field is not None and field[0] == bp.field
        reg = bp.register
        assert reg is not None
        if reg == Reg.QueueNotify:
            return ev.kind == "notify" and (bp.queue is None or _queue_index(t, bp.queue) == ev.queue)
        if ev.kind != self._direction(t, reg) or ev.offset != reg:
            return False
        if bp.queue is not None:
            index = _queue_index(t, bp.queue)
            return (ev.value if reg == Reg.QueueSel else t.queue_sel) == index
        if bp.window is not None:
            sel = t.driver_features_sel if reg == Reg.DriverFeatures else t.device_features_sel
            return sel == bp.window and bool(ev.value & bp.bits)
        if bp.bits:
            if reg == Reg.Status:            # the write sets the bits (they were not all set before)
                return ev.value & bp.bits == bp.bits and t.status & bp.bits != bp.bits
            return bool(ev.value & bp.bits)
        return bp.value is None or ev.value == bp.value

    @staticmethod
    def _direction(t: VirtioMmio, reg: Reg) -> str:
        """Writes for a register the driver writes, reads for one it only reads."""
        writable = t.rules.writes[int(reg) >> 2] is not None if int(reg) >> 2 < len(t.rules.writes) else False
        return "write" if writable else "read"

    def _register_arg(self, bp: VirtioBreakpoint, reg: Reg, arg: str, targets: list[VirtioMmio]) -> None:
        if reg == Reg.QueueNotify or reg == Reg.QueueSel or reg in _QUEUE_REGS:
            bp.queue = self._check_queue(targets, arg)
            return
        if reg == Reg.Status and (bits := _flag_bits(Status, arg)) is not None:
            bp.bits = bits
            return
        if reg in (Reg.InterruptStatus, Reg.InterruptACK) and (bits := _flag_bits(InterruptBit, arg)) is not None:
            bp.bits = bits
            return
        if reg in _FEATURE_REGS:
            bit = next((b for t in targets if (b := _feature_bit(t, arg)) is not None), None)
            if bit is not None:
                bp.window, bp.bits = bit // 32, 1 << (bit % 32)
                return
        value = _number(arg)
        if value is None:
            raise ValueError(f"vbreak {reg.name}: '{arg}' is neither a number nor a name {reg.name} knows")
        bp.value = value & 0xFFFF_FFFF

    @staticmethod
    def _check_queue(targets: list[VirtioMmio], key: str) -> str:
        if key.isdigit() or any(key in _queue_names(t) for t in targets):
            return key
        names = sorted({n for t in targets for n in _queue_names(t)})
        raise ValueError(f"no queue '{key}' (queues: {', '.join(names) or 'none'})")

    def _meaning(self, bp: VirtioBreakpoint) -> str:
        if bp.what == "used":
            return f"the device returns buffers on {bp.queue or 'any queue'}"
        if bp.what == "irq":
            which = ("a config change" if bp.bits == int(InterruptBit.CONFIG_CHANGE) else
                     "used buffers" if bp.bits else f"{bp.queue}'s used buffers" if bp.queue else "any reason")
            return f"the device raises its interrupt for {which}"
        if bp.what == "config":
            return f"the driver reads or writes config field {bp.field}" if bp.field else \
                "the driver reads or writes the device configuration"
        reg = bp.register
        assert reg is not None
        if reg == Reg.QueueNotify:
            return f"the driver notifies {bp.queue or 'any queue'}"
        verb = "writes" if reg not in (Reg.MagicValue, Reg.Version, Reg.DeviceID, Reg.VendorID, Reg.DeviceFeatures,
                                       Reg.QueueSizeMax, Reg.InterruptStatus, Reg.ConfigGeneration,
                                       Reg.SHMLenLow, Reg.SHMLenHigh, Reg.SHMBaseLow, Reg.SHMBaseHigh) else "reads"
        cond = ""
        if bp.queue is not None:
            cond = f" for queue {bp.queue}"
        elif bp.window is not None:
            cond = f" with feature bit {bp.window * 32 + bp.bits.bit_length() - 1} set"
        elif bp.bits:
            flags: type[IntFlag] = Status if reg == Reg.Status else InterruptBit
            cond = f" setting {'|'.join(m.name or '' for m in flags if m & bp.bits)}"
        elif bp.value is not None:
            cond = f" = {bp.value:#x}"
        return f"the driver {verb} {reg.name}{cond}"

    # --- messages ------------------------------------------------------------------------------------------

    def _message(self, t: VirtioMmio, ev: VirtioEvent) -> str:
        """The decoded access (as the trace prints it), the spec's field, and the ring it concerns."""
        if ev.kind in ("read", "write", "notify"):
            direction = "write" if ev.kind == "notify" else ev.kind
            label, shown, meaning = describe_register(t, direction, ev.offset, ev.value, ev.note)
            lines = [format_access(t.name, direction, label, ev.value, meaning, shown=shown)]
            reg = Reg(ev.offset)
            section = _SECTIONS.get(reg)
            lines.append(f"  {reg.name}: virtio-mmio register at offset {int(reg):#05x}, spec \"MMIO Device "
                         f"Register Layout\"" + (f" and \"{section}\"" if section else ""))
            if ev.kind == "notify":
                lines += self._new_buffers(t, ev.queue)
            return "\n".join(lines)
        if ev.kind.startswith("config"):
            direction = ev.kind.split("-")[1]
            lines = [format_access(t.name, direction, t.config_label(ev.offset, ev.size), ev.value, "",
                                   shown=str(ev.value))]
            field = t.config_field(ev.offset)
            struct = device_name(t.device.device_id).replace("-", "_") + "_config"
            where = f"{field[0]}: struct {struct} at +{field[1]:#x} ({field[2]} bytes)" if field else \
                f"byte {ev.offset:#x} of struct {struct}"
            lines.append(f"  {where}, spec \"Device configuration layout\"")
            return "\n".join(lines)
        if ev.kind == "irq":
            lines = [format_access(t.name, "event", "Interrupt", ev.value, ev.note, shown=f"{ev.value:#x}")]
            lines.append(f"  InterruptStatus: virtio-mmio register at offset {int(Reg.InterruptStatus):#05x} = "
                         f"{ev.value:#x} ({interrupt_names(ev.value)}), spec \"Notifications From The Device\"; "
                         f"the interrupt line (GSI {t.irq_gsi}) is raised")
            return "\n".join(lines)
        # "used"
        name = t.queue_name(ev.queue)
        q = t.queues[ev.queue]
        snap = q.snapshot()
        lines = [format_access(t.name, "event", f"{name} used.idx", ev.value, "the device returned buffers",
                               shown=str(ev.value))]
        lines.append(f"  used ring: struct virtq_used at gpa {snap.used_gpa:#x}, idx {ev.value}, spec "
                     "\"The Virtqueue Used Ring\"")
        if snap.used_ring and snap.size:
            latest = [snap.used_ring[(ev.value - 1 - k) % snap.size] for k in range(min(4, ev.value & 0xFFFF))]
            lines.append("  latest: " + "; ".join(f"id {i} len {n}" for i, n in latest))
        return "\n".join(lines)

    def _new_buffers(self, t: VirtioMmio, index: int) -> list[str]:
        """The available buffers the device has not taken yet: what the driver just made available."""
        if not 0 <= index < len(t.queues):
            return [f"  (no queue {index})"]
        name = t.queue_name(index)
        snap = t.queues[index].snapshot()
        if not snap.ready:
            return [f"  {name} is not ready"]
        if snap.error:
            return [f"  {name}: rings unreadable ({snap.error})"]
        heads = snap.pending_heads()
        out = [f"  {name} available ring: struct virtq_avail at gpa {snap.avail_gpa:#x}, idx {snap.avail_idx}, "
               f"the device has taken {snap.last_avail & 0xFFFF}; {len(heads)} new buffer"
               f"{'s' if len(heads) != 1 else ''}, spec \"The Virtqueue Available Ring\""]
        for head in heads[:MAX_LISTED]:
            data = bytearray()
            parts = []
            for i in snap.chain(head):
                addr, length, flags, _nxt = snap.descriptors[i]
                kind = "device-writable" if flags & 2 else "device-readable"
                parts.append(f"desc[{i}] addr {addr:#x} len {length} {kind}")
                if not flags & 2 and len(data) < MAX_BUFFER_BYTES:
                    try:
                        data += t.mem.read(addr, min(length, MAX_BUFFER_BYTES - len(data)))
                    except GuestMemoryError:
                        parts.append("(outside guest RAM)")
            out.append(f"    head {head}: " + ", ".join(parts) + " (spec \"The Virtqueue Descriptor Table\")")
            describe = getattr(t.device, "describe_buffer", None)
            decoded = describe(name, bytes(data)) if describe is not None and data else ""
            if decoded:
                out.append(f"      {decoded}")
        if len(heads) > MAX_LISTED:
            out.append(f"    ... {len(heads) - MAX_LISTED} more")
        return out
