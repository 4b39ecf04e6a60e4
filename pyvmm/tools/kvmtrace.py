"""`pyvmm kvmtrace`: run or attach to any VMM under ptrace, follow all its threads, and turn each KVM
ioctl and each KVM_RUN exit into a decoded record (pyvmm/tools/kvmdecode.py) for the report.

python-ptrace gives the ptrace(2) binding and its errors, a PtraceProcess per traced thread (resume,
detach, options, siginfo, reading the tracee's memory) and the signal names.  The wait loop is our own:
PtraceDebugger's polls each process with WNOHANG and sleeps up to half a second when it has more than
one (a VMM has many threads), and it knows neither PTRACE_SEIZE nor seccomp stops.

Two ways to stop the tracee.  A command kvmtrace starts gets a seccomp filter before exec
(tools/linux_abi.py) that stops it only at KVM ioctls; every other system call runs at full speed.
A process attached with -p cannot be given a filter (it would outlive the trace and turn every KVM
ioctl into ENOSYS once we detach), so every thread is stopped at every system call (PTRACE_SYSCALL)
and kvmtrace lets the ones that are not KVM ioctls go at once.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from typing import IO, Any

from ..errors import PyvmmError
from . import linux_abi as L
from .kvmdecode import (
    RUN_HEAD,
    VM,
    Decoded,
    ExitRecord,
    Role,
    VirtioWindows,
    decode_argument,
    decode_exit,
    is_kvm_request,
    reads_argument_at_exit,
    request_name,
    role_of_link,
)
from .kvmreport import SCHEMA_VERSION, IoctlRecord, Report

_WALL = 0x4000_0000             # waitpid: threads and processes alike
_STOP_SIGNALS = (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
_SYSCALL_TRAP = signal.SIGTRAP | 0x80          # with PTRACE_O_TRACESYSGOOD

KVM_RUN = 0xAE80
KVM_CREATE_VM = 0xAE01
KVM_CREATE_VCPU = 0xAE41


class TraceError(PyvmmError):
    """kvmtrace cannot start, attach or go on: one line."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Interrupted(Exception):
    """Raised by the SIGINT/SIGTERM handler out of a blocking waitpid (attach mode: time to detach)."""


def _load_ptrace():
    try:
        from ptrace import PtraceError
        from ptrace.binding import func as binding
        from ptrace.debugger import PtraceDebugger, PtraceProcess
        from ptrace.signames import signalName
    except ImportError:
        raise TraceError("kvmtrace needs python-ptrace: pip install 'pyvmm[kvmtrace]' "
                         "(or pip install python-ptrace)") from None
    return PtraceError, binding, PtraceDebugger, PtraceProcess, signalName


# ---- processes and threads -----------------------------------------------------------------------


@dataclass(slots=True)
class InFlight:
    """A KVM ioctl seen at its entry, waiting for its return."""

    t0: int
    fd: int
    role: Role
    request: int
    arg: int
    decoded: Decoded | None


