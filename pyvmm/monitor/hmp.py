"""The human monitor: text commands for people, and the Ctrl-A console multiplexer that reaches them."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from ..errors import GuestMemoryError, PyvmmError
from ..units import parse_size
from . import commands as C
from .commands import CommandError, MachineControl
from .lineedit import LineEditor

log = logging.getLogger("pyvmm.monitor")

MAX_DUMP = 64 * 1024          # bytes one x/ command may show
MAX_TABLE_ROWS = 32           # descriptor/ring entries `info virtqueue` lists before eliding

HELP = [
    ("help [command]", "show this help, or one command's"),
    ("info balloon", "balloon: target, actual, host RSS of guest RAM, stats and their age"),
    ("info stats", "guest memory statistics from the balloon, and device counters"),
    ("info status", "whether the VM runs"),
    ("info version", "the QEMU version pyvmm answers as, and pyvmm's"),
    ("info name", "the VM's name (-name)"),
    ("info cpus", "the vCPUs: index, host thread, the current one marked *"),
    ("info virtio", "virtio devices: transport, features negotiated, status, queues"),
    ("info virtqueue [<dev>] <queue> [--svg|--png FILE]",
     "one virtqueue: rings, indices, descriptors in flight (a picture of them to FILE)"),
    ("info registers [cpu]", "a vCPU's registers"),
    ("info pic", "the 8259A pair and the IOAPIC (KVM's in-kernel irqchip)"),
    ("info lapic [cpu]", "a vCPU's local APIC: LVT entries, timer, ISR/IRR"),
    ("info irq", "interrupts raised per line, by device"),
    ("info mtree", "the guest-physical memory map"),
    ("info qtree", "the devices, their buses and properties"),
    ("info tlb", "the vCPU's page tables: virtual -> physical runs and their rights"),
    ("info vbreak", "virtio breakpoints: what each stops at, hits, the last hit"),
    ("balloon <size>", "set the guest's target size (MiB, or 64M, 1G)"),
    ("x/<n><fmt><size> <addr>", "dump memory at a virtual address: fmt x d u o c i, size b h w g; $pc, $rsp+8"),
    ("xp/<n><fmt><size> <addr>", "the same at a guest-physical address (RAM and the boot ROM)"),
    ("gva2gpa <addr>", "the guest-physical address a virtual address maps to"),
    ("pmemsave <addr> <size> <file>", "save guest-physical memory to a file"),
    ("memsave <addr> <size> <file>", "save memory at a virtual address to a file"),
    ("sendkey <keys> [hold_ms]", "press keys together on the PS/2 keyboard: a, ctrl-alt-delete, 0x1e"),
    ("screendump <file> [-f ppm|png]", "save the VGA screen: PPM (default), PNG, or text for a .txt file"),
    ("vbreak [dev] <reg> [queue|value]", "stop when the driver accesses a virtio-mmio register "
     "(vbreak QueueNotify inflateq, vbreak Status DRIVER_OK); also vbreak irq|used [queue], vbreak config [field]"),
    ("vdelete <n>|all", "delete a virtio breakpoint"),
    ("stop", "pause the vCPUs"),
    ("cont | c", "resume the vCPUs"),
    ("system_reset", "reset the machine: vCPUs and devices, then boot again through the firmware"),
    ("trace on|off [category]", "switch register-level tracing (default category: all)"),
    ("quit | q", "stop the VM and exit"),
]


def _err(text: str) -> str:
    return f"Error: {text}\n"


def run_hmp(machine: MachineControl, line: str, cpu: int = 0) -> str:
    """Run one human-monitor command line; returns its output ("" when there is none), never raises.

    An unexpected exception (a pyvmm bug) is logged with its traceback and answered with one
    "internal error: ..." line.
    """
    words = line.split()
    if not words:
        return ""
    cmd, args = words[0], words[1:]
    try:
        if cmd.startswith(("x/", "xp/")) or cmd in ("x", "xp"):
            return _memory_dump(machine, cmd, args, cpu)
        name = resolve_prefix(cmd, _COMMANDS)
        if name is None:
            return f"unknown command: '{cmd}'\n"
        return _COMMANDS[name](machine, args, cpu)
    except CommandError as e:
        return _err(e.desc)
    except PyvmmError as e:
        return _err(str(e))
    except (ValueError, IndexError, NotImplementedError) as e:
        return _err(str(e) or type(e).__name__)
    except Exception as e:  # noqa: BLE001 - a bug in one command must not take the console with it
        # The caller may be the console's stdin thread: an exception there would end Ctrl-A handling
        # and leave the terminal raw.  The traceback goes to the log; the user gets one line.
        log.exception("monitor command %r failed", line)
        return f"internal error: {type(e).__name__}: {e}\n"


# Commands that end or reset the VM run only when typed in full: a prefix is a typo's distance away.
_NO_PREFIX = frozenset({"quit", "system_reset"})


def resolve_prefix(word: str, table: dict) -> str | None:
    """The name in ``table`` that ``word`` is, or the one it is a unique prefix of (`info bal`)."""
    if word in table:
        return word
    matches = [n for n in table if n.startswith(word) and n not in _NO_PREFIX]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise CommandError("GenericError", f"'{word}' is ambiguous: {', '.join(sorted(matches))}")
    return None


def complete_hmp(machine: MachineControl, text: str) -> list[str]:
    """Tab completion: the command names, `info` sub-commands, or device names that finish the last
    word of ``text``."""
    words = text.split(" ")
    word = words[-1]
    before = [w for w in words[:-1] if w]
    if not before:
        return [n for n in _COMMANDS if n.startswith(word) and len(n) > 1] + \
            (["x/", "xp/"] if "x".startswith(word) else [])
    cmd = before[0]
    if cmd == "info" and len(before) == 1:
        return [n for n in _INFO if n.startswith(word)]
    if cmd == "help" and len(before) == 1:
        return [n for n in _COMMANDS if n.startswith(word) and len(n) > 1]
    if cmd == "info" and len(before) == 2 and before[1] == "virtqueue":
        return [t.name for t in machine.virtio_devices if t.name.startswith(word)]
    if cmd == "trace" and len(before) == 1:
        return [n for n in ("on", "off") if n.startswith(word)]
    return []


# --- commands ---------------------------------------------------------------------------------------


def _help(machine: MachineControl, args: list[str], cpu: int) -> str:
    width = max(len(u) for u, _ in HELP)
    rows = HELP
    if args:
        rows = [(u, d) for u, d in HELP if u.split()[0].split("/")[0] == args[0].split("/")[0]
                or (args[0] in ("c", "q") and args[0] in u.split())]
        if not rows:
            return f"unknown command: '{args[0]}'\n"
    return "".join(f"{u:<{width}} -- {d}\n" for u, d in rows)


def _info(machine: MachineControl, args: list[str], cpu: int) -> str:
    if not args:
        return "".join(f"{u:<30} -- {d}\n" for u, d in HELP if u.startswith("info "))
    sub, rest = args[0], args[1:]
    name = resolve_prefix(sub, _INFO)
    if name is None:
        return f"unknown info subcommand: '{sub}' (try 'info' alone)\n"
    return _INFO[name](machine, rest, cpu)


def _info_balloon(machine: MachineControl, args: list[str], cpu: int) -> str:
    actual = C.query_balloon(machine)["actual"]
    out = [f"balloon: actual={actual >> 20}"]   # QEMU's exact first line, for scripts that parse it
    rows = C.balloon_details(machine)
    width = max((len(n) for n, _ in rows), default=0)
    out += [f"  {n:<{width}}  {v}" for n, v in rows]
    return "\n".join(out) + "\n"


def _info_stats(machine: MachineControl, args: list[str], cpu: int) -> str:
    gs = C.guest_stats(machine)
    dev = C.require_balloon(machine)
    age = C.stats_age(machine)
    interval = int(dev.stats_interval)
    when = "never received" if age is None else f"last update {age:.1f} s ago"
    poll = f"polling every {interval} s" if interval else "polling off"
    out = [f"guest stats ({when}, {poll}):"]
    for name, value in gs["stats"].items():
        if value == C.STAT_NEVER:
            text = "-"
        elif name.endswith(("memory", "swap-in", "swap-out", "caches")):
            text = f"{value} ({C.format_size(value)})"
        else:
            text = str(value)
        out.append(f"  {name:<22} {text}")
    counters = C.balloon_counters(machine)
    if counters:
        out.append("device counters:")
        width = max(len(n) for n, _ in counters)
        out += [f"  {n:<{width}}  {v}" for n, v in counters]
    return "\n".join(out) + "\n"


def _info_status(machine: MachineControl, args: list[str], cpu: int) -> str:
    status = machine.status()
    text = {"created": "paused (prelaunch)", "shutdown": "paused (shutdown)", "debug": "paused (debug)"}.get(
        status, status)
    return f"VM status: {text}\n"


def _need(machine: MachineControl, name: str) -> Any:
    method = getattr(machine, name, None)
    if method is None:
        raise CommandError("GenericError", f"this machine has no {name.replace('_', ' ')}")
    return method


def _cpu_arg(args: list[str], cpu: int) -> int:
    if args:
        if not args[0].isdigit():
            raise CommandError("GenericError", f"cpu index must be a number, not '{args[0]}'")
        return int(args[0])
    return cpu


def _info_version(machine: MachineControl, args: list[str], cpu: int) -> str:
    v = C.query_version()
    q = v["qemu"]
    return f"{q['major']}.{q['minor']}.{q['micro']} ({v['package']})\n"


def _info_name(machine: MachineControl, args: list[str], cpu: int) -> str:
    name = C.query_name(machine).get("name")
    return f"{name}\n" if name else ""


def _info_cpus(machine: MachineControl, args: list[str], cpu: int) -> str:
    state = getattr(machine, "vcpu_state", None)
    out = []
    for c in C.query_cpus_fast(machine):
        i = c["cpu-index"]
        note = f" ({state(i)})" if state is not None else ""
        out.append(f"{'*' if i == cpu else ' '} CPU #{i}: thread_id={c['thread-id']}{note}\n")
    return "".join(out)


def _info_pic(machine: MachineControl, args: list[str], cpu: int) -> str:
    return _need(machine, "pic_text")()


def _info_lapic(machine: MachineControl, args: list[str], cpu: int) -> str:
    try:
        return _need(machine, "lapic_text")(_cpu_arg(args, cpu))
    except ValueError as e:
        raise CommandError("GenericError", str(e)) from None


def _info_irq(machine: MachineControl, args: list[str], cpu: int) -> str:
    rows = _need(machine, "irq_counts")()
    out = ["IRQ statistics (interrupts raised by pyvmm's devices; the guest's own IPIs and timers are KVM's):"]
    out += [f"{gsi:>3}: {count:>10}  {name}" for gsi, name, count in rows]
    return "\n".join(out) + "\n"


def _info_qtree(machine: MachineControl, args: list[str], cpu: int) -> str:
    return _need(machine, "device_tree")()


def _info_tlb(machine: MachineControl, args: list[str], cpu: int) -> str:
    cpu = _cpu_arg(args, cpu)
    mode = _need(machine, "paging_mode")(cpu)
    if mode == "off":
        return f"CPU #{cpu}: paging is off (CR0.PG clear): virtual addresses are physical\n"
    maps = _need(machine, "page_mappings")(cpu)
    out = [f"CPU #{cpu}: {mode} paging; rights X(executable) G(global) D(dirty) A(accessed) "
           "C(cache disabled) T(write-through) U(user) W(writable)",
           f"{'virtual':<33}  {'physical':<16}  {'pages':>12}  rights"]
    for m in maps[:4096]:
        unit = {4096: "4K", 2 << 20: "2M", 4 << 20: "4M", 1 << 30: "1G"}.get(m.page_size, str(m.page_size))
        out.append(f"{m.va:016x}-{m.va + m.size - 1:016x}  {m.pa:016x}  {m.count:>8} x {unit:<2}  {m.rights()}")
    if len(maps) > 4096:
        out.append(f"... {len(maps) - 4096} more runs")
    if not maps:
        out.append("(no page is present)")
    return "\n".join(out) + "\n"


def _gva2gpa(machine: MachineControl, args: list[str], cpu: int) -> str:
    if len(args) != 1:
        raise CommandError("GenericError", "usage: gva2gpa <addr>")
    gva = _parse_addr(machine, args[0], cpu)
    gpa = _need(machine, "translate")(gva, cpu)
    if gpa is None:
        raise CommandError("GenericError", "Unmapped")
    return f"gpa: {gpa:#x}\n"


def _save(machine: MachineControl, args: list[str], cpu: int, *, virtual: bool) -> str:
    name = "memsave" if virtual else "pmemsave"
    if len(args) != 3:
        raise CommandError("GenericError", f"usage: {name} <addr> <size> <file>")
    addr = _parse_addr(machine, args[0], cpu)
    size = _parse_gpa(args[1])
    if virtual:
        C.memsave(machine, addr, size, args[2], cpu)
    else:
        C.pmemsave(machine, addr, size, args[2])
    return ""


def _info_virtio(machine: MachineControl, args: list[str], cpu: int) -> str:
    transports = list(machine.virtio_devices)
    if not transports:
        return "no virtio devices\n"
    out = []
    for t in transports:
        d = C.describe_device(t)
        out.append(f"{d.name}: {d.device_name} at {d.base_gpa:#x} irq {d.irq}, virtio-mmio version {d.version}")
        out.append(f"  status:   {'|'.join(d.status) or '0 (reset)'}")
        out.append(f"  features: {' '.join(d.features) or '(none negotiated)'}")
        queues = []
        for i in range(d.num_queues):
            name, q = C.describe_queue(t, i)
            queues.append(f"{q.index} {name} (size {q.size}, {'ready' if q.ready else 'not ready'})")
        out.append(f"  queues:   {', '.join(queues) or '(none)'}")
    return "\n".join(out) + "\n"


def _find_device(machine: MachineControl, key: str) -> C.VirtioTransportView:
    transports = list(machine.virtio_devices)
    for t in transports:
        if key == t.name or key == C.describe_device(t).device_name:
            return t
    if key.isdigit() and int(key) < len(transports):
        return transports[int(key)]
    names = ", ".join(t.name for t in transports) or "none"
    raise CommandError("GenericError", f"no virtio device '{key}' (devices: {names})")


_DESC_FLAGS = ((1, "NEXT"), (2, "WRITE"), (4, "INDIRECT"))


def _flags(value: int) -> str:
    names = [n for bit, n in _DESC_FLAGS if value & bit]
    rest = value & ~7
    if rest:
        names.append(f"{rest:#x}")
    return "|".join(names) or "-"


def _find_queue(machine: MachineControl, dev_key: str, queue_key: str) -> tuple[str, str, Any]:
    """(device name, queue name, QueueSnapshot) for `info virtqueue <dev> <queue>`."""
    t = _find_device(machine, dev_key)
    names = C.queue_names(t)
    for i in range(len(t.queues)):
        if queue_key in (str(i), names[i]):
            return t.name, names[i], C.describe_queue(t, i)[1]
    raise CommandError("GenericError", f"{t.name} has no queue '{queue_key}' ({len(t.queues)} queues)")


_VQ_USAGE = ("usage: info virtqueue [<dev>] <queue> [--svg FILE]  (e.g. info virtqueue balloon0 0, "
             "info virtqueue inflateq --svg q.svg)")


def _find_queue_anywhere(machine: MachineControl, queue_key: str) -> tuple[str, str, Any]:
    """`info virtqueue <queue>`: the one device that has a queue of that name."""
    found = [t for t in machine.virtio_devices if queue_key in C.queue_names(t)]
    if len(found) == 1:
        return _find_queue(machine, found[0].name, queue_key)
    if not found:
        raise CommandError("GenericError", f"no virtio device has a queue '{queue_key}'; {_VQ_USAGE}")
    raise CommandError("GenericError", f"queue '{queue_key}' is on {', '.join(t.name for t in found)}: "
                       "name the device (info virtqueue <dev> <queue>)")


def _info_virtqueue(machine: MachineControl, args: list[str], cpu: int) -> str:
    picture = None
    for opt in ("--svg", "--png"):
        if opt in args:
            i = args.index(opt)
            if i + 1 >= len(args):
                raise CommandError("GenericError", f"{opt} needs a file name; {_VQ_USAGE}")
            picture = args[i + 1]
            if not picture.lower().endswith("." + opt[2:]):
                picture += "." + opt[2:]
            args = args[:i] + args[i + 2:]
    if len(args) == 1:
        dev, name, q = _find_queue_anywhere(machine, args[0])
    elif len(args) == 2:
        dev, name, q = _find_queue(machine, args[0], args[1])
    else:
        raise CommandError("GenericError", _VQ_USAGE)
    if picture is not None:
        from ..errors import PyvmmError
        from ..plot import plot_virtqueue

        try:
            plot_virtqueue(q, picture, device=dev, name=name)
        except PyvmmError as e:
            raise CommandError("GenericError", str(e)) from None
        return f"{dev} queue {q.index} ({name}): picture written to {picture}\n"
    out = [f"{dev} queue {q.index} ({name}): size {q.size} (max {q.max_size}), {'ready' if q.ready else 'not ready'}"]
    out.append(f"  desc table {q.desc_gpa:#x}  avail ring {q.avail_gpa:#x}  used ring {q.used_gpa:#x}")
    if not q.ready or q.size == 0:
        out.append("  (not set up by the driver)")
        return "\n".join(out) + "\n"
    avail = "unreadable" if q.avail_idx is None else str(q.avail_idx)
    out.append(f"  avail.idx {avail}  used.idx {q.next_used & 0xFFFF}  last_avail {q.last_avail & 0xFFFF}  "
               f"pending {q.pending}  in flight {q.in_flight}")
    if q.error:
        out.append(f"  rings: cannot read ({q.error})")
        return "\n".join(out) + "\n"
    heads = set(q.in_flight_heads())
    if heads:
        out.append(f"  in flight, head descriptors: {' '.join(map(str, sorted(heads)))}")
    listed = 0
    out.append("  descriptor table (entries with an address or length):")
    for i, (addr, length, flags, nxt) in enumerate(q.descriptors):
        if not (addr or length) and i not in heads:
            continue  # unused; drivers pre-link free descriptors through `next`, so ignore it
        if listed == MAX_TABLE_ROWS:
            out.append("    ...")
            break
        listed += 1
        chain = f" next {nxt}" if flags & 1 else ""
        mark = "  <- in flight" if i in heads else ""
        out.append(f"    [{i:4}] addr {addr:#018x} len {length:6} {_flags(flags)}{chain}{mark}")
    if not listed:
        out.append("    (all zero)")
    entries = q.pending_heads()[:MAX_TABLE_ROWS]
    out.append(f"  avail ring, not yet taken: {' '.join(map(str, entries)) or '(none)'}")
    last = [f"id {uid} len {ulen}" for uid, ulen in
            (q.used_ring[(q.next_used - 1 - k) % q.size] for k in range(min(4, q.next_used & 0xFFFF)))]
    out.append(f"  used ring, latest first: {'; '.join(last) or '(none)'}")
    return "\n".join(out) + "\n"


def _info_registers(machine: MachineControl, args: list[str], cpu: int) -> str:
    if args:
        if not args[0].isdigit():
            raise CommandError("GenericError", f"cpu index must be a number, not '{args[0]}'")
        cpu = int(args[0])
    try:
        text = machine.vcpu_registers(cpu)
    except IndexError:
        raise CommandError("GenericError", f"no vCPU {cpu}") from None
    return text if text.endswith("\n") else text + "\n"


def _debugger(machine: MachineControl) -> Any:
    debugger = getattr(machine, "debugger", None)
    if debugger is None:
        raise CommandError("GenericError", "this machine has no debugger (virtio breakpoints need a pyvmm Machine)")
    return debugger


def _vbreak(machine: MachineControl, args: list[str], cpu: int) -> str:
    if not args:
        return _debugger(machine).vbreaks.describe()
    _, line = _debugger(machine).vbreaks.add(args)
    return line + "\n"


def _vdelete(machine: MachineControl, args: list[str], cpu: int) -> str:
    if len(args) != 1 or not (args[0].isdigit() or args[0] == "all"):
        raise CommandError("GenericError", "usage: vdelete <n>|all  (numbers as `info vbreak` lists them)")
    n = _debugger(machine).vbreaks.delete(None if args[0] == "all" else int(args[0]))
    return f"{n} virtio breakpoint{'s' if n != 1 else ''} deleted\n"


def _info_vbreak(machine: MachineControl, args: list[str], cpu: int) -> str:
    return _debugger(machine).vbreaks.describe()


def _info_mtree(machine: MachineControl, args: list[str], cpu: int) -> str:
    out = ["address-space: guest-physical"]
    for first, last, name in sorted(machine.memory_map()):
        out.append(f"  {first:016x}-{last:016x}: {name}")
    return "\n".join(out) + "\n"


def _balloon(machine: MachineControl, args: list[str], cpu: int) -> str:
    if len(args) != 1:
        raise CommandError("GenericError", "usage: balloon <size>  (MiB, or with a suffix: 64M, 1G)")
    value = parse_size(args[0], what="balloon size")
    target = C.balloon(machine, value)
    if target != value:
        return f"balloon: target clamped to guest RAM ({C.format_size(target)})\n"
    return ""


def _sendkey(machine: MachineControl, args: list[str], cpu: int) -> str:
    from ..devices import keycodes

    if not 1 <= len(args) <= 2:
        raise CommandError("GenericError", "usage: sendkey <keys> [hold_ms]  (keys joined by '-': ctrl-alt-f1)")
    names = []
    for part in args[0].split("-"):
        name = keycodes.lookup(part)
        if name is None and part.lower().startswith("0x"):
            try:
                name = keycodes.key_from_number(int(part, 16))
            except ValueError:
                name = None
        if name is None:
            raise CommandError("GenericError", f"invalid parameter: {part}")
        names.append(name)
    hold = None
    if len(args) == 2:
        try:
            hold = int(args[1])
        except ValueError:
            raise CommandError("GenericError", f"hold_ms '{args[1]}' is not a number of milliseconds") from None
    C.send_key(machine, names, hold)
    return ""


def _screendump(machine: MachineControl, args: list[str], cpu: int) -> str:
    fmt = None
    rest = []
    it = iter(args)
    for a in it:
        if a == "-f":
            fmt = next(it, None)
            if fmt is None:
                raise CommandError("GenericError", "usage: screendump <file> [-f ppm|png]")
        else:
            rest.append(a)
    if len(rest) != 1:
        raise CommandError("GenericError", "usage: screendump <file> [-f ppm|png]  (a .txt file gets the text)")
    C.screendump(machine, rest[0], fmt)
    return ""


def _stop(machine: MachineControl, args: list[str], cpu: int) -> str:
    C.stop(machine)
    return ""


def _cont(machine: MachineControl, args: list[str], cpu: int) -> str:
    C.cont(machine)
    return ""


def _reset(machine: MachineControl, args: list[str], cpu: int) -> str:
    C.system_reset(machine)
    return ""


def _quit(machine: MachineControl, args: list[str], cpu: int) -> str:
    machine.quit()
    return ""


def _trace(machine: MachineControl, args: list[str], cpu: int) -> str:
    if not args or args[0] not in ("on", "off") or len(args) > 2:
        raise CommandError("GenericError", "usage: trace on|off [category]")
    category = args[1] if len(args) == 2 else "all"
    machine.set_trace(category, args[0] == "on")
    return f"trace {category}: {args[0]}\n"


_INFO: dict[str, Callable[[MachineControl, list[str], int], str]] = {
    "balloon": _info_balloon,
    "stats": _info_stats,
    "status": _info_status,
    "version": _info_version,
    "name": _info_name,
    "cpus": _info_cpus,
    "virtio": _info_virtio,
    "virtqueue": _info_virtqueue,
    "registers": _info_registers,
    "pic": _info_pic,
    "lapic": _info_lapic,
    "irq": _info_irq,
    "mtree": _info_mtree,
    "qtree": _info_qtree,
    "tlb": _info_tlb,
    "vbreak": _info_vbreak,
}

_COMMANDS: dict[str, Callable[[MachineControl, list[str], int], str]] = {
    "help": _help,
    "?": _help,
    "info": _info,
    "balloon": _balloon,
    "sendkey": _sendkey,
    "screendump": _screendump,
    "stop": _stop,
    "cont": _cont,
    "c": _cont,
    "system_reset": _reset,
    "gva2gpa": _gva2gpa,
    "pmemsave": lambda m, a, c: _save(m, a, c, virtual=False),
    "memsave": lambda m, a, c: _save(m, a, c, virtual=True),
    "quit": _quit,
    "q": _quit,
    "trace": _trace,
    "vbreak": _vbreak,
    "vdelete": _vdelete,
}


# --- x/<n><fmt><size> ---------------------------------------------------------------------------------

_SIZES = {"b": 1, "h": 2, "w": 4, "g": 8}
_FMT_RE = re.compile(r"^(\d*)([xduocibhwg]*)$")


def _parse_gpa(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise CommandError("GenericError", f"invalid address '{text}' (use 0x1000 or 4096)") from None
    if value < 0:
        raise CommandError("GenericError", f"invalid address '{text}'")
    return value


_TERM_RE = re.compile(r"\s*([+-]?)\s*(\$\w+|0[xX][0-9a-fA-F]+|\d+)\s*")


def _parse_addr(machine: MachineControl, text: str, cpu: int) -> int:
    """An address as the monitor takes it: a number, a register ($pc, $rip, $rsp...), and sums of
    them ("$rsp+8", "0x1000+$rax")."""
    if "$" not in text:
        return _parse_gpa(text)
    regs: dict[str, int] | None = None
    total, pos = 0, 0
    while pos < len(text):
        m = _TERM_RE.match(text, pos)
        if not m or (pos and not m.group(1)):
            raise CommandError("GenericError", f"invalid address '{text}' (a number, $reg, or sums: $rsp+8)")
        sign, term = m.groups()
        if term.startswith("$"):
            if regs is None:
                regs = _need(machine, "register_values")(cpu)
            name = term[1:].lower()
            if name not in regs:
                raise CommandError("GenericError", f"unknown register '{term}' ({', '.join('$' + r for r in regs)})")
            value = regs[name]
        else:
            value = int(term, 0)
        total += -value if sign == "-" else value
        pos = m.end()
    return total & 0xFFFF_FFFF_FFFF_FFFF


def _printc(v: int) -> str:
    # QEMU's monitor_printc spelling.
    special = {ord("'"): "\\'", ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r"}
    if v in special:
        return f"'{special[v]}'"
    return f"'{chr(v)}'" if 32 <= v <= 126 else f"'\\x{v:02x}'"


def _memory_dump(machine: MachineControl, cmd: str, args: list[str], cpu: int = 0) -> str:
    """QEMU's x/xp output (monitor/hmp-cmds memory_dump): x reads virtual addresses through the
    vCPU's page tables, xp guest-physical ones; both read RAM and the boot ROM."""
    virtual = not cmd.startswith("xp")
    spec = cmd.split("/", 1)[1] if "/" in cmd else ""
    m = _FMT_RE.match(spec)
    if not m or len(args) != 1:
        raise CommandError("GenericError", f"usage: {'x' if virtual else 'xp'}/<count><format><size> <addr>  "
                           "e.g. x/16xb 0x1000, x/4i $pc")
    count = int(m.group(1) or 1)
    fmt, size = "x", 4
    for ch in m.group(2):
        if ch in _SIZES:
            size = _SIZES[ch]
        else:
            fmt = ch
    if fmt in ("c", "i"):
        size = 1
    gpa = _parse_addr(machine, args[0], cpu)
    note = ""
    read: Callable[[int, int], bytes] = machine.read_memory
    read_virtual = getattr(machine, "read_virtual", None)
    if virtual and read_virtual is not None:
        if _need(machine, "paging_mode")(cpu) == "off":
            note = "(paging is off: virtual addresses are physical)\n"
        else:
            read = lambda a, n: read_virtual(a, n, cpu)  # noqa: E731
    if fmt == "i":
        return note + _disassemble(machine, gpa, count, read, _code_bits(machine, cpu))
    total = count * size
    if total > MAX_DUMP:
        raise CommandError("GenericError", f"x/ shows at most {MAX_DUMP} bytes at once, not {total}")
    line_size = 8 if size == 1 else 16
    bits = size * 8
    digits = {"x": bits // 4, "o": -(-bits // 3), "u": -(-bits * 10 // 33), "d": -(-bits * 10 // 33)}.get(fmt, 0)
    out = []
    addr = gpa
    while total > 0:
        n = min(total, line_size)
        try:
            data = read(addr, n)
        except GuestMemoryError:
            out.append(f"{addr:016x}: Cannot access memory")
            break
        parts = []
        for i in range(0, n, size):
            v = int.from_bytes(data[i : i + size], "little")
            if fmt == "x":
                parts.append(f"0x{v:0{digits}x}")
            elif fmt == "o":
                parts.append(f"{('0' + format(v, 'o')) if v else '0':>{digits}}")
            elif fmt == "u":
                parts.append(f"{v:>{digits}}")
            elif fmt == "d":
                if v >= 1 << (bits - 1):
                    v -= 1 << bits
                parts.append(f"{v:>{digits}}")
            else:
                parts.append(_printc(v))
        out.append(f"{addr:016x}: " + " ".join(parts))
        addr += n
        total -= n
    return note + "\n".join(out) + "\n"


def _code_bits(machine: MachineControl, cpu: int) -> int:
    sregs = getattr(machine, "vcpu_sregs", None)
    if sregs is None:
        return 64
    from ..arch.x86.cpu import code_bits

    return code_bits(sregs(cpu))


def _disassemble(machine: MachineControl, gpa: int, count: int,
                 read: Callable[[int, int], bytes] | None = None, bits: int = 64) -> str:
    try:
        import capstone
    except ImportError:
        raise CommandError("GenericError", "x/i needs capstone (pip install capstone)") from None
    read = read or machine.read_memory
    length = min(count * 15, MAX_DUMP)
    data = b""
    while length > 0 and not data:     # near the end of RAM (or of a mapping), read what there is
        try:
            data = read(gpa, length)
        except GuestMemoryError:
            length //= 2
    if not data:
        return f"{gpa:016x}: Cannot access memory\n"
    mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[bits]
    md = capstone.Cs(capstone.CS_ARCH_X86, mode)
    out = []
    for insn in md.disasm(data, gpa, count):
        out.append(f"0x{insn.address:016x}:  {insn.mnemonic} {insn.op_str}".rstrip())
    if len(out) < count:
        out.append(f"(stopped after {len(out)} instructions: undecodable bytes follow)")
    return "\n".join(out) + "\n"


# --- the console multiplexer ---------------------------------------------------------------------------

CTRL_A = 0x01
PROMPT = b"(pyvmm) "
MAX_HELD_OUTPUT = 64 * 1024   # guest output kept while the monitor is shown; older bytes are dropped

MUX_HELP = (
    b"\r\nC-a h    print this help\r\n"
    b"C-a x    exit the VM\r\n"
    b"C-a c    switch between console and monitor\r\n"
    b"C-a C-a  send C-a\r\n"
)


class ByteSink(Protocol):
    """Where the multiplexer writes: a binary stream (the terminal), or a test's buffer."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class ConsoleMux:
    """One terminal shared by the guest's serial console and the human monitor, as `-serial mon:stdio`.

    Bytes typed by the user arrive through feed() (a stdin reader thread); in console mode they go to
    the guest's serial input, in monitor mode they edit a command line.  Guest output arrives through
    guest_output() (a vCPU thread); while the monitor is shown it is held back, bounded, and replayed
    when the console returns, so the prompt is not scribbled over.  Commands run outside the lock:
    `stop` waits for vCPUs that may be writing guest output at that moment.
    """

    def __init__(
        self,
        machine: MachineControl,
        serial_input: Callable[[bytes], None],
        output: ByteSink,
        run_command: Callable[[MachineControl, str], str] = run_hmp,
    ) -> None:
        self.machine = machine
        self.serial_input = serial_input
        self.output = output
        self.run_command = run_command
        self.monitor = False
        self.quitting = False
        self._escape = False
        self.editor = LineEditor(PROMPT, lambda text: complete_hmp(machine, text))
        self._held = bytearray()
        self._held_dropped = 0
        self._lock = threading.Lock()

    def _write(self, data: bytes) -> None:
        try:
            self.output.write(data)
            self.output.flush()
        except (OSError, ValueError):
            pass  # the terminal went away; the VM goes on

    # --- guest side -------------------------------------------------------------------------------

    def guest_output(self, data: bytes) -> None:
        """Bytes the guest wrote to its serial port."""
        with self._lock:
            if not self.monitor:
                self._write(data)
                return
            self._held += data
            excess = len(self._held) - MAX_HELD_OUTPUT
            if excess > 0:
                del self._held[:excess]
                self._held_dropped += excess

    def announce(self, text: str) -> None:
        """A stop the monitor must see (a virtio breakpoint): open the monitor and print it there, so
        that `cont` is one line away."""
        body = text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "replace")
        with self._lock:
            if not self.monitor:
                self.monitor = True
                self.editor.reset()
                self._write(b"\r\n")
            self._write(b"\r\n" + body + b"\r\n(type cont to resume)\r\n" + PROMPT + self.editor.buf.encode())

    # --- user side --------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes the user typed."""
        to_guest = bytearray()
        for b in data:
            if self.quitting:
                break
            if self._escape:
                self._escape = False
                if b == CTRL_A:
                    if not self.monitor:
                        to_guest.append(CTRL_A)
                    continue
                self._flush_guest(to_guest)
                self._escape_command(b)
                continue
            if b == CTRL_A:
                self._escape = True
                continue
            if self.monitor:
                self._edit(b)
            else:
                to_guest.append(b)
        self._flush_guest(to_guest)

    def _flush_guest(self, buf: bytearray) -> None:
        if buf:
            self.serial_input(bytes(buf))
            buf.clear()

    def _escape_command(self, b: int) -> None:
        if b in (ord("h"), ord("?")):
            with self._lock:
                self._write(MUX_HELP + (b"\r\n" + self.editor.prompt + self.editor.buf.encode() if self.monitor
                                        else b""))
        elif b == ord("x"):
            with self._lock:
                self._write(b"\r\npyvmm: terminating on C-a x\r\n")
            self.quitting = True
            self.machine.quit()
        elif b == ord("c"):
            self._toggle()
        # other escapes are ignored, as QEMU's mux does

    def _toggle(self) -> None:
        with self._lock:
            if not self.monitor:
                self.monitor = True
                self.editor.reset()
                self._write(b"\r\npyvmm monitor - type 'help' for more information, C-a c to return\r\n" + PROMPT)
            else:
                self.monitor = False
                self._write(b"\r\n")
                if self._held_dropped:
                    self._write(f"[pyvmm: {self._held_dropped} bytes of guest output dropped]\r\n".encode())
                self._write(bytes(self._held))
                self._held.clear()
                self._held_dropped = 0

    def _edit(self, b: int) -> None:
        echo, line = self.editor.feed(b)
        if echo:
            with self._lock:
                self._write(echo)
        if line is None:
            return
        if line.strip():
            out = self.run_command(self.machine, line)
            if out:
                with self._lock:
                    self._write(out.replace("\r\n", "\n").replace("\n", "\r\n").encode())
        if self.monitor and not self.quitting:
            with self._lock:
                self._write(PROMPT)


class RawInput:
    """Keyboard straight to the guest (no monitor): what stdio_console feeds when Ctrl-A is off."""

    def __init__(self, feed: Callable[[bytes], None], stopped: Callable[[], bool]) -> None:
        self.feed = feed
        self._stopped = stopped

    @property
    def quitting(self) -> bool:
        return self._stopped()


@contextlib.contextmanager
def stdio_console(mux: ConsoleMux | RawInput, stdin_fd: int | None = None) -> Iterator[threading.Thread]:
    """Put the terminal in raw mode and feed the mux from a stdin reader thread; restore on exit."""
    import termios
    import tty

    fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    if saved is not None:
        tty.setraw(fd)

    def reader() -> None:
        while not mux.quitting:
            try:
                data = os.read(fd, 1024)
            except OSError:
                return
            if not data:
                return
            try:
                mux.feed(data)
            except Exception:  # noqa: BLE001 - this thread is what Ctrl-A x needs: it must survive
                log.exception("console input handling failed; input goes on")

    t = threading.Thread(target=reader, name="console-stdin", daemon=True)
    t.start()
    try:
        yield t
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
