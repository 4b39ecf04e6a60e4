"""The vCPU thread: KVM_RUN, one decode of each exit, one dispatch to the buses, and the crash dump."""

from __future__ import annotations

import errno
import fcntl
import logging
import signal
import threading
from typing import TYPE_CHECKING

from . import trace
from .arch.x86 import cpu
from .errors import GuestCrash, KvmError
from .kvm import abi, runlayout
from .kvm.abi import KvmExit, KvmInternalError, KvmSystemEvent

if TYPE_CHECKING:
    from .vm import Machine

log = logging.getLogger("pyvmm.vcpu")

KICK_SIGNAL = signal.SIGUSR1
_current = threading.local()


def current_vcpu() -> "Vcpu | None":
    """The vCPU whose exit is being handled on this thread (devices use it for the boot trace)."""
    return getattr(_current, "vcpu", None)


class Vcpu:
    """One virtual CPU and the thread that runs it."""

    def __init__(self, machine: "Machine", fd, index: int) -> None:
        self.machine = machine
        self.fd = fd
        self.index = index
        self.thread: threading.Thread | None = None
        self.exits = 0
        self.unhandled_io = 0
        self.paused = threading.Event()        # set by this thread while it waits in pause

    # --- control from other threads -----------------------------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(target=self._thread_main, name=f"vcpu{self.index}", daemon=True)
        self.thread.start()

    def kick(self) -> None:
        """Make KVM_RUN return: immediate_exit covers the window before entry, the signal the rest."""
        run = self.fd.kvm_run
        if run is None:          # closed
            return
        run.immediate_exit = 1
        t = self.thread
        if t is not None and t.is_alive() and t.ident is not None:
            try:
                signal.pthread_kill(t.ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    # --- the thread ----------------------------------------------------------------------------

    def _thread_main(self) -> None:
        _current.vcpu = self
        trace.set_current_vcpu(self.index)
        try:
            self._loop()
        except BaseException as exc:  # a pyvmm bug on a vCPU thread: dump, stop, re-raise in main
            self.machine._vcpu_failed(self, exc)

    def _loop(self) -> None:
        m = self.machine
        fd = self.fd.fd
        buf = self.fd.run_mmap
        run = fcntl.ioctl
        KVM_RUN = abi.KVM_RUN
        reason_of = runlayout.EXIT_REASON.unpack_from
        reason_at = runlayout.EXIT_REASON_OFFSET
        io_of = runlayout.IO.unpack_from
        mmio_of = runlayout.MMIO.unpack_from
        union = runlayout.EXIT_UNION_OFFSET
        mmio_data = runlayout.MMIO_DATA_OFFSET
        pio_ports = m.pio_ports            # port -> (device, base): a dict is the cheapest lookup
        mmio_find = m.mmio_bus.find
        mmio_page = m.mmio_bus.pages.get     # 4 KiB page -> range: one dict probe for a device window
        EXIT_IO, EXIT_MMIO = int(KvmExit.IO), int(KvmExit.MMIO)
        IO_IN, IO_OUT = abi.KVM_EXIT_IO_IN, abi.KVM_EXIT_IO_OUT
        while True:
            try:
                run(fd, KVM_RUN)
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN):
                    self.fd.kvm_run.immediate_exit = 0
                    if m._stop_requested:
                        return
                    if m._pause_requested:
                        self._wait_while_paused()
                        if m._stop_requested:
                            return
                    continue
                raise KvmError("KVM_RUN", e.errno) from None
            self.exits += 1
            reason = reason_of(buf, reason_at)[0]
            if reason == EXIT_IO:
                direction, size, port, count, off = io_of(buf, union)
                entry = pio_ports.get(port)
                if entry is None:
                    self.unhandled_io += 1
                    if direction == IO_IN:
                        buf[off : off + size * count] = b"\xff" * (size * count)
                elif count == 1:                  # the common case: one in/out, no string I/O
                    dev, base = entry
                    if direction == IO_OUT:
                        dev.write(port - base, size, buf[off] if size == 1 else
                                  int.from_bytes(buf[off : off + size], "little"))
                    elif size == 1:
                        buf[off] = dev.read(port - base, 1) & 0xFF
                    else:
                        buf[off : off + size] = (dev.read(port - base, size) & ((1 << (8 * size)) - 1)).to_bytes(
                            size, "little")
                else:                             # rep ins/outs: count items of size bytes
                    dev, base = entry
                    mask = (1 << (8 * size)) - 1
                    for p in range(off, off + size * count, size):
                        if direction == IO_OUT:
                            dev.write(port - base, size, int.from_bytes(buf[p : p + size], "little"))
                        else:
                            buf[p : p + size] = (dev.read(port - base, size) & mask).to_bytes(size, "little")
            elif reason == EXIT_MMIO:
                gpa, data, length, is_write = mmio_of(buf, union)
                r = mmio_page(gpa >> 12)
                if r is None or not r.base <= gpa < r.base + r.size:
                    r = mmio_find(gpa)
                if r is None:
                    # Nothing there: reads float high as on a PC bus, writes are dropped; both are
                    # guest errors worth a (rate-limited) line.
                    self.unhandled_io += 1
                    if not is_write:
                        buf[mmio_data : mmio_data + length] = b"\xff" * length
                    m.mmio_errors(f"{'write to' if is_write else 'read of'} unmapped gpa {gpa:#x} "
                                  f"({length} bytes)")
                elif is_write:
                    r.device.write(gpa - r.base, length, int.from_bytes(data[:length], "little"))
                else:
                    value = r.device.read(gpa - r.base, length) & ((1 << (8 * length)) - 1)
                    buf[mmio_data : mmio_data + length] = value.to_bytes(length, "little")
            else:
                from .kvm import exits   # the rare exits: decoded once into a typed value

                if self._slow_exit(exits.decode(self.fd.kvm_run)):
                    return
            if m._stop_requested:
                return

    def _wait_while_paused(self) -> None:
        m = self.machine
        self.paused.set()
        with m._pause_cond:
            while m._pause_requested and not m._stop_requested:
                m._pause_cond.wait(0.5)
        self.paused.clear()

    def _slow_exit(self, ex) -> bool:
        """The rare exits (a typed value from kvm.exits.decode); True when the VM must stop."""
        from .kvm import exits

        m = self.machine
        match ex:
            case exits.HltExit():
                # Only without an in-kernel irqchip; pyvmm always has one, so a halt here is final.
                m._guest_stopped(self, "the guest halted", exit_code=0)
                return True
            case exits.ShutdownExit():
                m._guest_crashed(self, "guest triple fault (KVM_EXIT_SHUTDOWN)")
                return True
            case exits.FailEntryExit(reason, cpu_):
                m._guest_crashed(self, f"KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on cpu {cpu_}")
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
                m._guest_crashed(self, detail)
                return True
            case exits.SystemEventExit(type=t):
                if t == KvmSystemEvent.SHUTDOWN:
                    m._guest_stopped(self, "the guest powered off", exit_code=0)
                elif t == KvmSystemEvent.RESET:
                    m._guest_stopped(self, "the guest requested a reset; pyvmm does not reboot, stopping",
                                     exit_code=0)
                else:
                    m._guest_crashed(self, f"KVM_EXIT_SYSTEM_EVENT {ex.type_name}")
                return True
            case _:
                m._guest_crashed(self, f"unexpected exit {ex}")
                return True

    # --- emulation gaps of the host ------------------------------------------------------------

    def _code_at_rip(self, n: int = 16) -> bytes:
        try:
            regs, sregs = self.fd.get_regs(), self.fd.get_sregs()
            gpa = cpu.translate(self.machine.memory, sregs, cpu.linear_rip(regs, sregs))
            if gpa is not None and self.machine.memory.contains(gpa, n):
                return self.machine.memory.read(gpa, n)
        except Exception:
            pass
        return b""

    def _emulation_gap(self, code: bytes) -> bool:
        """Finish, in the VMM, an instruction the host's emulator refused (a nested kvm_pvm host fails
        on a few): `int3` becomes the #BP it should raise, `fwait` (nothing to wait for: pyvmm's x87
        state has no pending exception) is skipped.  Counted in Machine.emulation_fixups."""
        if not code:
            return False
        if code[0] == 0xCC:
            # int3 is a trap: #BP is delivered with RIP after the instruction.  pyvmm steps over it
            # and injects #BP as an exception, as the nested kvm_pvm host delivers it (the tiny
            # guest's scenario=gaps checks the handler runs and returns past the int3); a VMX host
            # runs int3 itself and never exits here.
            regs = self.fd.get_regs()
            regs.rip += 1
            self.fd.set_regs(regs)
            events = self.fd.get_vcpu_events()
            events.exception.injected = 1
            events.exception.nr = 3
            events.exception.has_error_code = 0
            self.fd.set_vcpu_events(events)
            name = "int3 -> #BP injected"
        elif code[0] == 0x9B:                    # fwait
            regs = self.fd.get_regs()
            regs.rip += 1
            self.fd.set_regs(regs)
            name = "fwait skipped"
        else:
            return False
        fixups = self.machine.emulation_fixups
        fixups[name] = fixups.get(name, 0) + 1
        return True

    # --- inspection ---------------------------------------------------------------------------

    def register_dump(self) -> str:
        """Registers and the code bytes at RIP, for crash reports and `info registers`."""
        regs = self.fd.get_regs()
        sregs = self.fd.get_sregs()
        text = cpu.format_registers(regs, sregs)
        gpa = cpu.translate(self.machine.memory, sregs, cpu.linear_rip(regs, sregs))
        code = self._code_at_rip()
        if code:
            text += f"\ncode at RIP (gpa {gpa:#x}): {code.hex(' ')}"
        elif gpa is not None and self.machine.firmware_image is not None and gpa >= self.machine.firmware_base:
            off = gpa - self.machine.firmware_base
            code = self.machine.firmware_image[off : off + 16]
            text += f"\ncode at RIP (firmware ROM, gpa {gpa:#x}): {code.hex(' ')}"
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


__all__ = ["Vcpu", "current_vcpu", "install_kick_handler", "GuestCrash"]
