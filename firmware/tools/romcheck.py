#!/usr/bin/env python3
"""Run the boot ROM alone on KVM with raw ioctls and report the stages it reaches and the entry state."""

# Standalone on purpose: it checks the ROM without the rest of pyvmm (only the loader's hand-off patch),
# so a ROM bug and a VMM bug can be told apart. Usage:
#   python firmware/tools/romcheck.py [firmware/build/firmware.elf] [--no-magic] [--no-handoff] [--multiboot]
#                                     [--json]

from __future__ import annotations

import argparse
import ctypes
import json
import mmap
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# ioctl numbers from <asm-generic/ioctl.h>, computed rather than pasted.
_IOC_NRSHIFT, _IOC_TYPESHIFT, _IOC_SIZESHIFT, _IOC_DIRSHIFT = 0, 8, 16, 30
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (
        size << _IOC_SIZESHIFT)


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOW(type_: int, nr: int, struct: type) -> int:
    return _IOC(_IOC_WRITE, type_, nr, ctypes.sizeof(struct))


def _IOR(type_: int, nr: int, struct: type) -> int:
    return _IOC(_IOC_READ, type_, nr, ctypes.sizeof(struct))


# Structures from <linux/kvm.h> and <asm/kvm.h>, named as there.
class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("guest_phys_addr", ctypes.c_uint64),
                ("memory_size", ctypes.c_uint64), ("userspace_addr", ctypes.c_uint64)]


class kvm_regs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint32), ("selector", ctypes.c_uint16),
                ("type", ctypes.c_uint8), ("present", ctypes.c_uint8), ("dpl", ctypes.c_uint8),
                ("db", ctypes.c_uint8), ("s", ctypes.c_uint8), ("l", ctypes.c_uint8), ("g", ctypes.c_uint8),
                ("avl", ctypes.c_uint8), ("unusable", ctypes.c_uint8), ("padding", ctypes.c_uint8)]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", ctypes.c_uint64), ("limit", ctypes.c_uint16), ("padding", ctypes.c_uint16 * 3)]


class kvm_sregs(ctypes.Structure):
    _fields_ = [("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment), ("fs", kvm_segment),
                ("gs", kvm_segment), ("ss", kvm_segment), ("tr", kvm_segment), ("ldt", kvm_segment),
                ("gdt", kvm_dtable), ("idt", kvm_dtable),
                ("cr0", ctypes.c_uint64), ("cr2", ctypes.c_uint64), ("cr3", ctypes.c_uint64),
                ("cr4", ctypes.c_uint64), ("cr8", ctypes.c_uint64), ("efer", ctypes.c_uint64),
                ("apic_base", ctypes.c_uint64), ("interrupt_bitmap", ctypes.c_uint64 * 4)]


assert ctypes.sizeof(kvm_userspace_memory_region) == 32
assert ctypes.sizeof(kvm_regs) == 144
assert ctypes.sizeof(kvm_sregs) == 312

KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)

KVM_CAP_READONLY_MEM = 21
KVM_MEM_READONLY = 1 << 1

KVM_EXIT_IO, KVM_EXIT_HLT, KVM_EXIT_MMIO, KVM_EXIT_SHUTDOWN = 2, 5, 6, 8
KVM_EXIT_IO_OUT = 1
# kvm_run: exit_reason is at offset 8; the exit's union starts at offset 32.
RUN_EXIT_REASON, RUN_UNION = 8, 32

RAM_SIZE = 2 << 20
START_INFO_GPA = 0x6000
ENTRY_GPA = 0x10_0000
TSS_ADDR = 0xFFFB_D000          # three pages KVM needs for real mode on VMX without unrestricted guest
HVM_START_MAGIC = 0x336EC578
EXIT_PORT = 0xF4
MAX_EXITS = 64

# The payload at the kernel entry: keep EAX (the protocol magic) in ECX, report EBX on the exit port
# (out imm8, eax), then hlt.
PAYLOAD = bytes([0x89, 0xC1,        # mov %eax, %ecx
                 0x89, 0xD8,        # mov %ebx, %eax
                 0xE7, EXIT_PORT,   # out %eax, $0xf4
                 0xF4])             # hlt
