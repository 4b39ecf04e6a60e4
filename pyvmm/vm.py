"""A running machine: owns the KVM fds, guest memory, buses, devices and vCPUs; start, pause, stop, wait."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import selectors
import sys
import threading
import time
from typing import Callable

from .config import VmConfig
from .errors import GuestCrash

log = logging.getLogger("pyvmm")

CONSOLE_KEEP = 8 << 20   # bytes of console output kept in memory for the API and the monitor


class EventLoop:
    """One thread that waits on eventfds (ioeventfd notifies, irqfd resamples) and calls their handlers."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.thread: threading.Thread | None = None
        self._stop = False

    def add(self, fd: int, handler: Callable[[], None]) -> None:
        self.sel.register(fd, selectors.EVENT_READ, handler)

    def start(self) -> None:
        if len(self.sel.get_map()) > 1:
            self.thread = threading.Thread(target=self._run, name="eventloop", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self.sel.select():
                if key.data is None:
                    return
                key.data()

    def stop(self) -> None:
        if self._stop:
            return
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self.thread is not None:
            self.thread.join(2)
        self.sel.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)


class Machine:
    """A pyvmm virtual machine.

    ``Machine(VmConfig(...))`` builds everything (see builder.py); ``start()`` runs the vCPUs;
    ``wait()`` returns the exit code.  Devices and guest memory are attributes: ``memory``,
    ``serial``, ``balloon`` (None with the balloon off), ``virtio_devices``, ``vcpus``.
    """

    def __init__(self, config: VmConfig | None = None, **kwargs) -> None:
        from . import builder

        if config is None:
            config = VmConfig(**kwargs)
        elif kwargs:
            raise TypeError("give a VmConfig or keyword arguments, not both")
        self.config = config
        self.exit_code: int | None = None
        self.stop_reason = ""
        self.crash_report = ""
        self.boot_stages: list[tuple[int, str]] = []
        self.vcpus = []
        self.virtio_devices = []
        self.balloon = None
        self.balloon_transport = None
        self.firmware_image: bytes | None = None
        self.firmware_base = 0
        from .guestlog import GuestErrorLog

        self.mmio_errors = GuestErrorLog("mmio")
        self.emulation_fixups: dict[str, int] = {}
        self.qmp_servers: list = []
        self._listeners: list[Callable[[str, dict], None]] = []
        self._console = bytearray()
        self._console_cond = threading.Condition()
        self._stopped = threading.Event()
        self._stop_requested = False
        self._pause_requested = False
        self._pause_cond = threading.Condition()
        self._vcpu_exc: BaseException | None = None
        self._state = "created"
        self._closers: list[Callable[[], None]] = []
        self.event_loop = EventLoop()
        self.start_time = time.monotonic()
        self.guest_start_time: float | None = None
        self._state_lock = threading.RLock()
        self._quiesce_count = 0
        self._user_paused = False
        try:
            builder.build_vm(self, config)
        except BaseException:
            self._state = "shutdown"
            self._close_resources()   # nothing a failed build opened outlives it
            raise

    # --- console ------------------------------------------------------------------------------

    def _console_write(self, data: bytes) -> None:
        with self._console_cond:
            self._console += data
            if len(self._console) > CONSOLE_KEEP:
                del self._console[: len(self._console) - CONSOLE_KEEP]
            self._console_cond.notify_all()
        out = self.console_out
        if out is not None:
            out(data)

    console_out: Callable[[bytes], None] | None = None

    def console_text(self) -> str:
        with self._console_cond:
            return self._console.decode("utf-8", "replace")

    def wait_for_console(self, pattern: str, timeout: float = 30.0) -> re.Match:
        """Wait until the guest's console output matches the regex; TimeoutError otherwise.

        Each wake-up searches only what arrived since the last look (plus an overlap of 4 KiB for a
        match that straddles it), and waits at least 20 ms between looks, so a chatty guest does not
        turn the waiting thread into a busy loop that competes with the vCPU for the GIL.
        """
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        start = 0
        while True:
            with self._console_cond:
                text = self._console.decode("utf-8", "replace")
            m = rx.search(text, max(0, start - 4096))
            if m:
                return rx.search(text) if start else m     # the first match, as re.search gives
            start = len(text)
            left = deadline - time.monotonic()
            if left <= 0 or self._stopped.is_set():
                raise TimeoutError(f"console never matched {pattern!r}"
                                   + (" (the VM stopped)" if self._stopped.is_set() else ""))
            time.sleep(min(left, 0.02))
            with self._console_cond:
                if len(self._console) == start:
                    self._console_cond.wait(min(max(0.0, deadline - time.monotonic()), 0.5))

    # --- events -------------------------------------------------------------------------------

    def add_listener(self, cb: Callable[[str, dict], None]) -> None:
        self._listeners.append(cb)

    def _emit(self, event: str, data: dict | None = None) -> None:
        for cb in list(self._listeners):
            try:
                cb(event, data or {})
            except Exception:
                log.exception("event listener failed")

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "Machine":
        from .vcpu import install_kick_handler

        if self._state != "created":
            raise RuntimeError("a machine starts once")
        install_kick_handler()   # PyvmmError off the main thread unless it was installed there before
        for address in self.config.qmp:
            from .monitor.qmp import QmpServer

            server = QmpServer(self, address)
            server.start()
            self.qmp_servers.append(server)
            self._closers.append(server.close)
        self.event_loop.start()
        self._state = "running"
        self.guest_start_time = time.monotonic()
        for v in self.vcpus:
            v.start()
        return self

    def status(self) -> str:
        return self._state

    def stop(self, exit_code: int = 0, reason: str = "stopped by the host", *,
             event_reason: str = "host-signal") -> None:
        """Stop the VM (from any thread); the first reason and exit code win.  ``event_reason`` is
        the SHUTDOWN event's reason in QEMU's vocabulary (host-qmp-quit, guest-shutdown, ...)."""
        with self._state_lock:
            if self._stop_requested:
                return
            self._stop_requested = True
            self.exit_code = exit_code if self.exit_code is None else self.exit_code
            self.stop_reason = reason
            self._state = "shutdown"
        with self._pause_cond:
            self._pause_cond.notify_all()
        for v in self.vcpus:
            v.kick()
        self._emit("SHUTDOWN", {"guest": event_reason.startswith("guest"), "reason": event_reason})
        self._stopped.set()
        with self._console_cond:
            self._console_cond.notify_all()

    # Pausing: the vCPUs stay out of KVM_RUN while anyone holds them (a user's pause, or a moment's
    # quiescing to read registers).  The state lock is held only to change counters and state, never
    # while waiting for the vCPUs, since a vCPU may itself need it to stop the machine.

    def pause(self) -> None:
        """Stop the vCPUs (QMP `stop`): emits STOP once they are all out of KVM_RUN."""
        with self._state_lock:
            if self._state != "running" or self._user_paused:
                return
            self._user_paused = True
            self._hold()
        self._wait_vcpus_out()
        with self._state_lock:
            if self._stop_requested or not self._user_paused:
                return          # stopped (or resumed) meanwhile: not a pause to report
            self._state = "paused"
        self._emit("STOP")

    def resume(self) -> None:
        """Let the vCPUs run again (QMP `cont`): emits RESUME."""
        with self._state_lock:
            if not self._user_paused or self._stop_requested:
                return
            self._user_paused = False
            self._state = "running"
            self._unhold()
        self._emit("RESUME")

    @contextlib.contextmanager
    def quiesced(self):
        """The vCPUs held out of KVM_RUN for a moment (to read their registers), with no STOP/RESUME
        event and no change of state: a user's pause stays a pause."""
        with self._state_lock:
            self._hold()
        try:
            self._wait_vcpus_out()
            yield
        finally:
            with self._state_lock:
                self._unhold()

    def _hold(self) -> None:
        self._quiesce_count += 1
        self._pause_requested = True

    def _unhold(self) -> None:
        self._quiesce_count -= 1
        if self._quiesce_count == 0:
            with self._pause_cond:
                self._pause_requested = False
                self._pause_cond.notify_all()

    def _wait_vcpus_out(self) -> None:
        for v in self.vcpus:
            v.kick()
        for v in self.vcpus:
            while not v.paused.wait(0.05):
                if self._stop_requested or not (v.thread and v.thread.is_alive()):
                    break
                v.kick()

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the VM stops; returns its exit code (None on timeout).  Ctrl-C stops it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self._stopped.wait(0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))):
                if deadline is not None and time.monotonic() >= deadline:
                    return None
        except KeyboardInterrupt:
            self.stop(130, "interrupted (Ctrl-C)", event_reason="host-signal")
        for v in self.vcpus:
            if v.thread is not None and v.thread is not threading.current_thread():
                v.thread.join(2)
        if self._vcpu_exc is not None:
            exc, self._vcpu_exc = self._vcpu_exc, None
            raise exc
        return self.exit_code

    def close(self) -> None:
        if not self._stop_requested:
            self.stop(0, "closed")
        for v in self.vcpus:
            if v.thread is not None and v.thread.is_alive() and v.thread is not threading.current_thread():
                v.thread.join(2)
        self._close_resources()

    def _close_resources(self) -> None:
        self.event_loop.stop()
        for c in reversed(self._closers):
            try:
                c()
            except Exception:
                log.exception("closing failed")
        self._closers.clear()

    def __enter__(self) -> "Machine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- called from vCPU threads -------------------------------------------------------------

    def quit(self) -> None:
        """QMP `quit` and the monitor's `quit`: stop the VM, exit code 0."""
        self.stop(0, "quit from the monitor", event_reason="host-qmp-quit")

    def reset(self) -> None:
        raise NotImplementedError("system_reset is not supported by pyvmm machines yet")

    def _guest_stopped(self, vcpu, reason: str, exit_code: int) -> None:
        self.stop(exit_code, reason, event_reason="guest-shutdown")

    def _guest_crashed(self, vcpu, reason: str) -> None:
        try:
            dump = vcpu.register_dump()
        except Exception as e:  # the registers may be unreadable after some failures
            dump = f"(registers unavailable: {e})"
        self._report(f"pyvmm: {reason} on vCPU {vcpu.index}\n{dump}")
        self.stop(GuestCrash.exit_code, reason, event_reason="guest-panic")

    def _vcpu_failed(self, vcpu, exc: BaseException) -> None:
        try:
            dump = vcpu.register_dump()
        except Exception as e:
            dump = f"(registers unavailable: {e})"
        self._report(f"pyvmm: internal error on vCPU {vcpu.index}: {exc!r}\n{dump}")
        self._vcpu_exc = exc
        self.stop(70, f"internal error on vCPU {vcpu.index}: {exc!r}")

    # Where a crash report goes: stderr at once, unless the CLI holds the terminal in raw mode and
    # prints it itself once the terminal is restored (a raw terminal would staircase the lines).
    report_crashes = True

    def _report(self, text: str) -> None:
        self.crash_report = text
        if self.report_crashes:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def _guest_exit(self, code: int) -> None:
        self.stop(code, f"the guest exited with code {code}", event_reason="guest-shutdown")

    # --- inspection (monitor, tests) ----------------------------------------------------------

    @property
    def ram_size(self) -> int:
        return self.config.memory

    def read_memory(self, gpa: int, length: int) -> bytes:
        return self.memory.read(gpa, length)

    def memory_map(self) -> list[tuple[int, int, str]]:
        out = [(r.gpa, r.end - 1, "ram") for r in self.memory.regions]
        for r in self.mmio_bus.ranges:
            out.append((r.base, r.end - 1, r.name))
        if self.firmware_image is not None:
            out.append((self.firmware_base, self.firmware_base + len(self.firmware_image) - 1, "firmware (rom)"))
        return sorted(out)

    def vcpu_registers(self, cpu: int = 0) -> str:
        if not 0 <= cpu < len(self.vcpus):
            raise ValueError(f"no vCPU {cpu} (the machine has {len(self.vcpus)})")
        with self.quiesced():
            return self.vcpus[cpu].register_dump()

    def _boot_stage(self, code: int) -> None:
        """A stage code from the firmware on the POST port: record it and, with --trace boot, print the
        control registers at that point (so a course can watch CR0.PE flip)."""
        from .loader.firmware import BOOT_STAGES, is_boot_error, stage_name
        from .vcpu import current_vcpu

        name = stage_name(code)
        self.boot_stages.append((code, name))
        v = current_vcpu()
        if self.tracer.wants("boot"):
            fields = {"stage": name, "code": code}
            text = f"firmware stage {code:#04x} {name}"
            if v is not None:
                s = v.fd.get_sregs()
                r = v.fd.get_regs()
                mode = "protected" if s.cr0 & 1 else "real"
                text += (f": CR0={s.cr0:#010x} (PE={s.cr0 & 1}, {mode} mode) CS={s.cs.selector:#06x} "
                         f"base={s.cs.base:#x} EIP={r.rip:#x} GDT={s.gdt.base:#x}/{s.gdt.limit:#x}")
                fields.update(cr0=s.cr0, cs=s.cs.selector, cs_base=s.cs.base, rip=r.rip, gdt_base=s.gdt.base)
            self.tracer.emit("boot", text, **fields)
        if is_boot_error(code) and v is not None:
            # The ROM halts with interrupts off, which the in-kernel LAPIC would wait on forever.
            self._guest_crashed(v, f"firmware gave up: {name}")
        elif code == max(c for c in BOOT_STAGES if not is_boot_error(c)):
            # After the hand-off the guest owns port 0x80 (Linux uses it for I/O delays).
            self.post_port.active = False

    def set_trace(self, category: str, on: bool) -> None:
        self.tracer.set(category, on)

