"""The machine's debugger: guest breakpoints and watchpoints, virtio breakpoints, and the one stop they share.

The Debugger is what the run control calls when a vCPU meets a debug exit or an int3 that pyvmm
planted, what the virtio breakpoints call when they fire, and the target a gdb session steers
(pyvmm.debug.gdbstub.DebugTarget).  Every stop goes through request_stop(): it holds every vCPU at
once (RunControl.debug_stop, which never waits: it is called on vCPU threads, under device locks),
remembers why and on which vCPU, and tells the listeners (the gdbstub, the monitor's console).

The mechanism behind each gdb breakpoint kind is chosen from what this host's KVM does (probe.py):
execution breakpoints (``break``, ``hbreak``) use DR0-DR3 through KVM_SET_GUEST_DEBUG while one is
free and an int3 patched into guest RAM after that; write watchpoints use a data debug register
where the host delivers data breakpoints and a read-only page (watch.py) where it does not; stepping
is KVM_GUESTDBG_SINGLESTEP, with interrupts blocked where KVM offers it.  docs/gdb.md has the table.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..arch.x86 import cpu as x86cpu
from ..arch.x86 import paging
from ..errors import GuestMemoryError
from ..kvm import abi
from . import x86
from .stop import SIGINT, StopEvent
from .vbreak import VirtioBreakpointHit, VirtioBreakpoints

if TYPE_CHECKING:
    from ..bus import MmioBus
    from ..control import RunControl
    from ..ioeventfd import NotifyEventfds
    from ..kvm.exits import DebugExit
    from ..kvm.system import Kvm
    from ..kvm.vmfd import VmFd
    from ..memory import GuestMemory
    from ..vcpu import Vcpu
    from ..virtio.mmio import VirtioMmio
    from .probe import HostDebug
    from .watch import PageWatch

log = logging.getLogger("pyvmm.debug")

NUM_DEBUG_REGISTERS = 4
REAL_MODE_REACH = 0x100000      # real-mode code runs below 1 MiB (pyvmm's firmware: in ROM, unpatchable)
DR6_BS = 1 << 14
_DR7_RW = {"hw": 0b00, "sw": 0b00, "write": 0b01, "access": 0b11}
_DR7_LEN = {1: 0b00, 2: 0b01, 4: 0b11, 8: 0b10}
StopListener = Callable[[StopEvent], None]


@dataclass
class GuestBreakpoint:
    """One breakpoint or watchpoint gdb asked for, and how pyvmm implements it."""

    kind: str                       # "sw", "hw", "write", "access"
    addr: int                       # a linear (virtual) address
    length: int
    slots: list[int] = field(default_factory=list)   # debug registers used
    int3_gpa: int | None = None     # where an int3 was patched (sw beyond the debug registers)
    original: int = 0               # the byte the int3 replaced
    pages: list[tuple[int, int]] = field(default_factory=list)   # watch: (gpa, length) on read-only pages

    @property
    def mechanism(self) -> str:
        if self.int3_gpa is not None:
            return "int3"
        if self.pages:
            return "read-only page"
        return "debug register"


class Debugger:
    """Debug state and stops of one machine (see the module docstring)."""

    def __init__(self, *, control: RunControl, vcpus: Sequence[Vcpu], memory: GuestMemory,
                 read_physical: Callable[[int, int], bytes], kvm: Kvm, vmfd: VmFd, mmio_bus: MmioBus,
                 transports: Sequence[VirtioMmio], notify_eventfds: dict[str, NotifyEventfds]) -> None:
        self.control = control
        self.vcpus = vcpus
        self.memory = memory
        self.read_physical = read_physical
        self.kvm = kvm
        self.vmfd = vmfd
        self.mmio_bus = mmio_bus
        self.notify_eventfds = notify_eventfds
        self.vbreaks = VirtioBreakpoints(transports, self._vbreak_hit, self._notify_exits)
        self.transports = list(transports)
        self.breakpoints: dict[tuple[str, int, int], GuestBreakpoint] = {}
        self.stop: StopEvent | None = None
        self.stops = 0
        self.run_monitor: Callable[[str], str] = lambda command: "no monitor on this machine\n"
        self.kill_machine: Callable[[], None] = lambda: control.stop(0, "killed by gdb", event_reason="host-signal")
        self._listeners: list[StopListener] = []
        self._lock = threading.RLock()
        self._step: int | None = None          # the vCPU the next resume single-steps
        self._stepping: int | None = None      # the vCPU single-stepping now
        self._applied: dict[int, tuple[int, tuple[int, ...]]] = {}   # vCPU -> (control, debugreg) set in KVM
        self._host: HostDebug | None = None
        self._watch: PageWatch | None = None
        self._last_cpu = 0
        self._resuming = False                 # the device serves held notifies: stops go to _restop
        self._restop: StopEvent | None = None
        control.debug = self

    # --- listeners ------------------------------------------------------------------------------------

    def add_stop_listener(self, cb: StopListener) -> None:
        """cb(stop) on the thread that stopped the machine; it must not block."""
        self._listeners.append(cb)

    def remove_stop_listener(self, cb: StopListener) -> None:
        if cb in self._listeners:
            self._listeners.remove(cb)

    @property
    def host(self) -> HostDebug:
        """What this host's KVM delivers (probed once, on first use)."""
        if self._host is None:
            from .probe import host_debug

            self._host = host_debug(self.kvm)
            log.info("guest debugging on this host: %s", self._host.summary())
        return self._host

    # --- stopping -------------------------------------------------------------------------------------

    def request_stop(self, ev: StopEvent) -> bool:
        """Stop every vCPU for ev, from any thread, without waiting; False if already stopped."""
        with self._lock:
            if self._resuming:                # the machine is stopped and stays so: see before_resume
                if self._restop is None:
                    self._restop = ev
                return True
            if not self.control.debug_stop():
                return False
            if ev.cpu is None:
                ev = StopEvent(self._last_cpu, ev.reason, ev.signal, ev.address, ev.text)
            self.stop = ev
            self.stops += 1
            self._stepping = None
            if ev.cpu is not None:
                self._last_cpu = ev.cpu
        self._announce(ev)
        return True

    def _announce(self, ev: StopEvent) -> None:
        for cb in list(self._listeners):
            try:
                cb(ev)
            except Exception:  # noqa: BLE001 - one listener's bug must not keep the stop from the others
                log.exception("stop listener failed")

    def wait_stopped(self, timeout: float) -> StopEvent | None:
        """The current stop once every vCPU is out of KVM_RUN; None if the machine is not (or no longer)
        stopped for a debugger."""
        deadline = time.monotonic() + timeout
        with self._lock:
            ev = self.stop
        if ev is None or not self.control.debug_stopped:
            return None
        for v in self.vcpus:
            while not v.paused.wait(0.02):
                if not self.control.debug_stopped or self.control.stop_requested or not v.is_running():
                    break
                if time.monotonic() > deadline:
                    return None
                v.kick()
        return ev if self.control.debug_stopped else None

    @property
    def stopped(self) -> bool:
        return self.control.debug_stopped

    def current_cpu(self) -> int:
        return self._last_cpu

    # --- from the vCPU threads (RunControl.debug) -----------------------------------------------------

    def debug_exit(self, vcpu: Any, ex: DebugExit) -> None:
        """A KVM_EXIT_DEBUG: a step, a debug register, or (VMX, SVM) an int3 with KVM_GUESTDBG_USE_SW_BP."""
        if ex.exception == 3:
            if self._int3_at(ex.pc) is not None:
                self.request_stop(StopEvent(vcpu.index, "swbreak"))
            else:
                x86cpu.inject_breakpoint(vcpu.fd)   # the guest's own int3: deliver its #BP
            return
        hit = ex.dr6 & 0xF
        for bp in self.breakpoints.values():
            if any(hit >> slot & 1 for slot in bp.slots):
                reason = {"sw": "swbreak", "hw": "hwbreak"}.get(bp.kind, "watch")
                address = bp.addr if reason == "watch" else None
                self.request_stop(StopEvent(vcpu.index, reason, address=address))
                return
        if ex.dr6 & DR6_BS and self._stepping == vcpu.index:
            self.request_stop(StopEvent(vcpu.index, "step"))
            return
        # A debug exit for a breakpoint gdb has removed since, or a step the stop overtook: the vCPU
        # goes on (it parks at once if the machine is stopped).
        log.debug("stale debug exit on vCPU %d: %s", vcpu.index, ex)

    def breakpoint_hit(self, vcpu: Any, pc: int) -> bool:
        """An int3 at linear pc came back as an emulation failure (kvm_pvm): pyvmm's, or the guest's?"""
        if self._int3_at(pc) is None:
            return False
        self.request_stop(StopEvent(vcpu.index, "swbreak"))
        return True

    def _int3_at(self, pc: int) -> GuestBreakpoint | None:
        for bp in self.breakpoints.values():
            if bp.int3_gpa is not None and bp.addr == pc:
                return bp
        return None

    def _vbreak_hit(self, hit: VirtioBreakpointHit) -> bool:
        from ..vcpu import current_vcpu

        v = current_vcpu()
        stopped = self.request_stop(StopEvent(v.index if v is not None else None, "vbreak", text=hit.text))
        if not stopped:
            log.info("%s (the machine was already stopped)", hit.text.splitlines()[0])
        return stopped

    def _watch_write(self, gpa: int, size: int) -> None:
        """A write to a read-only watch page: a hit if it touches a watched range."""
        from ..vcpu import current_vcpu

        for bp in self.breakpoints.values():
            for i, (start, n) in enumerate(bp.pages):
                if gpa < start + n and start < gpa + size:
                    offset = sum(length for _, length in bp.pages[:i]) + max(0, gpa - start)
                    v = current_vcpu()
                    self.request_stop(StopEvent(v.index if v is not None else None, "watch",
                                                address=bp.addr + offset))
                    return

    def _notify_exits(self, t: VirtioMmio, exits: bool) -> str:
        """A QueueNotify breakpoint needs the write on the vCPU thread: the ioeventfds go meanwhile."""
        fds = self.notify_eventfds.get(t.name)
        if fds is None:
            return ""
        if exits and fds.assigned:
            fds.deassign()
            return (f"{t.name}: QueueNotify now exits to the vCPU thread (its ioeventfds are deassigned "
                    "while a QueueNotify vbreak is set)")
        if not exits and not fds.assigned and fds.assign():
            return f"{t.name}: QueueNotify through ioeventfd again"
        return ""

    # --- resuming (RunControl.resume calls these) ------------------------------------------------------

    def before_resume(self) -> bool:
        """Breakpoints, watch pages and single-stepping into KVM, then the device's reaction to a
        QueueNotify a virtio breakpoint held, all while the vCPUs are held.  False if that reaction
        hit a virtio breakpoint (an interrupt, used buffers): the machine then stays stopped, the
        vCPUs where they were, with that stop announced."""
        self._apply()
        if not any(t.held_notifies for t in self.transports):
            return True
        with self._lock:
            self._resuming, self._restop = True, None
        try:
            for t in self.transports:
                t.serve_held()
        finally:
            with self._lock:
                self._resuming = False
                ev, self._restop = self._restop, None
        if ev is None:
            return True
        with self._lock:
            if ev.cpu is None:
                ev = StopEvent(self._last_cpu, ev.reason, ev.signal, ev.address, ev.text)
            self.stop = ev
            self.stops += 1
            self._step = None
        self._announce(ev)
        return False

    def _apply(self) -> None:
        """Breakpoints, watch pages and single-stepping into KVM; the vCPUs are held."""
        with self._lock:
            step, self._step = self._step, None
            slots: list[tuple[int, int]] = [(0, 0)] * NUM_DEBUG_REGISTERS     # (address, dr7 bits)
            uses_int3 = False
            pages: set[int] = set()
            for bp in self.breakpoints.values():
                for i, slot in enumerate(bp.slots):
                    slots[slot] = (self._dr_addr(bp, i), self._dr7_bits(bp, slot, i))
                uses_int3 |= bp.int3_gpa is not None
                pages.update(gpa & ~0xFFF for gpa, _ in bp.pages)
            dr7 = 0
            for _, bits in slots:
                dr7 |= bits
            base = abi.KVM_GUESTDBG_USE_HW_BP if dr7 else 0
            if uses_int3:
                base |= abi.KVM_GUESTDBG_USE_SW_BP
            debugreg = (*(a for a, _ in slots), 0, 0, 0, dr7)
            for v in self.vcpus:
                control = base
                if v.index == step:
                    control |= abi.KVM_GUESTDBG_SINGLESTEP
                    if self.host.block_irq:
                        control |= abi.KVM_GUESTDBG_BLOCKIRQ
                if control:
                    control |= abi.KVM_GUESTDBG_ENABLE
                want = (control, debugreg if control else ())
                if self._applied.get(v.index, (0, ())) != want:
                    v.fd.set_guest_debug(control, want[1])
                    self._applied[v.index] = want
            self._stepping = step
            if pages or self._watch is not None:
                self._page_watch().apply(pages)

    @staticmethod
    def _dr_addr(bp: GuestBreakpoint, i: int) -> int:
        if bp.kind in ("sw", "hw"):
            return bp.addr
        return _split_aligned(bp.addr, bp.length)[i][0]

    @staticmethod
    def _dr7_bits(bp: GuestBreakpoint, slot: int, i: int) -> int:
        length = 1 if bp.kind in ("sw", "hw") else _split_aligned(bp.addr, bp.length)[i][1]
        return (1 << (2 * slot)) | (_DR7_RW[bp.kind] << (16 + 4 * slot)) | (
            (_DR7_LEN[length] if bp.kind not in ("sw", "hw") else 0) << (18 + 4 * slot))

    def _page_watch(self) -> PageWatch:
        if self._watch is None:
            from .watch import PageWatch

            self._watch = PageWatch(self.vmfd, self.memory, self.mmio_bus, self._watch_write)
        return self._watch

    def _apply_now(self) -> None:
        """Put the debug state into KVM while the machine runs (gdb went away mid-run)."""
        if self.control.debug_stopped:
            return                            # applied at the next resume
        self.control.hold()
        try:
            self._apply()
        finally:
            self.control.release()

    # --- the gdb target (pyvmm.debug.gdbstub.DebugTarget) ----------------------------------------------

    @property
    def cpu_count(self) -> int:
        return len(self.vcpus)

    def attach(self) -> None:
        self.request_stop(StopEvent(None, "attach"))

    def read_registers(self, cpu: int) -> x86.CpuState:
        fd = self.vcpus[cpu].fd
        msrs = fd.get_msrs([x86.MSR_KERNEL_GS_BASE])
        return x86.CpuState(fd.get_regs(), fd.get_sregs(), fd.get_fpu(), msrs.get(x86.MSR_KERNEL_GS_BASE, 0))

    def write_registers(self, cpu: int, state: x86.CpuState) -> None:
        fd = self.vcpus[cpu].fd
        dirty = state.dirty or set()
        if "regs" in dirty:
            fd.set_regs(state.regs)
        if "sregs" in dirty:
            fd.set_sregs(state.sregs)
        if "fpu" in dirty:
            fd.set_fpu(state.fpu)
        if "msr" in dirty:
            fd.set_msrs({x86.MSR_KERNEL_GS_BASE: state.kernel_gs_base})
        state.dirty = None

    def _pieces(self, cpu: int, addr: int, length: int, physical: bool) -> list[tuple[int, int]]:
        if physical:
            return [(addr, length)]
        sregs = self.vcpus[cpu].fd.get_sregs()
        return paging.linear_pieces(self.memory, sregs, addr, length) or []

    def read_memory(self, cpu: int, addr: int, length: int, physical: bool) -> bytes:
        out = bytearray()
        for gpa, n in self._pieces(cpu, addr, length, physical):
            data = self._read_prefix(gpa, n)
            out += data
            if len(data) < n:
                break
        self._mask_int3(out, cpu, addr, physical)
        return bytes(out)

    def _read_prefix(self, gpa: int, n: int) -> bytes:
        """[gpa, gpa+n) or as much of its start as lies in RAM or ROM."""
        try:
            return self.read_physical(gpa, n)
        except GuestMemoryError:
            pass
        if self.memory.contains(gpa):
            r = self.memory.region_of(gpa)
            return self.memory.read(gpa, min(n, r.end - gpa))
        return b""

    def _mask_int3(self, out: bytearray, cpu: int, addr: int, physical: bool) -> None:
        """Reads show the guest's bytes, not the int3s pyvmm planted."""
        for bp in self.breakpoints.values():
            if bp.int3_gpa is None:
                continue
            where = bp.int3_gpa if physical else bp.addr
            if addr <= where < addr + len(out):
                out[where - addr] = bp.original

    def write_memory(self, cpu: int, addr: int, data: bytes, physical: bool) -> bool:
        pos = 0
        for gpa, n in self._pieces(cpu, addr, len(data), physical):
            chunk = bytearray(data[pos : pos + n])
            for bp in self.breakpoints.values():     # writing over a planted int3 changes what it hides
                if bp.int3_gpa is not None and gpa <= bp.int3_gpa < gpa + n:
                    bp.original = chunk[bp.int3_gpa - gpa]
                    chunk[bp.int3_gpa - gpa] = 0xCC
            try:
                self.memory.write(gpa, bytes(chunk))
            except GuestMemoryError:
                return False
            pos += n
        return pos == len(data)

    def insert_breakpoint(self, kind: str, addr: int, length: int) -> bool | None:
        with self._lock:
            key = (kind, addr, length)
            if key in self.breakpoints:
                return True
            if kind == "read":
                return None                   # x86 debug registers cannot watch reads alone
            if kind == "access" and not self.host.hw_watchpoints:
                return None                   # a read-only page sees writes only
            bp = GuestBreakpoint(kind, addr, length)
            if kind in ("sw", "hw"):
                ok = self._place_execution(bp)
            else:
                ok = self._place_watch(bp)
            if ok:
                self.breakpoints[key] = bp
                log.info("gdb %s breakpoint at %#x (%d): %s", kind, addr, length, bp.mechanism)
            return ok

    def remove_breakpoint(self, kind: str, addr: int, length: int) -> bool | None:
        if kind == "read":
            return None
        with self._lock:
            bp = self.breakpoints.pop((kind, addr, length), None)
            if bp is None:
                return True                   # gdb removes what it thinks is there: nothing to undo
            self._unpatch(bp)
            return True

    def _free_slots(self) -> list[int]:
        used = {s for bp in self.breakpoints.values() for s in bp.slots}
        return [s for s in range(NUM_DEBUG_REGISTERS) if s not in used]

    def _place_execution(self, bp: GuestBreakpoint) -> bool:
        free = self._free_slots() if self.host.hw_breakpoints else []
        if free:
            bp.slots = [free[0]]
            return True
        if bp.kind == "hw":
            # hbreak needs a debug register: take one from a break that can become an int3.
            for other in self.breakpoints.values():
                if other.kind == "sw" and other.slots and self._patch(other):
                    bp.slots, other.slots = other.slots, []
                    return True
            return False
        return self._patch(bp)

    def _place_watch(self, bp: GuestBreakpoint) -> bool:
        pieces = _split_aligned(bp.addr, bp.length)
        if self.host.hw_watchpoints and len(pieces) <= len(self._free_slots()):
            bp.slots = self._free_slots()[: len(pieces)]
            return True
        if bp.kind != "write" or bp.length == 0:
            return False
        pages = paging.linear_pieces(self.memory, self._sregs(), bp.addr, bp.length) or []
        if sum(n for _, n in pages) != bp.length or not all(self.memory.contains(g, n) for g, n in pages):
            return False
        from .watch import MAX_PAGES

        wanted = {g & ~0xFFF for other in self.breakpoints.values() for g, _ in other.pages}
        if len(wanted | {g & ~0xFFF for g, _ in pages}) > MAX_PAGES:
            return False
        bp.pages = pages
        return True

    def _sregs(self) -> Any:
        return self.vcpus[min(self._last_cpu, len(self.vcpus) - 1)].fd.get_sregs()

    def _patch(self, bp: GuestBreakpoint) -> bool:
        """An int3 at bp.addr (through the page tables of the vCPU that stopped last), in RAM only."""
        sregs = self._sregs()
        gpa = paging.translate(self.memory, sregs, bp.addr)
        if gpa is None or not self.memory.contains(gpa):
            return False
        if not sregs.cr0 & x86cpu.X86_CR0_PE and gpa < REAL_MODE_REACH:
            # Real mode hands an int3 to the guest's IVT instead of exiting (docs/gdb.md): refuse one
            # where real-mode code could run.  Code above 1 MiB runs only after the switch to
            # protected mode (the firmware's, the PVH entry's), where an int3 does come back.
            return False
        bp.original = self.memory.read(gpa, 1)[0]
        self.memory.write(gpa, b"\xcc")
        bp.int3_gpa = gpa
        return True

    def _unpatch(self, bp: GuestBreakpoint) -> None:
        if bp.int3_gpa is not None:
            try:
                if self.memory.read(bp.int3_gpa, 1) == b"\xcc":
                    self.memory.write(bp.int3_gpa, bytes([bp.original]))
            except GuestMemoryError:
                pass
            bp.int3_gpa = None

    def resume(self, step: int | None, only: int | None) -> None:
        with self._lock:
            self._step = step
            if step is not None:
                self._last_cpu = step
        if not self.control.resume(only=only):
            with self._lock:
                self._step = None

    def interrupt(self) -> None:
        self.request_stop(StopEvent(None, "interrupt", SIGINT))

    def monitor(self, command: str) -> str:
        return self.run_monitor(command)

    def thread_name(self, cpu: int) -> str:
        try:
            sregs = self.vcpus[cpu].fd.get_sregs()
        except Exception:  # noqa: BLE001 - a name is not worth an error
            return f"vCPU {cpu}"
        return f"vCPU {cpu}, {x86cpu.mode_name(sregs)}"

    def detach(self) -> None:
        """gdb leaves: its breakpoints go, and the machine runs on."""
        with self._lock:
            for bp in self.breakpoints.values():
                self._unpatch(bp)
            self.breakpoints.clear()
            self._step = None
        self._apply_now()
        if self.control.state == "debug":
            self.control.resume()

    def kill(self) -> None:
        self.kill_machine()


def _split_aligned(addr: int, length: int) -> list[tuple[int, int]]:
    """[addr, addr+length) as naturally aligned pieces of 1, 2, 4 or 8 bytes (what one DR can watch)."""
    out = []
    end = addr + length
    while addr < end:
        size = 8
        while size > 1 and (addr % size or addr + size > end):
            size //= 2
        out.append((addr, size))
        addr += size
    return out