PAYLOAD_EXIT_OFFSET = 6             # EIP at the payload's exit: just past the out


@dataclass
class Stage:
    code: int
    cr0: int
    cs_selector: int
    cs_base: int
    cs_db: int


@dataclass
class RomRun:
    stages: list[Stage] = field(default_factory=list)
    outcome: str = ""               # "entry", "hlt", "shutdown", "mmio", "other", "too many exits"
    ebx_at_entry: int | None = None
    eax_at_entry: int | None = None  # the protocol magic: 0 for PVH, 0x2badb002 for Multiboot
    entry_state: dict[str, int] = field(default_factory=dict)
    mmio_writes: list[int] = field(default_factory=list)
    exits: int = 0
    run_ns: int = 0                 # wall time from the first KVM_RUN to the last exit, host loop included


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int


def _ioctl(fd: int, request: int, arg: int | ctypes.Structure = 0) -> int:
    # libc's ioctl rather than fcntl.ioctl: the latter takes the argument as a signed C int, and
    # KVM_SET_TSS_ADDR's address does not fit one.
    ptr = ctypes.addressof(arg) if isinstance(arg, ctypes.Structure) else arg
    ret = _libc.ioctl(fd, request, ptr)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"ioctl {request:#x}: {os.strerror(err)}")
    return ret


