"""What this host's KVM does with each KVM_GUESTDBG_* mechanism, measured once on a scratch VM.

Hosts differ (docs/gdb.md): on VMX and SVM every mechanism traps as the KVM API documents; a nested
kvm_pvm host single-steps and delivers debug-register execution breakpoints, but data breakpoints
never fire and an ``int3`` comes back as an emulation failure instead of a debug exit.  The gdbstub
picks its mechanisms from what this probe sees, not from the host's name.  The probe runs four-
instruction guests in 32-bit protected mode (the mode of the tiny guest's and Linux's PVH entry).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..arch.x86 import cpu
from ..kvm import abi

if TYPE_CHECKING:
    from ..kvm.system import Kvm

CODE = 0x1000
DATA = 0x2000
# mov $1,%eax; mov %eax,(DATA); nop; out %al,$0xf4 (the probe's end)
_PROGRAM = b"\xb8\x01\x00\x00\x00" + b"\xa3" + DATA.to_bytes(4, "little") + b"\x90" + b"\xe6\xf4"
_STORE = CODE + 5            # the instruction that writes DATA
DR6_BS = 1 << 14


@dataclass(frozen=True)
class HostDebug:
    """The mechanisms that work on this host."""

    single_step: bool            # KVM_GUESTDBG_SINGLESTEP gives KVM_EXIT_DEBUG
    hw_breakpoints: bool         # DR0-3 execution breakpoints give KVM_EXIT_DEBUG
    hw_watchpoints: bool         # DR0-3 data (write) breakpoints give KVM_EXIT_DEBUG
    int3: str                    # "debug-exit" (KVM_GUESTDBG_USE_SW_BP traps), "emulation-failure", or "none"
    block_irq: bool              # KVM_GUESTDBG_BLOCKIRQ: steps do not wander into interrupt handlers

    def summary(self) -> str:
        yes = lambda b: "yes" if b else "no"  # noqa: E731
        return (f"single-step {yes(self.single_step)}, hardware breakpoints {yes(self.hw_breakpoints)}, "
                f"hardware watchpoints {yes(self.hw_watchpoints)}, int3 {self.int3}, "
                f"KVM_GUESTDBG_BLOCKIRQ {yes(self.block_irq)}")


_cached: HostDebug | None = None


def host_debug(kvm: Kvm) -> HostDebug:
    """The probe's result, measured on the first call (a few milliseconds) and kept."""
    global _cached
    if _cached is None:
        _cached = probe(kvm)
    return _cached


def probe(kvm: Kvm) -> HostDebug:
    """Measure it now (a scratch VM, four small guests); host_debug() keeps the result."""
    bits = kvm.check_extension(abi.KvmCap.SET_GUEST_DEBUG2)      # 0 on a kernel without it
    vm = kvm.create_vm()
    ram = mmap.mmap(-1, 0x3000, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        vm.set_tss_addr(0xFFFB_D000)
        vm.set_user_memory_region(0, len(ram), ctypes.addressof(ctypes.c_char.from_buffer(ram)))
        vcpu = vm.create_vcpu(0)
        try:
            step = _run(vcpu, ram, _PROGRAM, abi.KVM_GUESTDBG_SINGLESTEP)
            single_step = step is not None and step[0] == 1 and bool(step[1] & DR6_BS)
            hw = _run(vcpu, ram, _PROGRAM, abi.KVM_GUESTDBG_USE_HW_BP, dr=(_STORE, 0x1))
            hw_breakpoints = hw is not None and hw[0] == 1 and bool(hw[1] & 1)
            # L0, R/W0 = 01 (data writes), LEN0 = 11 (4 bytes)
            wp = _run(vcpu, ram, _PROGRAM, abi.KVM_GUESTDBG_USE_HW_BP, dr=(DATA, 0x1 | 0b01 << 16 | 0b11 << 18))
            hw_watchpoints = wp is not None and wp[0] == 1 and bool(wp[1] & 1)
            bp = _run(vcpu, ram, b"\xcc" + _PROGRAM, abi.KVM_GUESTDBG_USE_SW_BP)
            int3 = "debug-exit" if bp is not None and bp[0] == 3 else \
                "emulation-failure" if bp == (-1, 0) else "none"
        finally:
            vcpu.close()
    finally:
        vm.close()
        try:
            ram.close()
        except BufferError:
            pass
    return HostDebug(single_step, hw_breakpoints, hw_watchpoints, int3,
                     bool(bits & abi.KVM_GUESTDBG_BLOCKIRQ))


def _run(vcpu, ram: mmap.mmap, program: bytes, control: int, dr: tuple[int, int] | None = None,
         ) -> tuple[int, int] | None:
    """Run program from CODE with these guest-debug bits: (exception, dr6) of the first debug exit,
    (-1, 0) for an emulation failure, None if the program ran to its end (or did anything else)."""
    ram[CODE : CODE + len(program)] = program
    ram[DATA : DATA + 4] = bytes(4)
    cpu.set_pvh_entry_state(vcpu, CODE, 0)
    debugreg = (dr[0], 0, 0, 0, 0, 0, 0, dr[1]) if dr else ()
    vcpu.set_guest_debug(abi.KVM_GUESTDBG_ENABLE | control, debugreg)
    try:
        for _ in range(16):
            try:
                fcntl.ioctl(vcpu.fd, abi.KVM_RUN)
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN):
                    continue
                return None
            run = vcpu.kvm_run
            if run.exit_reason == abi.KvmExit.DEBUG:
                return run.debug.exception, run.debug.dr6
            if run.exit_reason == abi.KvmExit.INTERNAL_ERROR:
                return -1, 0
            return None
        return None
    finally:
        vcpu.set_guest_debug(0)