class Process:
    """One traced thread group: its KVM fds by role, where its vCPUs' kvm_run pages are mapped, and a
    descriptor on its memory for the per-exit reads."""

    def __init__(self, tgid: int) -> None:
        self.tgid = tgid
        self.roles: dict[int, Role | None] = {}
        self.run_hva: dict[int, int] = {}
        self.windows = VirtioWindows()
        self.comm = _comm(tgid)
        self.mem_fd: int | None = None

    def exec_done(self) -> None:
        """The process runs a new program: new memory (a /proc/PID/mem opened before refers to the old),
        new fds."""
        self.close()
        self.roles.clear()
        self.run_hva.clear()
        self.windows = VirtioWindows()
        self.comm = _comm(self.tgid)

    def close(self) -> None:
        if self.mem_fd is not None:
            os.close(self.mem_fd)
            self.mem_fd = None

    def read(self, hva: int, n: int) -> bytes:
        if not 0 <= hva < 1 << 63:
            raise OSError(errno.EFAULT, f"cannot read {n} bytes at {hva:#x}")
        if self.mem_fd is None:
            # One pread per exit on the vCPU's kvm_run: python-ptrace's readBytes seeks and reads a file
            # object per thread, a system call more on the path taken per exit.
            self.mem_fd = os.open(f"/proc/{self.tgid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        data = os.pread(self.mem_fd, n, hva)
        if len(data) < n:
            raise OSError(errno.EFAULT, f"short read at {hva:#x}")
        return data

    def role(self, fd: int, fresh: bool) -> Role | None:
        """The fd's role, from its /proc/PID/fd link; KVM_RUN (fresh=False) trusts what was learnt."""
        if not fresh and fd in self.roles:
            return self.roles[fd]
        try:
            link = os.readlink(f"/proc/{self.tgid}/fd/{fd}")
        except OSError:
            return self.roles.get(fd)
        role = role_of_link(link)
        self.roles[fd] = role
        return role

    def kvm_run_hva(self, vcpu: int) -> int | None:
        """Where the process mapped vCPU N's kvm_run: its "anon_inode:kvm-vcpu:N" mapping at offset 0.
        KVM names every vCPU fd of every VM the same way, so a process with two VMs is ambiguous; the
        first mapping wins."""
        hva = self.run_hva.get(vcpu)
        if hva is not None:
            return hva
        name = f"anon_inode:kvm-vcpu:{vcpu}"
        try:
            with open(f"/proc/{self.tgid}/maps") as f:
                for line in f:
                    parts = line.split(None, 5)
                    if len(parts) == 6 and parts[5].strip() == name and int(parts[2], 16) == 0:
                        hva = int(parts[0].split("-")[0], 16)
                        break
        except OSError:
            return None
        if hva is not None:
            self.run_hva[vcpu] = hva
        return hva


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _tgid_of(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return tid


class Thread:
    __slots__ = ("tid", "proc", "ptrace", "inflight", "reply", "want_exit_stop", "started", "stopped")

    def __init__(self, tid: int, proc: Process, ptrace_process: Any) -> None:
        self.tid = tid
        self.proc = proc
        self.ptrace = ptrace_process        # python-ptrace's PtraceProcess for this thread
        self.inflight: InFlight | None = None
        self.reply: IoctlRecord | None = None   # a KVM_RUN whose MMIO read / port input awaits the VMM's answer
        self.want_exit_stop = False
        self.started = False                # its first stop (seize, clone) has been seen
        self.stopped = False


# ---- the tracer ----------------------------------------------------------------------------------------


class Tracer:
    """Launches (launch) or attaches (attach), then run() until the traced processes end or a signal
    asks to detach; returns the exit code kvmtrace should have."""

    def __init__(self, report: Report) -> None:
        (self.PtraceError, self.binding, PtraceDebugger, self.PtraceProcess,
         self.signal_name) = _load_ptrace()
        self.debugger = PtraceDebugger()
        self.report = report
        self.threads: dict[int, Thread] = {}
        self.procs: dict[int, Process] = {}
        self.early_stops: dict[int, int] = {}    # a new thread's first stop seen before its parent's clone event
        self.t0 = time.monotonic_ns()
        self.seccomp = False
        self.launched: int | None = None
        self.attached: int | None = None
        self.exit_code: int | None = None
        self.exit_text = ""
        self.detaching = False
        self.stop_signal = 0
        self._waiting = False
        self._info = L.ptrace_syscall_info()
        self._info_addr = ctypes.addressof(self._info)
        self._info_size = ctypes.sizeof(self._info)

    # -- starting ----------------------------------------------------------------------------------

    def _options(self) -> int:
        o = (L.PTRACE_O_TRACESYSGOOD | L.PTRACE_O_TRACECLONE | L.PTRACE_O_TRACEFORK | L.PTRACE_O_TRACEVFORK
             | L.PTRACE_O_TRACEEXEC)
        if self.seccomp:
            o |= L.PTRACE_O_TRACESECCOMP
        if self.launched is not None:
            o |= L.PTRACE_O_EXITKILL       # our child must not run on untraced, with a filter that needs us
        return o

    def _seize(self, tid: int) -> None:
        self.binding.ptrace(L.PTRACE_SEIZE, tid, 0, self._options())

    def launch(self, argv: list[str], *, use_seccomp: bool = True) -> int:
        """Start argv stopped, with the KVM-ioctl filter (unless use_seccomp is False), seize it, let it run."""
        path = shutil.which(argv[0])
        if path is None:
            raise TraceError(f"kvmtrace: command not found: {argv[0]} (give a path, or check PATH)", 127)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                   # the child: filter, stop until seized, exec
            try:
                os.close(r)
                ok = b"N"
                if use_seccomp:
                    try:
                        L.install_kvm_ioctl_filter()
                        ok = b"S"
                    except OSError:
                        pass                           # no seccomp here: the tracer stops at every call
                os.write(w, ok)
                os.close(w)
                os.kill(os.getpid(), signal.SIGSTOP)
                os.execv(path, argv)
            except OSError as e:
                os.write(2, f"pyvmm: kvmtrace: cannot run {argv[0]}: {e.strerror}\n".encode())
            os._exit(127)
        os.close(w)
        self.seccomp = os.read(r, 1) == b"S"
        os.close(r)
        _, status = os.waitpid(pid, os.WUNTRACED)
        if not os.WIFSTOPPED(status):
            raise TraceError(f"kvmtrace: {argv[0]} ended before it could be traced")
        self.launched = pid
        self._seize(pid)
        self._add_thread(pid, pid)
        os.kill(pid, signal.SIGCONT)
        self.report.event("start", f"started {pid}: {' '.join(argv)}", pid=pid, command=argv,
                          mode="seccomp" if self.seccomp else "syscall", schema=SCHEMA_VERSION)
        return pid

    def attach(self, pid: int) -> int:
        """Seize every thread of pid (listing /proc/PID/task until no new one appears), interrupt each so
        that it starts stopping at system calls."""
        if pid <= 0 or not os.path.exists(f"/proc/{pid}"):
            raise TraceError(f"kvmtrace: no process with PID {pid} (is the VMM running? check with ps)")
        tgid = _tgid_of(pid)
        self.attached = tgid
        seen: set[int] = set()
        while True:
            try:
                tids = {int(t) for t in os.listdir(f"/proc/{tgid}/task")}
            except OSError:
                raise TraceError(f"kvmtrace: process {pid} went away while attaching") from None
            new = tids - seen
            if not new:
                break
            for tid in sorted(new):
                seen.add(tid)
                try:
                    self._seize(tid)
                except self.PtraceError as e:
                    if e.errno == errno.ESRCH and tid != tgid:
                        continue                       # a thread that just ended
                    self._attach_failed(pid, e)
                self._add_thread(tid, tgid)
                try:
                    self.binding.ptrace(L.PTRACE_INTERRUPT, tid, 0, 0)
                except self.PtraceError:
                    pass
        proc = self.procs[tgid]
        kvm_fds = self._kvm_fds(tgid)
        self.report.event("attach", f"attached to {tgid} ({proc.comm}), {len(self.threads)} threads, "
                          f"{len(kvm_fds)} KVM fds", pid=tgid, comm=proc.comm, threads=len(self.threads),
                          kvm_fds=kvm_fds, mode="syscall", schema=SCHEMA_VERSION)
        n = len(self.threads)
        sys.stderr.write(f"pyvmm: kvmtrace: attached to {tgid} ({proc.comm}): {n} thread{'s' * (n != 1)}, "
                         f"KVM fds {', '.join(f'{fd} {r}' for fd, r in kvm_fds.items()) or 'none yet'}; "
                         "Ctrl-C detaches\n")
        sys.stderr.flush()
        return tgid

    def _kvm_fds(self, tgid: int) -> dict[int, str]:
        out = {}
        try:
            for name in os.listdir(f"/proc/{tgid}/fd"):
                role = self.procs[tgid].role(int(name), fresh=True)
                if role is not None:
                    out[int(name)] = str(role)
        except OSError:
            pass
        return dict(sorted(out.items()))

    def _attach_failed(self, pid: int, e: Exception) -> None:
        code = getattr(e, "errno", None)
        if code == errno.ESRCH:
            raise TraceError(f"kvmtrace: no process with PID {pid} (it may just have exited)") from None
        if code == errno.EPERM:
            tracer = 0
            try:
                with open(f"/proc/{pid}/status") as f:
                    tracer = next((int(line.split()[1]) for line in f if line.startswith("TracerPid:")), 0)
            except OSError:
                pass
            if tracer:
                why = f"it is already traced by PID {tracer} ({_comm(tracer)}); a process has one tracer at a time"
            else:
                scope = _read("/proc/sys/kernel/yama/ptrace_scope")
                why = ("ptrace is not permitted here" + (f" (kernel.yama.ptrace_scope = {scope})" if scope else "")
                       + "; run kvmtrace as root or as the VMM's user")
            raise TraceError(f"kvmtrace: cannot trace PID {pid} ({_comm(pid)}): {why}") from None
        raise TraceError(f"kvmtrace: cannot trace PID {pid}: {e}") from None

    def _add_thread(self, tid: int, tgid: int) -> Thread:
        proc = self.procs.get(tgid)
        if proc is None:
            proc = self.procs[tgid] = Process(tgid)
        p = self.PtraceProcess(self.debugger, tid, True, is_thread=tid != tgid)
        self.debugger.dict[tid] = p
        self.debugger.list.append(p)
        t = Thread(tid, proc, p)
        self.threads[tid] = t
        return t

    # -- the loop -------------------------------------------------------------------------------------

    def now(self) -> float:
        return (time.monotonic_ns() - self.t0) / 1e9

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGALRM:
            if self._waiting:
                raise _Interrupted
            return
        if self.launched is not None:
            # A command we started decides for itself: pass SIGTERM on (a terminal's Ctrl-C reaches it
            # directly, as the same foreground process group) and trace it to its end.
            if signum == signal.SIGTERM:
                try:
                    os.kill(self.launched, signal.SIGTERM)
                except OSError:
                    pass
            return
        self.stop_signal = signum
        if self._waiting:
            raise _Interrupted

    def run(self) -> int:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
        try:
            self._loop()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for s, h in old.items():
                signal.signal(s, h)
            for t in list(self.threads.values()):
                self._flush_thread(t)
            for proc in self.procs.values():
                proc.close()
        if self.launched is not None:
            return self.exit_code if self.exit_code is not None else 1
        return self.exit_code if self.exit_code is not None else 0

    def _loop(self) -> None:
        while self.threads:
            if self.stop_signal and not self.detaching:
                self._begin_detach()
                continue
            self._waiting = True
            try:
                if self.stop_signal and not self.detaching:
                    continue                           # the signal came between the check and here
                pid, status = os.waitpid(-1, _WALL)
            except _Interrupted:
                if self.detaching:
                    self._force_detach()               # threads that never reported their stop
                continue
            except ChildProcessError:
                return                                 # nothing left to wait for
            finally:
                self._waiting = False
            self._dispatch(pid, status)

    def _dispatch(self, pid: int, status: int) -> None:
        t = self.threads.get(pid)
        if t is None:
            if os.WIFSTOPPED(status):
                self.early_stops[pid] = status        # a clone whose parent's event has not arrived yet
            return
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self._thread_gone(t, status)
            return
        t.stopped = True
        sig = os.WSTOPSIG(status)
        event = status >> 16 & 0xFF
        if sig == _SYSCALL_TRAP or event == L.PTRACE_EVENT_SECCOMP:
            self._syscall_stop(t)
        elif event in (L.PTRACE_EVENT_CLONE, L.PTRACE_EVENT_FORK, L.PTRACE_EVENT_VFORK):
            self._new_child(t, event)
            self._resume(t)
        elif event == L.PTRACE_EVENT_EXEC:
            self._exec(t)
        elif event == L.PTRACE_EVENT_STOP:
            t.started = True
            if sig in _STOP_SIGNALS:
                self._listen(t)                        # a group-stop (SIGSTOP, Ctrl-Z): stay stopped
            else:
                self._resume(t)                        # the first stop of a seized thread, or our interrupt
        elif event:
            self._resume(t)                            # exit, vfork-done: nothing to see
        else:
            self._resume(t, sig)                       # a signal for the VMM (SIGUSR1 kicks, ...): deliver it
            t.started = True

    # -- stops -------------------------------------------------------------------------------------------

    def _syscall_stop(self, t: Thread) -> None:
        info = self._info
        try:
            self.binding.ptrace(L.PTRACE_GET_SYSCALL_INFO, t.tid, self._info_size, self._info_addr)
        except self.PtraceError:
            self._resume(t)
            return
        op = info.op
        if op == L.PTRACE_SYSCALL_INFO_EXIT:
            if t.inflight is not None:
                self._ioctl_exit(t, info.exit.rval, bool(info.exit.is_error))
            if self.seccomp:
                t.want_exit_stop = False
            self._resume(t)
            return
        args = info.entry.args if op == L.PTRACE_SYSCALL_INFO_ENTRY else info.seccomp.args
        nr = info.entry.nr if op == L.PTRACE_SYSCALL_INFO_ENTRY else info.seccomp.nr
        if nr == L.NR_ioctl and is_kvm_request(args[1] & 0xFFFF_FFFF) and op != L.PTRACE_SYSCALL_INFO_NONE:
            self._ioctl_entry(t, args[0] & 0xFFFF_FFFF, args[1] & 0xFFFF_FFFF, args[2])
        if self.seccomp and t.inflight is not None:
            t.want_exit_stop = True
        self._resume(t)

    def _ioctl_entry(self, t: Thread, fd: int, request: int, arg: int) -> None:
        t0 = time.monotonic_ns()
        proc = t.proc
        if request == KVM_RUN:
            if t.reply is not None:
                self._answer(t)
            role = proc.role(fd, fresh=False)
        else:
            role = proc.role(fd, fresh=True)
        if role is None:
            return
        decoded = None
        if request != KVM_RUN and not reads_argument_at_exit(request):
            decoded = decode_argument(request, arg, self._reader(t))
        t.inflight = InFlight(t0, fd, role, request, arg, decoded)

    def _ioctl_exit(self, t: Thread, rval: int, is_error: bool) -> None:
        f = t.inflight
        t.inflight = None
        assert f is not None
        now = time.monotonic_ns()
        proc = t.proc
        err = -rval if is_error else None
        ret = -1 if is_error else rval
        rec = IoctlRecord((f.t0 - self.t0) / 1e9, proc.tgid, t.tid, f.fd, f.role, f.request, request_name(f.request),
                          f.decoded, ret, err, now - f.t0)
        if f.request == KVM_RUN:
            if f.role.kind == "vcpu" and err == errno.EINTR:
                # A signal (a VMM's kick, our own PTRACE_INTERRUPT) ended the run: no exit to decode, and
                # kvm_run may still hold the previous one.
                rec.exit = ExitRecord("INTR", key="EINTR")
            elif f.role.kind == "vcpu" and err is None:
                rec.exit = self._read_exit(proc, f.role.index or 0)
                if rec.exit is not None and rec.exit.pending_reply is not None:
                    t.reply = rec                      # shown once the VMM has answered (next KVM_RUN)
                    return
        else:
            if err is None and reads_argument_at_exit(f.request):
                rec.arg = decode_argument(f.request, f.arg, self._reader(t), ret)
            if err is None:
                self._learn_fd(proc, f, ret)
        self.report.record(rec)

    def _reader(self, t: Thread):
        """Reads of an argument structure: python-ptrace's readBytes on the stopped thread (its
        /proc/TID/mem, with PTRACE_PEEKDATA where that is refused), failures as OSError."""
        read_bytes = t.ptrace.readBytes
        PtraceError = self.PtraceError

        def read(hva: int, n: int) -> bytes:
            if not 0 < hva < 1 << 63:
                raise OSError(errno.EFAULT, f"bad address {hva:#x}")
            try:
                data = read_bytes(hva, n)
            except PtraceError as e:
                raise OSError(errno.EFAULT, str(e)) from None
            if len(data) < n:
                raise OSError(errno.EFAULT, f"short read at {hva:#x}")
            return data
        return read

    def _read_exit(self, proc: Process, vcpu: int) -> ExitRecord | None:
        hva = proc.kvm_run_hva(vcpu)
        if hva is None:
            return None
        try:
            head = proc.read(hva, RUN_HEAD)
            ex = decode_exit(head, lambda off, n: proc.read(hva + off, n))
        except OSError:
            proc.run_hva.pop(vcpu, None)          # remapped? look it up again next time
            return None
        ex.fields["kvm_run"] = hva
        if ex.reason == "MMIO":
            base = proc.windows.window(ex.fields["gpa"])
            if base is not None:
                ex.fields["register"] = proc.windows.name(ex.fields["gpa"])
                ex.fields["window"] = f"virtio-mmio@{base:#x}"
                ex.key = f"{base:#x} {'write' if ex.fields['write'] else 'read'}"
        return ex

    def _answer(self, t: Thread) -> None:
        """The VMM is entering the guest again: the data it wrote for the last read is in kvm_run now."""
        rec = t.reply
        t.reply = None
        assert rec is not None and rec.exit is not None
        ex = rec.exit
        hva = ex.fields.get("kvm_run")
        if ex.pending_reply is not None and hva is not None:
            off, n = ex.pending_reply
            try:
                data = t.proc.read(hva + off, n)
                ex.fields["data"] = data.hex()
                if ex.reason == "MMIO":
                    t.proc.windows.learn(ex.fields["gpa"], False, int.from_bytes(data, "little"))
            except OSError:
                pass
        ex.pending_reply = None
        self.report.record(rec)

    def _learn_fd(self, proc: Process, f: InFlight, ret: int) -> None:
        if f.request == KVM_CREATE_VM:
            proc.roles[ret] = VM
        elif f.request == KVM_CREATE_VCPU:
            proc.roles[ret] = Role("vcpu", f.arg)
            proc.run_hva.pop(f.arg, None)

    def _flush_thread(self, t: Thread) -> None:
        if t.reply is not None:
            rec, t.reply = t.reply, None
            if rec.exit is not None:
                rec.exit.pending_reply = None
            self.report.record(rec)
        if t.inflight is not None:
            f, t.inflight = t.inflight, None
            self.report.record(IoctlRecord((f.t0 - self.t0) / 1e9, t.proc.tgid, t.tid, f.fd, f.role, f.request,
                                           request_name(f.request), f.decoded, unfinished=True,
                                           duration_ns=time.monotonic_ns() - f.t0))

    def _new_child(self, parent: Thread, event: int) -> None:
        try:
            new = self.binding.ptrace_geteventmsg(parent.tid)
        except self.PtraceError:
            return
        if new in self.threads:
            return
        tgid = parent.proc.tgid if event == L.PTRACE_EVENT_CLONE else new
        if event == L.PTRACE_EVENT_CLONE:
            tgid = _tgid_of(new)                     # a clone without CLONE_THREAD is a process
        child = self._add_thread(new, tgid)
        if tgid != parent.proc.tgid:
            self.report.event("process", f"{parent.proc.tgid} started process {new}", pid=new,
                              parent=parent.proc.tgid)
        early = self.early_stops.pop(new, None)
        if early is not None:
            self._dispatch(new, early)
        else:
            child.stopped = False

    def _exec(self, t: Thread) -> None:
        try:
            former = self.binding.ptrace_geteventmsg(t.tid)
        except self.PtraceError:
            former = t.tid
        # execve from a thread: the kernel has ended the others and handed the thread the leader's ID.
        proc = t.proc
        for other in [o for o in self.threads.values() if o.proc is proc and o.tid not in (t.tid, former)]:
            self._forget(other)
        if former != t.tid and former in self.threads:
            self._forget(self.threads[former])
        proc.exec_done()
        self._resume(t)

    def _thread_gone(self, t: Thread, status: int) -> None:
        self._flush_thread(t)
        proc = t.proc
        self._forget(t)
        if t.tid != proc.tgid:
            return
        code: int | None
        if os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
            text = f"{proc.tgid} ({proc.comm}) exited with {code}"
            fields: dict[str, Any] = {"code": code, "signal": None}
        else:
            sig = os.WTERMSIG(status)
            code = 128 + sig
            text = f"{proc.tgid} ({proc.comm}) killed by {self.signal_name(sig)}"
            fields = {"code": None, "signal": self.signal_name(sig)}
        self.report.event("process_exit", text, pid=proc.tgid, **fields)
        if proc.tgid in (self.launched, self.attached):
            self.exit_code = code
            if os.WIFSIGNALED(status) or self.attached is not None:
                self.exit_text = text
        proc.close()
        del self.procs[proc.tgid]

    def _forget(self, t: Thread) -> None:
        self.threads.pop(t.tid, None)
        p = t.ptrace
        p.is_attached = False               # we ended the trace ourselves: no detach from its finaliser
        if getattr(p, "read_mem_file", None) is not None:
            p.read_mem_file.close()
            p.read_mem_file = None
        self.debugger.deleteProcess(p)

    # -- resuming and detaching -----------------------------------------------------------------------------

    def _resume(self, t: Thread, sig: int = 0) -> None:
        if self.detaching:
            self._detach(t, sig)
            return
        t.stopped = False
        try:
            # The binding, not PtraceProcess.cont/syscall: those drop a SIGTRAP, which is the VMM's own.
            if self.seccomp and not t.want_exit_stop:
                self.binding.ptrace_cont(t.tid, sig)
            else:
                self.binding.ptrace_syscall(t.tid, sig)
        except self.PtraceError as e:
            if e.errno != errno.ESRCH:
                raise
            # killed meanwhile (SIGKILL): its exit status is on its way

    def _listen(self, t: Thread) -> None:
        if self.detaching:
            self._detach(t, 0)
            return
        t.stopped = False
        try:
            self.binding.ptrace(L.PTRACE_LISTEN, t.tid, 0, 0)
        except self.PtraceError:
            pass

    def _detach(self, t: Thread, sig: int) -> None:
        self._flush_thread(t)
        try:
            self.binding.ptrace_detach(t.tid, sig)
        except self.PtraceError:
            pass
        self._forget(t)
        proc = t.proc
        if proc.tgid in self.procs and not any(o.proc is proc for o in self.threads.values()):
            self.report.event("detach", f"detached from {proc.tgid} ({proc.comm})", pid=proc.tgid)
            proc.close()
            del self.procs[proc.tgid]

    def _begin_detach(self) -> None:
        """Stop every thread (PTRACE_INTERRUPT) and detach each at the stop it reports: the VMM runs on,
        with at most one KVM_RUN returning EINTR per vCPU, which every VMM handles (it is what a signal
        does).  A thread that reports nothing within two seconds is detached as it is."""
        self.detaching = True
        for t in list(self.threads.values()):
            if t.stopped:
                self._detach(t, 0)
                continue
            try:
                self.binding.ptrace(L.PTRACE_INTERRUPT, t.tid, 0, 0)
            except self.PtraceError:
                self._forget(t)
        signal.setitimer(signal.ITIMER_REAL, 2.0)

    def _force_detach(self) -> None:
        for t in list(self.threads.values()):
            self._detach(t, 0)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


# ---- the verb ------------------------------------------------------------------------------------------


def _open_output(path: str | None) -> tuple[IO[str], bool]:
    if path is None:
        return sys.stderr, False
    try:
        return open(path, "w", buffering=1 << 16), True
    except OSError as e:
        raise TraceError(f"kvmtrace: cannot write {path}: {e.strerror}") from None


def main(args: Any) -> int:
    """`pyvmm kvmtrace [-o FILE] [--json] [--summary] [--exits|--no-exits] [-v] (-p PID | -- COMMAND...)`."""
    command = list(args.command or [])
    if command and command[0] == "--":
        command = command[1:]
    if args.pid is None and not command:
        raise TraceError("kvmtrace: give a command to run (pyvmm kvmtrace -- qemu-system-x86_64 ...) "
                         "or a process to attach to (-p PID)")
    if args.pid is not None and command:
        raise TraceError("kvmtrace: give either -p PID or a command, not both")
    out, owned = _open_output(args.output)
    exits = "all" if args.exits else "none" if args.no_exits else "auto"
    report = Report(out, json_lines=args.json, exits=exits, summary_only=args.summary, verbose=args.verbose)
    try:
        tracer = Tracer(report)
        if args.pid is not None:
            target = tracer.attach(args.pid)
            title = f"kvmtrace of {target} ({tracer.procs[target].comm})"
        else:
            target = tracer.launch(command, use_seccomp=not args.no_seccomp)
            title = f"kvmtrace of {' '.join(command)}"
        code = tracer.run()
        duration = tracer.now()
        if args.json and owned:
            # The JSON goes to a file for tools; people at the terminal still get the table.
            report.finish(duration, title)
            report.summary.render(sys.stderr, duration, title)
        else:
            report.finish(duration, title)
        if tracer.exit_text:
            sys.stderr.write(f"pyvmm: kvmtrace: {tracer.exit_text}\n")
        elif tracer.attached is not None and tracer.detaching:
            sys.stderr.write(f"pyvmm: kvmtrace: detached from {target}; it runs on\n")
        return code
    finally:
        if owned:
            out.close()
        else:
            out.flush()
