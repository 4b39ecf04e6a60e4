"""The run state of a machine, shared by its vCPU threads and whoever steers them: stop, hold, and why.

The vCPU loop reads two plain attributes on every exit (``stop_requested``, ``hold_requested``) and
calls back here when its guest stops, crashes or needs the VMM; the Machine, the monitor, the
debugger and the tests steer the same object.  Nothing here knows KVM: a vCPU is anything with
``index``, ``kick()`` and ``register_dump()``, and the debugger is a DebugHandler.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .errors import GuestCrash
from .termout import emit_line

log = logging.getLogger("pyvmm")

Listener = Callable[[str, dict], None]


class ControlledVcpu(Protocol):
    """What the run control needs of a vCPU."""

    index: int
    paused: threading.Event          # set by the vCPU thread while it is parked

    def kick(self) -> None: ...

    def register_dump(self) -> str: ...

    def is_running(self) -> bool: ...


class DebugHandler(Protocol):
    """The debugger's side of the run control (pyvmm.debug.debugger.Debugger)."""

    def debug_exit(self, vcpu: Any, ex: Any) -> None:
        """A KVM_EXIT_DEBUG (single step, debug register, #BP) on this vCPU's thread."""

    def breakpoint_hit(self, vcpu: Any, pc: int) -> bool:
        """An int3 at linear address pc came back from KVM: True if it is the debugger's."""

    def before_resume(self) -> bool:
        """The vCPUs are about to run again (still held): apply breakpoints and single-stepping, let
        the device serve what a virtio breakpoint held; False if that stopped the machine anew."""


