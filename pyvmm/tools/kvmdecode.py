"""What a traced KVM ioctl means: the fd's role, the request's name, its argument structure and the exit
KVM_RUN left in kvm_run, decoded with pyvmm.kvm.abi from bytes read out of another process.

Nothing here touches a process: every decoder reads through a ``read(hva, size) -> bytes`` callable, so
the tests feed it bytes and kvmtrace feeds it the tracee's memory.  A decoded value is a dict of JSON-able
fields (the ``--json`` schema, docs/kvmtrace.md) and one line of text for people.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Any

from ..bits import flag_names
from ..kvm import abi
from ..kvm.ioctl import _IOC_DIRSHIFT, _IOC_READ, _IOC_SIZESHIFT, _IOC_TYPESHIFT, _IOC_WRITE, KVMIO
from ..kvm.runlayout import EXIT_REASON, EXIT_REASON_OFFSET, EXIT_UNION_OFFSET, IO, MMIO, MMIO_DATA_OFFSET

ReadMem = Callable[[int, int], bytes]

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


# ---- fds -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Role:
    """What a KVM fd is: the system fd (/dev/kvm), a VM, a vCPU (with its index) or a device."""

    kind: str              # "system", "vm", "vcpu", "device"
    index: int | None = None
    name: str = ""         # a device's anon-inode name (kvm-vfio, ...)

    def __str__(self) -> str:
        if self.kind == "vcpu":
            return f"vcpu{self.index}"
        return self.name or self.kind


SYSTEM, VM = Role("system"), Role("vm")


def role_of_link(link: str) -> Role | None:
    """The role of the fd whose /proc/PID/fd link reads ``link``, or None for a fd that is not KVM's.

    KVM names its anonymous inodes "kvm-vm" and "kvm-vcpu:N" (virt/kvm/kvm_main.c); devices made with
    KVM_CREATE_DEVICE are named by their ops ("kvm-vfio", ...)."""
    if link == "/dev/kvm":
        return SYSTEM
    if not link.startswith("anon_inode:kvm-"):
        return None
    name = link[len("anon_inode:"):]
    if name == "kvm-vm":
        return VM
    if name.startswith("kvm-vcpu:"):
        try:
            return Role("vcpu", int(name[len("kvm-vcpu:"):]))
        except ValueError:
            return None
    if name.startswith("kvm-vcpu-stats") or name.startswith("kvm-vm-stats"):
        return None        # binary stats fds take no KVM ioctls
    return Role("device", name=name)


# ---- requests ------------------------------------------------------------------------------------


def _ioctl_names() -> dict[int, str]:
    names: dict[int, str] = {}
    for name, value in vars(abi).items():
        if name.startswith("KVM_") and isinstance(value, int) and not isinstance(value, IntEnum) \
                and (value >> _IOC_TYPESHIFT) & 0xFF == KVMIO:
            names.setdefault(value, name)
    return names


IOCTL_NAMES = _ioctl_names()
REQUESTS = {name: value for value, name in IOCTL_NAMES.items()}


def is_kvm_request(request: int) -> bool:
    return (request >> _IOC_TYPESHIFT) & 0xFF == KVMIO


def request_name(request: int) -> str:
    """``KVM_RUN``, or for a request pyvmm does not know ``KVMIO_IOWR(0x62, 520)``, as <asm-generic/ioctl.h>
    encodes it (direction, number, argument size)."""
    name = IOCTL_NAMES.get(request)
    if name is not None:
        return name
    directions = {0: "IO", _IOC_WRITE: "IOW", _IOC_READ: "IOR", _IOC_READ | _IOC_WRITE: "IOWR"}
    direction = directions[request >> _IOC_DIRSHIFT & 3]
    size = request >> _IOC_SIZESHIFT & 0x3FFF
    return f"KVMIO_{direction}({request & 0xFF:#04x}{f', {size}' if size else ''})"


def reads_argument_at_exit(request: int) -> bool:
    """_IOR and _IOWR ioctls fill their argument: decode it when the call returns, the rest when it starts."""
    return bool(request >> _IOC_DIRSHIFT & _IOC_READ)


# ---- formatting helpers --------------------------------------------------------------------------


def size_text(n: int) -> str:
    """``256 MiB``, ``960 KiB``, ``4 GiB``; a size that is no whole unit in bytes."""
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} bytes"




def enum_text(enum: type[IntEnum], value: int, prefix: str = "") -> str:
    try:
        return prefix + enum(value).name
    except ValueError:
        return str(value)


def _struct(cls: type[ctypes.Structure], read: ReadMem, hva: int, size: int | None = None) -> Any:
    n = ctypes.sizeof(cls) if size is None else size
    raw = read(hva, n)
    if len(raw) < n:
        raise OSError(f"short read of {cls.__name__} at {hva:#x}")
    return cls.from_buffer_copy(raw)


class Decoded:
    """One ioctl argument, decoded: JSON fields, one line of text, and the lines --verbose adds."""

    __slots__ = ("fields", "text", "verbose")

    def __init__(self, fields: dict[str, Any], text: str, verbose: list[str] | None = None) -> None:
        self.fields = fields
        self.text = text
        self.verbose = verbose or []


def _braces(pairs: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{k} {v}" for k, v in pairs) + "}"


# ---- argument decoders -----------------------------------------------------------------------------
# Each takes (arg, read, ret) and returns a Decoded; arg is the ioctl's third argument (an integer or the
# tracee's address of the structure), ret the call's return value (None at entry).

class KvmMemFlag(IntFlag):
    LOG_DIRTY_PAGES = abi.KVM_MEM_LOG_DIRTY_PAGES
    READONLY = abi.KVM_MEM_READONLY


class IoeventfdFlag(IntFlag):
    DATAMATCH = abi.KVM_IOEVENTFD_FLAG_DATAMATCH
    PIO = abi.KVM_IOEVENTFD_FLAG_PIO
    DEASSIGN = abi.KVM_IOEVENTFD_FLAG_DEASSIGN


class IrqfdFlag(IntFlag):
    DEASSIGN = abi.KVM_IRQFD_FLAG_DEASSIGN
    RESAMPLE = abi.KVM_IRQFD_FLAG_RESAMPLE


def _memory_region(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    r = _struct(abi.kvm_userspace_memory_region, read, arg)
    f = {"slot": r.slot, "flags": r.flags, "guest_phys_addr": r.guest_phys_addr, "memory_size": r.memory_size,
         "userspace_addr": r.userspace_addr}
    text = _braces([("slot", str(r.slot)), ("flags", flag_names(KvmMemFlag, r.flags)),
                    ("guest_phys_addr", f"{r.guest_phys_addr:#x}"),
                    ("memory_size", size_text(r.memory_size) + (" (delete)" if r.memory_size == 0 else "")),
                    ("userspace_addr", f"{r.userspace_addr:#x}")])
    return Decoded(f, text)


def _int_arg(key: str, fmt: str = "{}") -> Callable[[int, ReadMem, int | None], Decoded]:
    def decode(arg: int, read: ReadMem, ret: int | None) -> Decoded:
        return Decoded({key: arg}, _braces([(key, fmt.format(arg))]))
    return decode


def _cap(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    name = enum_text(abi.KvmCap, arg, "KVM_CAP_")
    return Decoded({"cap": name}, name)


def _enable_cap(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    c = _struct(abi.kvm_enable_cap, read, arg)
    name = enum_text(abi.KvmCap, c.cap, "KVM_CAP_")
    args = list(c.args)
    return Decoded({"cap": name, "flags": c.flags, "args": args},
                   _braces([("cap", name), ("flags", f"{c.flags:#x}"),
                            ("args", "[" + ", ".join(f"{a:#x}" for a in args) + "]")]))


def _u64_at(key: str) -> Callable[[int, ReadMem, int | None], Decoded]:
    def decode(arg: int, read: ReadMem, ret: int | None) -> Decoded:
        v = int.from_bytes(read(arg, 8), "little")
        return Decoded({key: v}, _braces([(key, f"{v:#x}")]))
    return decode


# CPUID: leaves and the vendor/hypervisor strings they carry, for the one-line view.

def _regs_str(*words: int) -> str:
    return b"".join(w.to_bytes(4, "little") for w in words).rstrip(b"\0").decode("ascii", "replace")


def _cpuid2(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    nent = int.from_bytes(read(arg, 4), "little")
    n = min(nent, 1024)             # a hostile or broken nent must not make us read megabytes
    hdr = ctypes.sizeof(abi.kvm_cpuid2)
    entries = [abi.kvm_cpuid_entry2.from_buffer_copy(read(arg + hdr + i * 40, 40)) for i in range(n)] if n else []
    rows = [{"function": e.function, "index": e.index, "flags": e.flags, "eax": e.eax, "ebx": e.ebx,
             "ecx": e.ecx, "edx": e.edx} for e in entries]
    pairs = [("nent", str(nent))]
    by_fn = {(e.function, e.index): e for e in entries}
    if (0, 0) in by_fn:
        e = by_fn[(0, 0)]
        pairs += [("vendor", repr(_regs_str(e.ebx, e.edx, e.ecx))), ("max leaf", f"{e.eax:#x}")]
    if (0x8000_0000, 0) in by_fn:
        pairs.append(("max extended leaf", f"{by_fn[(0x8000_0000, 0)].eax:#x}"))
    if (0x4000_0000, 0) in by_fn:
        e = by_fn[(0x4000_0000, 0)]
        pairs.append(("hypervisor", repr(_regs_str(e.ebx, e.ecx, e.edx))))
    if (1, 0) in by_fn:
        e = by_fn[(1, 0)]
        family = (e.eax >> 8 & 0xF) + ((e.eax >> 20 & 0xFF) if (e.eax >> 8 & 0xF) == 0xF else 0)
        model = (e.eax >> 4 & 0xF) | ((e.eax >> 12 & 0xF0) if (e.eax >> 8 & 0xF) in (6, 0xF) else 0)
        pairs.append(("family/model", f"{family:#x}/{model:#x}"))
        from ..arch.x86.cpuid import Leaf1Ecx

        pairs.append(("hypervisor bit", "on" if e.ecx & Leaf1Ecx.HYPERVISOR else "off"))
    verbose = [f"  {e.function:#010x}.{e.index:<2} eax={e.eax:08x} ebx={e.ebx:08x} ecx={e.ecx:08x} edx={e.edx:08x}"
               f"{' (index significant)' if e.flags & abi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX else ''}" for e in entries]
    return Decoded({"nent": nent, "entries": rows}, _braces(pairs), verbose)


def _segment_text(s: abi.kvm_segment) -> str:
    return (f"{{sel {s.selector:#x} base {s.base:#x} limit {s.limit:#x} type {s.type:#x} "
            f"{'L ' if s.l else ''}{'D ' if s.db else ''}{'' if s.present else 'not present '}dpl {s.dpl}}}")


def _sregs_common(s: Any, extra: dict[str, Any]) -> Decoded:
    from ..arch.x86.cpu import Cr0, Cr4, Efer, mode_name

    f: dict[str, Any] = {"mode": mode_name(s), "cr0": s.cr0, "cr0_flags": flag_names(Cr0, s.cr0).split("|"),
                         "cr2": s.cr2, "cr3": s.cr3, "cr4": s.cr4, "cr4_flags": flag_names(Cr4, s.cr4).split("|"),
                         "cr8": s.cr8, "efer": s.efer, "efer_flags": flag_names(Efer, s.efer).split("|"),
                         "apic_base": s.apic_base}
    segs = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
    for name in segs:
        seg = getattr(s, name)
        f[name] = {"selector": seg.selector, "base": seg.base, "limit": seg.limit, "type": seg.type,
                   "present": seg.present, "dpl": seg.dpl, "db": seg.db, "s": seg.s, "l": seg.l, "g": seg.g}
    f["gdt"] = {"base": s.gdt.base, "limit": s.gdt.limit}
    f["idt"] = {"base": s.idt.base, "limit": s.idt.limit}
    f.update(extra)
    def named(value: int, flags: type[IntFlag]) -> str:
        return f"{value:#x} {flag_names(flags, value)}" if value else "0"

    text = _braces([("mode", mode_name(s)), ("cr0", named(s.cr0, Cr0)), ("cr3", f"{s.cr3:#x}"),
                    ("cr4", named(s.cr4, Cr4)), ("efer", named(s.efer, Efer)), ("cs", _segment_text(s.cs)),
                    ("apic_base", f"{s.apic_base:#x}")])
    verbose = [f"  {name:<3} {_segment_text(getattr(s, name))}" for name in segs]
    verbose += [f"  gdt {{base {s.gdt.base:#x} limit {s.gdt.limit:#x}}}"
                f"  idt {{base {s.idt.base:#x} limit {s.idt.limit:#x}}}",
                f"  cr2 {s.cr2:#x}  cr8 {s.cr8:#x}"]
    return Decoded(f, text, verbose)


def _sregs(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    return _sregs_common(_struct(abi.kvm_sregs, read, arg), {})


def _sregs2(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    s = _struct(abi.kvm_sregs2, read, arg)
    return _sregs_common(s, {"flags": s.flags, "pdptrs": list(s.pdptrs)})


_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
         "r15")


def _regs(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    r = _struct(abi.kvm_regs, read, arg)
    f = {name: getattr(r, name) for name, *_ in abi.kvm_regs._fields_}
    shown = [("rip", f"{r.rip:#x}"), ("rflags", f"{r.rflags:#x}")]
    shown += [(n, f"{getattr(r, n):#x}") for n in _GPRS if getattr(r, n)]
    verbose = ["  " + "  ".join(f"{n}={getattr(r, n):016x}" for n in _GPRS[i:i + 4]) for i in range(0, 16, 4)]
    return Decoded(f, _braces(shown), verbose)


# MSRs a VMM sets on every vCPU, by their SDM / KVM names.
MSR_NAMES = {
    0x10: "IA32_TSC", 0x1B: "IA32_APIC_BASE", 0x3A: "IA32_FEATURE_CONTROL", 0x48: "IA32_SPEC_CTRL",
    0x8B: "IA32_BIOS_SIGN_ID", 0xFE: "IA32_MTRRCAP", 0x174: "IA32_SYSENTER_CS", 0x175: "IA32_SYSENTER_ESP",
    0x176: "IA32_SYSENTER_EIP", 0x179: "IA32_MCG_CAP", 0x17A: "IA32_MCG_STATUS", 0x1A0: "IA32_MISC_ENABLE",
    0x1D9: "IA32_DEBUGCTL", 0x277: "IA32_PAT", 0x2FF: "IA32_MTRR_DEF_TYPE", 0x6E0: "IA32_TSC_DEADLINE",
    0xC0000080: "IA32_EFER", 0xC0000081: "IA32_STAR", 0xC0000082: "IA32_LSTAR", 0xC0000083: "IA32_CSTAR",
    0xC0000084: "IA32_FMASK", 0xC0000100: "IA32_FS_BASE", 0xC0000101: "IA32_GS_BASE",
    0xC0000102: "IA32_KERNEL_GS_BASE", 0xC0000103: "IA32_TSC_AUX",
    0x4B564D00: "MSR_KVM_WALL_CLOCK_NEW", 0x4B564D01: "MSR_KVM_SYSTEM_TIME_NEW", 0x4B564D02: "MSR_KVM_ASYNC_PF_EN",
    0x4B564D03: "MSR_KVM_STEAL_TIME", 0x4B564D04: "MSR_KVM_PV_EOI_EN", 0x4B564D05: "MSR_KVM_POLL_CONTROL",
    0x11: "MSR_KVM_WALL_CLOCK", 0x12: "MSR_KVM_SYSTEM_TIME",
}


def msr_name(index: int) -> str:
    return MSR_NAMES.get(index, f"{index:#x}")


def _msrs(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    nmsrs = int.from_bytes(read(arg, 4), "little")
    # KVM_GET_MSRS fills only the first ret entries; KVM_SET_MSRS sets all nmsrs unless it stops early.
    n = min(nmsrs, 1024)
    hdr = ctypes.sizeof(abi.kvm_msrs)
    raw = read(arg + hdr, n * 16) if n else b""
    entries = [abi.kvm_msr_entry.from_buffer_copy(raw, i * 16) for i in range(len(raw) // 16)]
    rows = [{"index": e.index, "name": MSR_NAMES.get(e.index), "data": e.data} for e in entries]
    listed = ", ".join(f"{msr_name(e.index)}={e.data:#x}" for e in entries[:4])
    more = f", ... {len(entries) - 4} more" if len(entries) > 4 else ""
    verbose = [f"  {e.index:#010x} {MSR_NAMES.get(e.index, ''):<24} {e.data:#x}" for e in entries]
    return Decoded({"nmsrs": nmsrs, "entries": rows}, f"{{nmsrs {nmsrs}: {listed}{more}}}", verbose)


def _msr_list(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    nmsrs = int.from_bytes(read(arg, 4), "little")
    n = min(nmsrs, 4096)
    raw = read(arg + 4, n * 4) if n else b""
    indices = [int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4)]
    verbose = ["  " + " ".join(f"{msr_name(i)}" for i in indices[j:j + 6]) for j in range(0, len(indices), 6)]
    return Decoded({"nmsrs": nmsrs, "indices": indices}, f"{{nmsrs {nmsrs}}}", verbose)


def _irq_level(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    lv = _struct(abi.kvm_irq_level, read, arg)
    return Decoded({"irq": lv.irq, "level": lv.level}, _braces([("irq", str(lv.irq)), ("level", str(lv.level))]))


def _irqfd(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    q = _struct(abi.kvm_irqfd, read, arg)
    pairs = [("fd", str(q.fd)), ("gsi", str(q.gsi)), ("flags", flag_names(IrqfdFlag, q.flags))]
    if q.flags & abi.KVM_IRQFD_FLAG_RESAMPLE:
        pairs.append(("resamplefd", str(q.resamplefd)))
    return Decoded({"fd": q.fd, "gsi": q.gsi, "flags": q.flags, "resamplefd": q.resamplefd}, _braces(pairs))


def _ioeventfd(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    e = _struct(abi.kvm_ioeventfd, read, arg)
    pio = bool(e.flags & abi.KVM_IOEVENTFD_FLAG_PIO)
    where = f"port {e.addr:#x}" if pio else f"mmio {e.addr:#x}"
    pairs = [("at", where), ("len", str(e.len)), ("fd", str(e.fd)), ("flags", flag_names(IoeventfdFlag, e.flags))]
    if e.flags & abi.KVM_IOEVENTFD_FLAG_DATAMATCH:
        pairs.append(("datamatch", f"{e.datamatch:#x}"))
    return Decoded({"addr": e.addr, "len": e.len, "fd": e.fd, "flags": e.flags, "datamatch": e.datamatch,
                    "pio": pio}, _braces(pairs))


def _gsi_routing(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    nr = int.from_bytes(read(arg, 4), "little")
    n = min(nr, 4096)
    raw = read(arg + 8, n * 48) if n else b""
    rows, verbose = [], []
    for i in range(len(raw) // 48):
        e = abi.kvm_irq_routing_entry.from_buffer_copy(raw, i * 48)
        if e.type == abi.KVM_IRQ_ROUTING_IRQCHIP:
            rows.append({"gsi": e.gsi, "type": "irqchip", "irqchip": e.u.irqchip.irqchip, "pin": e.u.irqchip.pin})
            verbose.append(f"  gsi {e.gsi:<3} irqchip {e.u.irqchip.irqchip} pin {e.u.irqchip.pin}")
        elif e.type == abi.KVM_IRQ_ROUTING_MSI:
            m = e.u.msi
            rows.append({"gsi": e.gsi, "type": "msi", "address": m.address_hi << 32 | m.address_lo, "data": m.data})
            verbose.append(f"  gsi {e.gsi:<3} msi address {m.address_hi << 32 | m.address_lo:#x} data {m.data:#x}")
        else:
            rows.append({"gsi": e.gsi, "type": e.type})
            verbose.append(f"  gsi {e.gsi:<3} type {e.type}")
    kinds = sorted({str(r["type"]) for r in rows})
    pairs = [("nr", str(nr))] + ([("types", "/".join(kinds))] if kinds else [])
    return Decoded({"nr": nr, "entries": rows}, _braces(pairs), verbose)


def _pit_config(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    c = _struct(abi.kvm_pit_config, read, arg)
    return Decoded({"flags": c.flags}, _braces([("flags", "SPEAKER_DUMMY" if c.flags == abi.KVM_PIT_SPEAKER_DUMMY
                                                 else f"{c.flags:#x}")]))


def _mp_state(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    v = int.from_bytes(read(arg, 4), "little")
    name = enum_text(abi.KvmMpState, v, "KVM_MP_STATE_")
    return Decoded({"mp_state": name}, _braces([("mp_state", name)]))


def _fpu(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    f = _struct(abi.kvm_fpu, read, arg)
    return Decoded({"fcw": f.fcw, "fsw": f.fsw, "mxcsr": f.mxcsr},
                   _braces([("fcw", f"{f.fcw:#x}"), ("fsw", f"{f.fsw:#x}"), ("mxcsr", f"{f.mxcsr:#x}")]))


def _lapic(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    raw = read(arg, 1024)
    word = lambda off: int.from_bytes(raw[off:off + 4], "little")  # noqa: E731 - registers every 16 bytes
    # Local APIC register offsets: Intel SDM vol. 3A, "Local APIC Register Address Map".
    f = {"id": word(0x20) >> 24, "version": word(0x30) & 0xFF, "svr": word(0xF0), "lvt_lint0": word(0x350),
         "lvt_lint1": word(0x360), "lvt_timer": word(0x320)}
    return Decoded(f, _braces([("id", str(f["id"])), ("version", f"{f['version']:#x}"), ("svr", f"{f['svr']:#x}"),
                               ("lint0", f"{f['lvt_lint0']:#x}"), ("lint1", f"{f['lvt_lint1']:#x}")]))


def _vcpu_events(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    e = _struct(abi.kvm_vcpu_events, read, arg)
    f = {"exception": {"injected": e.exception.injected, "nr": e.exception.nr, "pending": e.exception.pending},
         "interrupt": {"injected": e.interrupt.injected, "nr": e.interrupt.nr, "shadow": e.interrupt.shadow},
         "nmi": {"injected": e.nmi.injected, "pending": e.nmi.pending, "masked": e.nmi.masked},
         "flags": e.flags, "triple_fault_pending": e.triple_fault_pending}
    pairs = [("flags", f"{e.flags:#x}")]
    if e.exception.injected or e.exception.pending:
        pairs.append(("exception", f"vector {e.exception.nr}"))
    if e.interrupt.injected:
        pairs.append(("interrupt", f"vector {e.interrupt.nr}"))
    if e.nmi.injected or e.nmi.pending:
        pairs.append(("nmi", "pending" if e.nmi.pending else "injected"))
    return Decoded(f, _braces(pairs))


def _clock(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    c = _struct(abi.kvm_clock_data, read, arg)
    return Decoded({"clock": c.clock, "flags": c.flags},
                   _braces([("clock", f"{c.clock} ns"), ("flags", f"{c.flags:#x}")]))


def _device_attr(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    a = _struct(abi.kvm_device_attr, read, arg)
    return Decoded({"flags": a.flags, "group": a.group, "attr": a.attr, "addr": a.addr},
                   _braces([("group", str(a.group)), ("attr", f"{a.attr:#x}"), ("addr", f"{a.addr:#x}")]))


def _create_device(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    d = _struct(abi.kvm_create_device, read, arg)
    return Decoded({"type": d.type, "fd": d.fd, "flags": d.flags},
                   _braces([("type", str(d.type)), ("fd", str(d.fd)), ("flags", f"{d.flags:#x}")]))


def _coalesced(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    z = _struct(abi.kvm_coalesced_mmio_zone, read, arg)
    return Decoded({"addr": z.addr, "size": z.size, "pio": z.pio},
                   _braces([("at", f"{'port' if z.pio else 'mmio'} {z.addr:#x}"), ("size", str(z.size))]))


def _msi(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    m = _struct(abi.kvm_msi, read, arg)
    address = m.address_hi << 32 | m.address_lo
    return Decoded({"address": address, "data": m.data, "flags": m.flags},
                   _braces([("address", f"{address:#x}"), ("data", f"{m.data:#x}")]))


def _xcrs(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    x = _struct(abi.kvm_xcrs, read, arg)
    n = min(x.nr_xcrs, abi.KVM_MAX_XCRS)
    rows = [{"xcr": x.xcrs[i].xcr, "value": x.xcrs[i].value} for i in range(n)]
    return Decoded({"nr_xcrs": x.nr_xcrs, "xcrs": rows},
                   _braces([("nr_xcrs", str(x.nr_xcrs))] + [(f"xcr{r['xcr']}", f"{r['value']:#x}") for r in rows]))


def _debugregs(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    d = _struct(abi.kvm_debugregs, read, arg)
    return Decoded({"db": list(d.db), "dr6": d.dr6, "dr7": d.dr7},
                   _braces([("dr6", f"{d.dr6:#x}"), ("dr7", f"{d.dr7:#x}")]))


def _guest_debug(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    g = _struct(abi.kvm_guest_debug, read, arg)
    return Decoded({"control": g.control}, _braces([("control", f"{g.control:#x}")]))


def _msr_filter(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    m = _struct(abi.kvm_msr_filter, read, arg)
    ranges = [{"flags": r.flags, "base": r.base, "nmsrs": r.nmsrs} for r in m.ranges if r.nmsrs]
    return Decoded({"flags": m.flags, "ranges": ranges},
                   _braces([("default", "deny" if m.flags & abi.KVM_MSR_FILTER_DEFAULT_DENY else "allow"),
                            ("ranges", str(len(ranges)))]))


def _tpr_access(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    t = _struct(abi.kvm_tpr_access_ctl, read, arg)
    return Decoded({"enabled": t.enabled, "flags": t.flags}, _braces([("enabled", str(t.enabled))]))


def _vapic(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    v = _struct(abi.kvm_vapic_addr, read, arg)
    return Decoded({"vapic_addr": v.vapic_addr}, _braces([("vapic_addr", f"{v.vapic_addr:#x}")]))


def _signal_mask(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    if not arg:
        return Decoded({"len": None}, "NULL (no mask)")
    n = int.from_bytes(read(arg, 4), "little")
    mask = int.from_bytes(read(arg + 4, min(n, 16)), "little") if n else 0
    return Decoded({"len": n, "sigset": mask}, _braces([("len", str(n)), ("sigset", f"{mask:#x}")]))


def _interrupt(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    v = int.from_bytes(read(arg, 4), "little")
    return Decoded({"irq": v}, _braces([("irq", str(v))]))


def _dirty_log(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    d = _struct(abi.kvm_dirty_log, read, arg)
    return Decoded({"slot": d.slot, "dirty_bitmap": d.dirty_bitmap},
                   _braces([("slot", str(d.slot)), ("dirty_bitmap", f"{d.dirty_bitmap:#x}")]))


def _xsave(arg: int, read: ReadMem, ret: int | None) -> Decoded:
    # The legacy FXSAVE region starts the XSAVE area: FCW at 0, MXCSR at 24; XSTATE_BV at 512.
    raw = read(arg, 520)
    xstate_bv = int.from_bytes(raw[512:520], "little")
    return Decoded({"xstate_bv": xstate_bv}, _braces([("xstate_bv", f"{xstate_bv:#x}"),
                                                      ("mxcsr", f"{int.from_bytes(raw[24:28], 'little'):#x}")]))


DECODERS: dict[int, Callable[[int, ReadMem, int | None], Decoded]] = {
    abi.KVM_CREATE_VM: _int_arg("type"),
    abi.KVM_CHECK_EXTENSION: _cap,
    abi.KVM_ENABLE_CAP: _enable_cap,
    abi.KVM_CREATE_VCPU: _int_arg("vcpu_id"),
    abi.KVM_SET_USER_MEMORY_REGION: _memory_region,
    abi.KVM_SET_TSS_ADDR: _int_arg("addr", "{:#x}"),
    abi.KVM_SET_IDENTITY_MAP_ADDR: _u64_at("addr"),
    abi.KVM_SET_TSC_KHZ: _int_arg("khz"),
    abi.KVM_SET_BOOT_CPU_ID: _int_arg("vcpu_id"),
    abi.KVM_GET_SUPPORTED_CPUID: _cpuid2,
    abi.KVM_GET_EMULATED_CPUID: _cpuid2,
    abi.KVM_GET_SUPPORTED_HV_CPUID: _cpuid2,
    abi.KVM_SET_CPUID2: _cpuid2,
    abi.KVM_GET_CPUID2: _cpuid2,
    abi.KVM_GET_SREGS: _sregs,
    abi.KVM_SET_SREGS: _sregs,
    abi.KVM_GET_SREGS2: _sregs2,
    abi.KVM_SET_SREGS2: _sregs2,
    abi.KVM_GET_REGS: _regs,
    abi.KVM_SET_REGS: _regs,
    abi.KVM_GET_MSRS: _msrs,
    abi.KVM_SET_MSRS: _msrs,
    abi.KVM_GET_MSR_INDEX_LIST: _msr_list,
    abi.KVM_GET_MSR_FEATURE_INDEX_LIST: _msr_list,
    abi.KVM_IRQ_LINE: _irq_level,
    abi.KVM_IRQ_LINE_STATUS: _irq_level,
    abi.KVM_IRQFD: _irqfd,
    abi.KVM_IOEVENTFD: _ioeventfd,
    abi.KVM_SET_GSI_ROUTING: _gsi_routing,
    abi.KVM_CREATE_PIT2: _pit_config,
    abi.KVM_GET_MP_STATE: _mp_state,
    abi.KVM_SET_MP_STATE: _mp_state,
    abi.KVM_GET_FPU: _fpu,
    abi.KVM_SET_FPU: _fpu,
    abi.KVM_GET_LAPIC: _lapic,
    abi.KVM_SET_LAPIC: _lapic,
    abi.KVM_GET_VCPU_EVENTS: _vcpu_events,
    abi.KVM_SET_VCPU_EVENTS: _vcpu_events,
    abi.KVM_GET_CLOCK: _clock,
    abi.KVM_SET_CLOCK: _clock,
    abi.KVM_GET_DEVICE_ATTR: _device_attr,
    abi.KVM_SET_DEVICE_ATTR: _device_attr,
    abi.KVM_HAS_DEVICE_ATTR: _device_attr,
    abi.KVM_CREATE_DEVICE: _create_device,
    abi.KVM_REGISTER_COALESCED_MMIO: _coalesced,
    abi.KVM_UNREGISTER_COALESCED_MMIO: _coalesced,
    abi.KVM_SIGNAL_MSI: _msi,
    abi.KVM_GET_XCRS: _xcrs,
    abi.KVM_SET_XCRS: _xcrs,
    abi.KVM_GET_XSAVE: _xsave,
    abi.KVM_SET_XSAVE: _xsave,
    abi.KVM_GET_XSAVE2: _xsave,
    abi.KVM_GET_DEBUGREGS: _debugregs,
    abi.KVM_SET_DEBUGREGS: _debugregs,
    abi.KVM_SET_GUEST_DEBUG: _guest_debug,
    abi.KVM_X86_SET_MSR_FILTER: _msr_filter,
    abi.KVM_X86_SETUP_MCE: _u64_at("mcg_cap"),
    abi.KVM_X86_GET_MCE_CAP_SUPPORTED: _u64_at("mcg_cap"),
    abi.KVM_TPR_ACCESS_REPORTING: _tpr_access,
    abi.KVM_SET_VAPIC_ADDR: _vapic,
    abi.KVM_SET_SIGNAL_MASK: _signal_mask,
    abi.KVM_INTERRUPT: _interrupt,
    abi.KVM_GET_DIRTY_LOG: _dirty_log,
}


def decode_argument(request: int, arg: int, read: ReadMem, ret: int | None = None) -> Decoded | None:
    """The decoded argument of one ioctl, or None where there is nothing to show (KVM_RUN, a request
    without a decoder).  A structure that cannot be read (a bad pointer: the call fails with EFAULT)
    decodes to a one-line note instead of an error."""
    decoder = DECODERS.get(request)
    if decoder is None:
        return None
    try:
        return decoder(arg, read, ret)
    except (OSError, ValueError) as e:
        return Decoded({"unreadable": arg}, f"<{arg:#x}: cannot read ({e})>")


# ---- I/O ports and MMIO windows -----------------------------------------------------------------------
# The PC's well-known ports, for the summary and the exit lines; a VMM may put anything anywhere, so a
# name is a hint ("what sits here on a PC"), the number is the fact.

_UART_REGS = ("RBR/THR", "IER", "IIR/FCR", "LCR", "MCR", "LSR", "MSR", "SCR")   # 16550A, by offset

PORT_RANGES: list[tuple[int, int, str]] = [
    (0x20, 0x21, "PIC1"), (0x40, 0x43, "PIT"), (0x60, 0x60, "i8042 data"), (0x61, 0x61, "port B"),
    (0x64, 0x64, "i8042 command"), (0x70, 0x71, "CMOS/RTC"), (0x80, 0x80, "POST"), (0x92, 0x92, "fast A20"),
    (0xA0, 0xA1, "PIC2"), (0xF4, 0xF7, "debug exit"), (0x2E8, 0x2EF, "COM4"), (0x2F8, 0x2FF, "COM2"),
    (0x3E8, 0x3EF, "COM3"), (0x3F8, 0x3FF, "COM1"), (0x402, 0x402, "debugcon"), (0x510, 0x511, "fw_cfg"),
    (0xCF8, 0xCFF, "PCI config"),
]


def port_name(port: int) -> str:
    for lo, hi, name in PORT_RANGES:
        if lo <= port <= hi:
            if name.startswith("COM"):
                return f"{name} {_UART_REGS[port - lo]}"
            return name
    return ""


MMIO_RANGES: list[tuple[int, int, str]] = [
    (0xFEC0_0000, 0xFEC0_0FFF, "IOAPIC"), (0xFEE0_0000, 0xFEE0_0FFF, "LAPIC"),
    (0xFED0_0000, 0xFED0_03FF, "HPET"),
]


def mmio_name(gpa: int) -> str:
    for lo, hi, name in MMIO_RANGES:
        if lo <= gpa <= hi:
            return name
    return ""


# ---- exits ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ExitRecord:
    """One KVM_RUN return as read from the tracee's kvm_run: reason, details, and for a read the reply
    the VMM wrote back before it entered the guest again (``reply`` set later, see VirtioWindows)."""

    reason: str
    fields: dict[str, Any] = field(default_factory=dict)
    key: str = ""                    # what the summary groups by: "0x3f8 out", "0xd0000000 read", ...
    pending_reply: tuple[int, int] | None = None     # (offset in kvm_run, length) to read at the next entry

    def text(self) -> str:
        f = self.fields
        if self.reason == "IO":
            name = port_name(f["port"])
            where = f"{f['port']:#x}" + (f" ({name})" if name else "")
            data = f.get("data")
            body = ""
            if data is not None:
                raw = bytes.fromhex(data)
                body = (": " if f["direction"] == "out" else " -> ") + data
                if f["size"] == 1 and all(32 <= b < 127 for b in raw):
                    body += f" {raw.decode('ascii')!r}"
            count = f" x{f['count']}" if f["count"] != 1 else ""
            return f"IO {f['direction']} {where} size {f['size']}{count}{body}"
        if self.reason == "MMIO":
            name = f.get("register") or mmio_name(f["gpa"])
            where = f"{f['gpa']:#x}" + (f" ({name})" if name else "")
            data = f.get("data")
            value = ""
            if data is not None:
                value = (": " if f["write"] else " -> ") + f"{int.from_bytes(bytes.fromhex(data), 'little'):#x}"
            return f"MMIO {'write' if f['write'] else 'read'} {where} len {f['len']}{value}"
        if self.reason == "INTERNAL_ERROR":
            insn = f" insn {f['insn']}" if f.get("insn") else ""
            return f"INTERNAL_ERROR {f['suberror']}{insn} data [{', '.join(hex(d) for d in f['data'])}]"
        if self.reason == "SYSTEM_EVENT":
            data = f" data [{', '.join(hex(d) for d in f['data'])}]" if f["data"] else ""
            return f"SYSTEM_EVENT {f['type']}{data}"
        if self.reason == "FAIL_ENTRY":
            return f"FAIL_ENTRY hardware reason {f['hardware_entry_failure_reason']:#x} cpu {f['cpu']}"
        if self.reason == "DEBUG":
            return f"DEBUG exception {f['exception']} pc {f['pc']:#x}"
        return self.reason


RUN_HEAD = EXIT_UNION_OFFSET + 256            # kvm_run up to the end of its exit union


def exit_reason_name(reason: int) -> str:
    return enum_text(abi.KvmExit, reason)


def decode_exit(head: bytes, read_run: Callable[[int, int], bytes]) -> ExitRecord:
    """The exit in kvm_run's first RUN_HEAD bytes; read_run(offset, n) reads further into the mapping
    (the port-I/O data page).  Data a read will return is not there yet: pending_reply says where the
    VMM will put it."""
    reason = EXIT_REASON.unpack_from(head, EXIT_REASON_OFFSET)[0]
    if reason == abi.KvmExit.IO:
        direction, size, port, count, data_offset = IO.unpack_from(head, EXIT_UNION_OFFSET)
        out = direction == abi.KVM_EXIT_IO_OUT
        n = size * count
        rec = ExitRecord("IO", {"port": port, "size": size, "count": count, "direction": "out" if out else "in",
                                "data_offset": data_offset}, f"{port:#x} {'out' if out else 'in'}")
        if 0 < n <= 4096:
            if out:
                rec.fields["data"] = read_run(data_offset, n).hex()
            else:
                rec.pending_reply = (data_offset, n)
        return rec
    if reason == abi.KvmExit.MMIO:
        gpa, data, length, is_write = MMIO.unpack_from(head, EXIT_UNION_OFFSET)
        length = min(length, 8)
        rec = ExitRecord("MMIO", {"gpa": gpa, "len": length, "write": bool(is_write)},
                         f"{gpa & ~0xFFF:#x} {'write' if is_write else 'read'}")
        if is_write:
            rec.fields["data"] = data[:length].hex()
        else:
            rec.pending_reply = (MMIO_DATA_OFFSET, length)
        return rec
    run = abi.kvm_run.from_buffer_copy(head + bytes(ctypes.sizeof(abi.kvm_run) - len(head)))
    from ..kvm import exits

    ex = exits.decode(run)
    name = exit_reason_name(reason)
    match ex:
        case exits.InternalErrorExit():
            return ExitRecord(name, {"suberror": ex.suberror_name, "data": list(ex.data), "insn": ex.insn_bytes.hex()},
                              ex.suberror_name)
        case exits.SystemEventExit():
            return ExitRecord(name, {"type": ex.type_name, "data": list(ex.data)}, ex.type_name)
        case exits.FailEntryExit():
            return ExitRecord(name, {"hardware_entry_failure_reason": ex.hardware_entry_failure_reason, "cpu": ex.cpu})
        case exits.DebugExit():
            return ExitRecord(name, {"exception": ex.exception, "pc": ex.pc, "dr6": ex.dr6, "dr7": ex.dr7})
    return ExitRecord(name)


class VirtioWindows:
    """virtio-mmio windows learnt from the trace itself: a read at offset 0 that returns the magic
    "virt" (virtio spec, "MMIO Device Register Layout") marks a window, so the register names are never
    a guess about the VMM's memory map.  QEMU microvm spaces its windows 512 bytes apart, pyvmm 4 KiB."""

    SPAN = 0x200

    def __init__(self) -> None:
        self.bases: dict[int, int] = {}     # window base -> version (0 until its Version is read)

    def learn(self, gpa: int, is_write: bool, value: int) -> None:
        from ..virtio.abi import VIRTIO_MMIO_MAGIC_VALUE, Reg

        if not is_write and value == VIRTIO_MMIO_MAGIC_VALUE:
            self.bases.setdefault(gpa, 0)
        elif not is_write and (gpa - Reg.Version) in self.bases:
            self.bases[gpa - Reg.Version] = value

    def name(self, gpa: int) -> str:
        from ..virtio.abi import Reg

        for base in self.bases:
            off = gpa - base
            if 0 <= off < self.SPAN:
                if off >= Reg.Config:
                    return f"virtio-mmio@{base:#x} config+{off - Reg.Config:#x}"
                try:
                    reg = Reg(off).name
                except ValueError:
                    reg = f"+{off:#x}"
                return f"virtio-mmio@{base:#x} {reg}"
        return ""

    def window(self, gpa: int) -> int | None:
        for base in self.bases:
            if 0 <= gpa - base < self.SPAN:
                return base
        return None
