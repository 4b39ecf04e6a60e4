"""The vCPU thread: KVM_RUN, one look at each exit's reason, the buses for I/O, and the crash dump.

The loop depends on four things only: its vCPU fd, the two buses (whose ``dispatch`` serves port I/O
and MMIO exits from the shared kvm_run page), a run control (``stop_requested``, ``hold_requested``
and the calls a stopping guest makes, a debug exit and a debugger's breakpoint among them) and guest
memory for reading code at RIP.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from . import trace
from .arch.x86 import cpu, paging
from .errors import GuestCrash, KvmError
from .kvm import abi, runlayout
from .kvm.abi import KvmExit, KvmInternalError, KvmSystemEvent

if TYPE_CHECKING:
    from .arch.x86.poweron import VcpuPowerOn
    from .bus import MmioBus, PioBus
    from .kvm import exits
    from .kvm.vcpufd import VcpuFd
    from .memory import GuestMemory

log = logging.getLogger("pyvmm.vcpu")

KICK_SIGNAL = signal.SIGUSR1
_current = threading.local()
EXIT_REASONS = 256        # KVM_EXIT_* values in <linux/kvm.h> end in the 40s; room for every one to come


def current_vcpu() -> Vcpu | None:
    """The vCPU whose exit is being handled on this thread (devices use it for the boot trace)."""
    return getattr(_current, "vcpu", None)


class VcpuControl(Protocol):
    """What the run loop reads and calls (pyvmm.control.RunControl)."""

    stop_requested: bool
    hold_requested: bool

    def park(self, vcpu: Vcpu) -> None: ...

    def guest_stopped(self, vcpu: Vcpu, reason: str, exit_code: int) -> None: ...

    def guest_crashed(self, vcpu: Vcpu, reason: str) -> None: ...

    def guest_reset(self, vcpu: Vcpu, reason: str) -> None: ...

    def guest_poweroff(self, reason: str) -> None: ...

    def vcpu_failed(self, vcpu: Vcpu, exc: BaseException) -> None: ...

    def count_fixup(self, name: str) -> None: ...

    def debug_exit(self, vcpu: Vcpu, ex: exits.DebugExit) -> None: ...

    def breakpoint_hit(self, vcpu: Vcpu, pc: int) -> bool: ...


class Vcpu:
    """One virtual CPU and the thread that runs it."""

    def __init__(self, fd: VcpuFd, index: int, *, pio: PioBus, mmio: MmioBus, control: VcpuControl,
                 memory: GuestMemory, read_rom: Callable[[int, int], bytes | None] | None = None) -> None:
        self.fd = fd
        self.index = index
        self.pio = pio
        self.mmio = mmio
        self.control = control
        self.memory = memory
        self.read_rom = read_rom or (lambda gpa, n: None)
        self.thread: threading.Thread | None = None
        # Exits to user space by KVM_EXIT_* reason: the loop's one count per exit (`pyvmm top`, bench).
        self.exit_counts = [0] * EXIT_REASONS
        self.paused = threading.Event()        # set by this thread while it is parked
        self.power_on: VcpuPowerOn | None = None   # the state a reset restores (set by the builder)

    @property
    def exits(self) -> int:
        """Exits to user space since the vCPU started (KVM_RUN returns that were not an EINTR)."""
        return sum(self.exit_counts)

    def exits_by_reason(self) -> dict[str, int]:
        """Non-zero exit counts by the KVM_EXIT_* name (without the prefix): {"IO": 5, "MMIO": 2}."""
        out = {}
        for reason, n in enumerate(self.exit_counts):
            if n:
                try:
                    out[KvmExit(reason).name] = n
                except ValueError:
                    out[f"reason {reason}"] = n
        return out

    # --- control from other threads -----------------------------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(target=self._thread_main, name=f"vcpu{self.index}", daemon=True)
        self.thread.start()

    def is_running(self) -> bool:
        t = self.thread
        return t is not None and t.is_alive()

    def kick(self) -> None:
        """Make KVM_RUN return: immediate_exit covers the window before entry, the signal the rest.

        On the vCPU's own thread (a debug stop it requested itself) immediate_exit alone does it: the
        next KVM_RUN finishes the instruction of the exit being served and returns at once."""
        run = self.fd.kvm_run
        if run is None:          # closed
            return
        run.immediate_exit = 1
        t = self.thread
        if t is not None and t.is_alive() and t.ident is not None and t is not threading.current_thread():
            try:
                signal.pthread_kill(t.ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def join(self, timeout: float) -> None:
        t = self.thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    # --- the thread ----------------------------------------------------------------------------

    def _thread_main(self) -> None:
        _current.vcpu = self
        trace.set_current_vcpu(self.index)
        try:
            self._loop()
        except BaseException as exc:  # a pyvmm bug on a vCPU thread: dump, stop, re-raise in main
            self.control.vcpu_failed(self, exc)

    def _loop(self) -> None:
        ctl = self.control
        fd = self.fd.fd
        buf = self.fd.run_mmap
        kvm_run = self.fd.kvm_run
        assert kvm_run is not None, "the vCPU fd was closed before its thread ran"
        run = fcntl.ioctl
        KVM_RUN = abi.KVM_RUN
        # exit_reason is a little-endian u32 and every KVM_EXIT_* is below 256 (a unit test pins both):
        # its first byte is the reason, one index into the shared page instead of an unpack per exit.
        reason_at = runlayout.EXIT_REASON_OFFSET
        pio = self.pio.dispatch
        mmio = self.mmio.dispatch
        EXIT_IO, EXIT_MMIO = int(KvmExit.IO), int(KvmExit.MMIO)
        counts = self.exit_counts
        if ctl.hold_requested:           # -S: held before the first instruction
            ctl.park(self)
            if ctl.stop_requested:
                return
        while True:
            try:
                run(fd, KVM_RUN)
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN):
                    kvm_run.immediate_exit = 0
                    if ctl.stop_requested:
                        return
                    if ctl.hold_requested:
                        ctl.park(self)
                        if ctl.stop_requested:
                            return
                        # A bus may have changed its dispatch while we were held (count_accesses).
                        pio, mmio = self.pio.dispatch, self.mmio.dispatch
                    continue
                raise KvmError("KVM_RUN", e.errno or 0) from None
            reason = buf[reason_at]
            counts[reason] += 1          # the exit counter, by reason (KVM's reasons are all < EXIT_REASONS)
            if reason == EXIT_IO:
                pio(buf)
            elif reason == EXIT_MMIO:
                mmio(buf)
            else:
                from .kvm import exits  # the rare exits: decoded once into a typed value

                if self._slow_exit(exits.decode(kvm_run)):
                    return
            if ctl.stop_requested:
                return

    def _slow_exit(self, ex) -> bool:
        """The rare exits (a typed value from kvm.exits.decode); True when the VM must stop."""
        from .kvm import exits

        ctl = self.control
        match ex:
            case exits.HltExit():
                # Only without an in-kernel irqchip; pyvmm always has one, so a halt here is final.
                ctl.guest_stopped(self, "the guest halted", exit_code=0)
                return True
            case exits.ShutdownExit():
                ctl.guest_crashed(self, "guest triple fault (KVM_EXIT_SHUTDOWN)")
                return True
            case exits.FailEntryExit(reason, cpu_):
                ctl.guest_crashed(self, f"KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on cpu {cpu_}")
                return True
            case exits.InternalErrorExit():
                code = ex.insn_bytes or self._code_at_rip()
                if ex.suberror == KvmInternalError.EMULATION and self._emulation_gap(code):
                    return False
                detail = f"KVM_EXIT_INTERNAL_ERROR ({ex.suberror_name})"
                if code:
                    sregs = self.fd.get_sregs()
                    rip = self.fd.get_regs().rip
                    detail += (f": the host cannot emulate `{cpu.disassemble(code, rip, cpu.code_bits(sregs))}`"
                               f" (bytes {code[:8].hex(' ')})")
                ctl.guest_crashed(self, detail)
                return True
            case exits.DebugExit():
                # A single step, a debug register or a #BP the debugger asked KVM for: the run
                # control stops every vCPU (this one parks at its next KVM_RUN).
                ctl.debug_exit(self, ex)
                return False
            case exits.SystemEventExit(type=t):
                if t == KvmSystemEvent.SHUTDOWN:
                    ctl.guest_poweroff("the guest powered off")
                elif t == KvmSystemEvent.RESET:
                    ctl.guest_reset(self, "the guest requested a reset (KVM_SYSTEM_EVENT_RESET)")
                else:
                    ctl.guest_crashed(self, f"KVM_EXIT_SYSTEM_EVENT {ex.type_name}")
                    return True
                return ctl.stop_requested      # a reboot or -no-shutdown: this thread goes on
            case _:
                ctl.guest_crashed(self, f"unexpected exit {ex}")
                return True

    # --- emulation gaps of the host ------------------------------------------------------------

    def _code_at_rip(self, n: int = 16) -> bytes:
        try:
            regs, sregs = self.fd.get_regs(), self.fd.get_sregs()
            gpa = paging.translate(self.memory, sregs, cpu.linear_rip(regs, sregs))
            if gpa is not None and self.memory.contains(gpa, n):
                return self.memory.read(gpa, n)
        except Exception:
            pass
        return b""

    def _emulation_gap(self, code: bytes) -> bool:
        """Finish, in the VMM, an instruction the host's emulator refused (a nested kvm_pvm host fails
        on a few): `int3` becomes the #BP it should raise, `fwait` (nothing to wait for: pyvmm's x87
        state has no pending exception) is skipped, a 32-bit `iretd` is done here (arch/x86/cpu.py's
        finish_iret32).  Counted by the run control."""
        if not code:
            return False
        if code[0] == 0xCC:
            regs, sregs = self.fd.get_regs(), self.fd.get_sregs()
            if self.control.breakpoint_hit(self, cpu.linear_rip(regs, sregs)):
                return True      # a debugger's breakpoint: the machine stops with RIP at the int3
            # int3 is a trap: #BP is delivered with RIP after the instruction.  pyvmm steps over it
            # and injects #BP as an exception, as the nested kvm_pvm host delivers it (the tiny
            # guest's scenario=gaps checks the handler runs and returns past the int3); a VMX host
            # runs int3 itself and never exits here.
            cpu.inject_breakpoint(self.fd, regs)
            name = "int3 -> #BP injected"
        elif code[0] == 0x9B:                    # fwait
            regs = self.fd.get_regs()
            regs.rip += 1
            self.fd.set_regs(regs)
            name = "fwait skipped"
        elif code[0] == 0xCF:                    # iretd in 32-bit protected mode (a Multiboot kernel's)
            regs, sregs = self.fd.get_regs(), self.fd.get_sregs()
            cs = sregs.cs.selector
            if not cpu.finish_iret32(self.memory, regs, sregs):
                return False
            if sregs.cs.selector != cs:
                self.fd.set_sregs(sregs)
            self.fd.set_regs(regs)
            name = "iretd (32-bit) done by pyvmm"
        else:
            return False
        self.control.count_fixup(name)
        return True

    # --- inspection ---------------------------------------------------------------------------

    def register_dump(self) -> str:
        """Registers and the code bytes at RIP, for crash reports and `info registers`."""
        regs = self.fd.get_regs()
        sregs = self.fd.get_sregs()
        text = cpu.format_registers(regs, sregs)
        gpa = paging.translate(self.memory, sregs, cpu.linear_rip(regs, sregs))
        code = self._code_at_rip()
        if code:
            text += f"\ncode at RIP (gpa {gpa:#x}): {code.hex(' ')}"
        elif gpa is not None and (rom := self.read_rom(gpa, 16)):
            text += f"\ncode at RIP (firmware ROM, gpa {gpa:#x}): {rom.hex(' ')}"
        return text


def _kick(signum, frame) -> None:
    """The kick signal only interrupts KVM_RUN; there is nothing to do on delivery."""


def install_kick_handler() -> None:
    """A no-op handler, so the kick signal interrupts KVM_RUN instead of killing the process.

    Python sets signal handlers only from the main thread: a machine started on another thread
    needs the handler installed on the main thread first (this function, called there)."""
    if signal.getsignal(KICK_SIGNAL) is _kick:
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(KICK_SIGNAL, _kick)
        return
    from .errors import PyvmmError

    raise PyvmmError("a Machine started off the main thread needs pyvmm.vcpu.install_kick_handler() "
                     "called on the main thread first (it makes SIGUSR1 interrupt KVM_RUN)")


__all__ = ["Vcpu", "VcpuControl", "current_vcpu", "install_kick_handler", "GuestCrash"]