class RunControl:
    """Stop and hold requests for the vCPU threads, the machine's state, its events and its exit code.

    States are QEMU's: "created" (prelaunch), "running", "paused", "debug" (stopped for a debugger:
    a breakpoint, a step, a virtio breakpoint, gdb's Ctrl-C), "shutdown".  A *hold* keeps every vCPU
    out of KVM_RUN: a user's pause, the prelaunch of ``-S`` and a debug stop hold them until resume,
    register reads hold them a moment.  The state lock is held only to change counters and state, never
    while waiting for the vCPUs, since a vCPU may itself need it to stop the machine.
    """

    def __init__(self) -> None:
        self.stop_requested = False      # read by the vCPU loop on every exit
        self.hold_requested = False      # read by the vCPU loop when KVM_RUN is interrupted
        self.state = "created"
        self.exit_code: int | None = None
        self.stop_reason = ""
        self.crash_report = ""
        self.report_crashes = True       # False while the CLI holds a raw terminal: it prints the report
        self.vcpu_exception: BaseException | None = None
        self.emulation_fixups: dict[str, int] = {}
        self.stopped = threading.Event()
        self.lock = threading.RLock()
        self._holds = 0
        self._user_paused = False
        self._prelaunch = False          # -S: held from the start until the first resume
        self._debug_stopped = False
        self._run_only: int | None = None   # debug-stopped, but this vCPU runs (gdb's scheduler locking)
        self.debug: DebugHandler | None = None
        # What a guest's reset and power-off do: QEMU's -no-reboot turns a reset into an exit, and
        # -no-shutdown a power-off into a stop; reset_handler(reason) resets the machine (Machine sets it).
        self.no_reboot = False
        self.no_shutdown = False
        self.reset_handler: Callable[[str], None] | None = None
        self._hold_cond = threading.Condition()
        self._listeners: list[Listener] = []
        self.vcpus: Sequence[ControlledVcpu] = ()

    # --- events ---------------------------------------------------------------------------------------

    def add_listener(self, cb: Listener) -> None:
        """cb(event, data) for STOP, RESUME, SHUTDOWN and RESET, on the thread that caused the event."""
        self._listeners.append(cb)

    def emit(self, event: str, data: dict | None = None) -> None:
        for cb in list(self._listeners):
            try:
                cb(event, data or {})
            except Exception:
                log.exception("event listener failed")

    # --- stop -----------------------------------------------------------------------------------------

    def stop(self, exit_code: int = 0, reason: str = "stopped by the host", *,
             event_reason: str = "host-signal") -> None:
        """Stop the VM (from any thread); the first reason and exit code win.  ``event_reason`` is the
        SHUTDOWN event's reason in QEMU's vocabulary (host-qmp-quit, guest-shutdown, ...)."""
        with self.lock:
            if self.stop_requested:
                return
            self.stop_requested = True
            self.exit_code = exit_code if self.exit_code is None else self.exit_code
            self.stop_reason = reason
            self.state = "shutdown"
        with self._hold_cond:
            self._hold_cond.notify_all()
        for v in self.vcpus:
            v.kick()
        self.emit("SHUTDOWN", {"guest": event_reason.startswith("guest"), "reason": event_reason})
        self.stopped.set()

    # --- hold: keeping the vCPUs out of KVM_RUN ---------------------------------------------------------

    def pause(self) -> bool:
        """Hold the vCPUs for the user (QMP `stop`); True (and a STOP event) once they are all out."""
        with self.lock:
            if self.state != "running" or self._user_paused:
                return False
            self._user_paused = True
            self._hold()
        self.wait_vcpus_out()
        with self.lock:
            if self.stop_requested or not self._user_paused:
                return False          # stopped (or resumed) meanwhile: not a pause to report
            self.state = "paused"
        self.emit("STOP")
        return True

    def resume(self, *, only: int | None = None) -> bool:
        """Run again (QMP and the monitor's `cont`, gdb's continue): release the user's pause, the
        prelaunch hold and a debug stop; True (and a RESUME event) if there was one.  With ``only``,
        a debug stop goes on for every vCPU but that one (gdb stepping with scheduler locking)."""
        with self.lock:
            if self.stop_requested or self.state == "shutdown" or \
                    not (self._user_paused or self._prelaunch or self._debug_stopped):
                return False
            debug = self.debug
        if debug is not None and not debug.before_resume():   # the vCPUs are still held here
            return False                   # the device's reaction hit a breakpoint: stay stopped
        with self.lock:
            if self.stop_requested:
                return False
            if self._user_paused:
                self._user_paused = False
                self._release()
            if self._prelaunch:
                self._prelaunch = False
                self._release()
            if self._debug_stopped:
                if only is not None:
                    self._run_only = only
                    with self._hold_cond:
                        self._hold_cond.notify_all()
                else:
                    self._debug_stopped = False
                    self._run_only = None
                    self._release()
            self.state = "running"
        self.emit("RESUME")
        return True

    def hold_prelaunch(self) -> None:
        """-S: keep the vCPUs out of KVM_RUN from their first instruction until resume()."""
        with self.lock:
            if not self._prelaunch:
                self._prelaunch = True
                self._hold()

    def debug_stop(self) -> bool:
        """Stop every vCPU for a debugger, from any thread (a vCPU's own included): request the hold,
        kick the vCPUs and return without waiting.  False if the machine was already debug-stopped
        (or is shutting down): the first stop wins."""
        with self.lock:
            if self.stop_requested:
                return False
            if self._debug_stopped:
                if self._run_only is None:
                    return False
                self._run_only = None       # the one vCPU that ran stops as well
            else:
                self._debug_stopped = True
                self._hold()
            self.state = "debug"
        for v in self.vcpus:
            v.kick()
        self.emit("STOP")
        return True

    @property
    def debug_stopped(self) -> bool:
        """Every vCPU is held for a debugger (or being stopped): no vCPU runs on its own."""
        return self._debug_stopped and self._run_only is None

    def hold(self) -> None:
        """Keep the vCPUs out of KVM_RUN until release(); returns once they are all out."""
        with self.lock:
            self._hold()
        self.wait_vcpus_out()

    def release(self) -> None:
        with self.lock:
            self._release()

    def _hold(self) -> None:
        self._holds += 1
        self.hold_requested = True

    def _release(self) -> None:
        self._holds -= 1
        if self._holds == 0:
            with self._hold_cond:
                self.hold_requested = False
                self._hold_cond.notify_all()

    def wait_vcpus_out(self) -> None:
        for v in self.vcpus:
            v.kick()
        for v in self.vcpus:
            while not v.paused.wait(0.05):
                if self.stop_requested or not v.is_running():
                    break
                v.kick()

    # --- called on a vCPU thread -----------------------------------------------------------------------

    def park(self, vcpu: ControlledVcpu) -> None:
        """The vCPU thread waits here while a hold is requested."""
        vcpu.paused.set()
        with self._hold_cond:
            while self.hold_requested and not self.stop_requested and not self._lets_run(vcpu):
                self._hold_cond.wait(0.5)
        vcpu.paused.clear()

    def _lets_run(self, vcpu: ControlledVcpu) -> bool:
        # The vCPU gdb steps alone: only the debug stop holds, and it is exempt from that one.
        return self._run_only == vcpu.index and self._debug_stopped and self._holds == 1

    def debug_exit(self, vcpu: ControlledVcpu, ex: Any) -> None:
        """A KVM_EXIT_DEBUG: the debugger's, or (with none) a guest crash."""
        debug = self.debug
        if debug is None:
            self.guest_crashed(vcpu, f"unexpected KVM_EXIT_DEBUG {ex}")
            return
        debug.debug_exit(vcpu, ex)

    def breakpoint_hit(self, vcpu: ControlledVcpu, pc: int) -> bool:
        """An int3 came back from KVM at linear address pc: True if the debugger owns it (it then
        stops the machine there); False if it is the guest's own."""
        debug = self.debug
        return debug is not None and debug.breakpoint_hit(vcpu, pc)

    def guest_stopped(self, vcpu: ControlledVcpu, reason: str, exit_code: int) -> None:
        self.stop(exit_code, reason, event_reason="guest-shutdown")

    def guest_crashed(self, vcpu: ControlledVcpu, reason: str) -> None:
        self._report(f"pyvmm: {reason} on vCPU {vcpu.index}\n{_dump(vcpu)}")
        self.stop(GuestCrash.exit_code, reason, event_reason="guest-panic")

    def guest_halted(self, vcpu: ControlledVcpu, reason: str) -> None:
        """A power-off seen on a vCPU thread (KVM_SYSTEM_EVENT_SHUTDOWN, a final HLT)."""
        self.guest_poweroff(reason)

    def guest_reset(self, vcpu: ControlledVcpu | None, reason: str) -> None:
        """The guest asked for a reset (i8042, ACPI, KVM_SYSTEM_EVENT_RESET): the machine reboots, unless
        -no-reboot asks for an exit.  Called on a vCPU thread, which cannot wait for itself to stop: the
        reset itself runs on a thread of its own."""
        handler = self.reset_handler
        if self.no_reboot or handler is None:
            self.stop(0, f"{reason}; -no-reboot: exiting" if self.no_reboot else reason, event_reason="guest-reset")
            return
        threading.Thread(target=handler, args=(reason,), name="reset", daemon=True).start()

    def guest_poweroff(self, reason: str) -> None:
        """The guest powered off (ACPI S5, KVM_SYSTEM_EVENT_SHUTDOWN): the VM ends, or with -no-shutdown
        stops in the "shutdown" state until `system_reset` (QEMU's behaviour)."""
        if not self.no_shutdown:
            self.stop(0, reason, event_reason="guest-shutdown")
            return
        self.emit("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})
        with self.lock:
            if self.state == "shutdown" or self.stop_requested:
                return
            self._user_paused = True
            self._hold()
            self.state = "shutdown"
        for v in self.vcpus:
            v.kick()

    def after_reset(self) -> None:
        """A reset brings a -no-shutdown machine back from "shutdown": paused, waiting for `cont`."""
        with self.lock:
            if self.state == "shutdown" and not self.stop_requested:
                self.state = "paused"

    def vcpu_failed(self, vcpu: ControlledVcpu, exc: BaseException) -> None:
        """A pyvmm bug on a vCPU thread: dump the vCPU, stop the VM, and re-raise in wait()."""
        self._report(f"pyvmm: internal error on vCPU {vcpu.index}: {exc!r}\n{_dump(vcpu)}")
        self.vcpu_exception = exc
        self.stop(70, f"internal error on vCPU {vcpu.index}: {exc!r}")

    def count_fixup(self, name: str) -> None:
        """An instruction the host's emulator refused and pyvmm finished for the guest."""
        self.emulation_fixups[name] = self.emulation_fixups.get(name, 0) + 1

    def _report(self, text: str) -> None:
        self.crash_report = text
        if self.report_crashes:
            emit_line(text + "\n")


def _dump(vcpu: ControlledVcpu) -> str:
    try:
        return vcpu.register_dump()
    except Exception as e:  # the registers may be unreadable after some failures
        return f"(registers unavailable: {e})"