def run_rom(image: bytes, *, start_info_magic: int = HVM_START_MAGIC) -> RomRun:
    """Map image (64 KiB, hand-off patched) read-only at 4 GiB - 64 KiB and run one vCPU from reset."""
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = vcpu = -1
    try:
        if _ioctl(kvm, KVM_GET_API_VERSION) != 12:
            raise RuntimeError("unexpected KVM API version")
        if not _ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM):
            raise RuntimeError("KVM has no read-only memory slots")
        vm = _ioctl(kvm, KVM_CREATE_VM, 0)
        _ioctl(vm, KVM_SET_TSS_ADDR, TSS_ADDR)

        ram = mmap.mmap(-1, RAM_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        rom = mmap.mmap(-1, len(image), mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        rom[:] = image
        struct_hdr = start_info_magic.to_bytes(4, "little") + (1).to_bytes(4, "little")  # magic, version
        ram[START_INFO_GPA:START_INFO_GPA + 8] = struct_hdr
        ram[ENTRY_GPA:ENTRY_GPA + len(PAYLOAD)] = PAYLOAD

        def hva(m: mmap.mmap) -> int:
            return ctypes.addressof(ctypes.c_char.from_buffer(m))

        for slot, flags, gpa, m in ((0, 0, 0, ram), (1, KVM_MEM_READONLY, (1 << 32) - len(image), rom)):
            region = kvm_userspace_memory_region(slot=slot, flags=flags, guest_phys_addr=gpa,
                                                 memory_size=len(m), userspace_addr=hva(m))
            _ioctl(vm, KVM_SET_USER_MEMORY_REGION, region)

        vcpu = _ioctl(vm, KVM_CREATE_VCPU, 0)
        run_size = _ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE)
        run = mmap.mmap(vcpu, run_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        result = RomRun()
        sregs, regs = kvm_sregs(), kvm_regs()
        t0 = time.perf_counter_ns()
        for _ in range(MAX_EXITS):
            _ioctl(vcpu, KVM_RUN)
            result.exits += 1
            result.run_ns = time.perf_counter_ns() - t0
            reason = int.from_bytes(run[RUN_EXIT_REASON:RUN_EXIT_REASON + 4], "little")
            if reason == KVM_EXIT_IO:
                direction, size = run[RUN_UNION], run[RUN_UNION + 1]
                port = int.from_bytes(run[RUN_UNION + 2:RUN_UNION + 4], "little")
                data_offset = int.from_bytes(run[RUN_UNION + 8:RUN_UNION + 16], "little")
                value = int.from_bytes(run[data_offset:data_offset + size], "little")
                if direction != KVM_EXIT_IO_OUT:
                    continue                    # reads return zeroes
                _ioctl(vcpu, KVM_GET_SREGS, sregs)
                if port == 0x80:
                    result.stages.append(Stage(value, sregs.cr0, sregs.cs.selector, sregs.cs.base,
                                               sregs.cs.db))
                elif port == EXIT_PORT:
                    _ioctl(vcpu, KVM_GET_REGS, regs)
                    result.outcome = "entry"
                    result.ebx_at_entry = value
                    result.eax_at_entry = regs.rcx & 0xFFFF_FFFF
                    result.entry_state = _entry_state(sregs, regs)
                    return result
            elif reason == KVM_EXIT_MMIO:
                # A write to the read-only ROM slot comes here; the ROM is meant never to do one.
                result.mmio_writes.append(int.from_bytes(run[RUN_UNION:RUN_UNION + 8], "little"))
            else:
                result.outcome = {KVM_EXIT_HLT: "hlt", KVM_EXIT_SHUTDOWN: "shutdown"}.get(
                    reason, f"exit reason {reason}")
                return result
        result.outcome = "too many exits"
        return result
    finally:
        for fd in (vcpu, vm, kvm):
            if fd >= 0:
                os.close(fd)


def _entry_state(sregs: kvm_sregs, regs: kvm_regs) -> dict[str, int]:
    state = {"cr0": sregs.cr0, "cr4": sregs.cr4, "efer": sregs.efer, "rflags": regs.rflags, "rip": regs.rip}
    for name in ("cs", "ds", "es", "ss"):
        seg = getattr(sregs, name)
        for attr in ("base", "limit", "selector", "type", "db", "s", "present"):
            state[f"{name}.{attr}"] = getattr(seg, attr)
    for attr in ("base", "limit", "type"):
        state[f"tr.{attr}"] = getattr(sregs.tr, attr)
    return state


def format_run(run: RomRun, names: dict[int, str]) -> str:
    """The run as text: one line per stage with CR0 and CS, then the outcome."""
    lines = []
    for st in run.stages:
        mode = "32-bit" if st.cs_db else "16-bit"
        pe = "PE=1" if st.cr0 & 1 else "PE=0"
        lines.append(f"post {st.code:#04x} {names.get(st.code, '?'):<18} cr0={st.cr0:#010x} {pe} "
                     f"cs={st.cs_selector:#06x} base={st.cs_base:#010x} {mode}")
    if run.outcome == "entry":
        lines.append(f"entry eip={run.entry_state['rip'] - PAYLOAD_EXIT_OFFSET:#x} eax={run.eax_at_entry:#x} "
                     f"ebx={run.ebx_at_entry:#x} "
                     f"cr0={run.entry_state['cr0']:#x} cr4={run.entry_state['cr4']:#x} "
                     f"eflags={run.entry_state['rflags']:#x}")
    else:
        why = {"shutdown": "KVM_EXIT_SHUTDOWN (triple fault)", "hlt": "KVM_EXIT_HLT (the ROM gave up)"}
        lines.append(f"stopped: {why.get(run.outcome, run.outcome)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here.parent.parent))
    from pyvmm.loader.firmware import BOOT_STAGES, MULTIBOOT_MAGIC, load_firmware

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("elf", nargs="?", default=str(here.parent / "build" / "firmware.elf"))
    parser.add_argument("--no-magic", action="store_true", help="put a wrong hvm_start_info magic")
    parser.add_argument("--no-handoff", action="store_true", help="leave the hand-off block empty")
    parser.add_argument("--multiboot", action="store_true", help="hand off as Multiboot (EAX = 0x2badb002)")
    parser.add_argument("--json", action="store_true", help="print the whole run as JSON")
    args = parser.parse_args(argv)
    fw = load_firmware(args.elf)
    magic = MULTIBOOT_MAGIC if args.multiboot else 0
    image = fw.image if args.no_handoff else fw.with_handoff(ENTRY_GPA, START_INFO_GPA, magic)
    result = run_rom(image, start_info_magic=0 if args.no_magic else HVM_START_MAGIC)
    print(json.dumps(asdict(result), indent=1) if args.json else format_run(result, BOOT_STAGES))
    return 0 if result.outcome == "entry" else 1


if __name__ == "__main__":
    sys.exit(main())
