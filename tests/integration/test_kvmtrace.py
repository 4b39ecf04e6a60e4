"""`pyvmm kvmtrace` on pyvmm itself: the setup ioctls and the exits of the tiny guest as they happen, an
attach to a running VM during a balloon inflate and a detach that leaves it running, and the errors."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyvmm.cli_control import QmpConnection
from tests.support.guest import BANNER, GUEST, ROOT, MiB, ensure_built, tmp_socket
from tests.support.kvmtrace import ioctls, records, serial_bytes

pytestmark = pytest.mark.kvm

PYVMM = [sys.executable, "-m", "pyvmm"]
EXIT_BAD_SCENARIO = 6                       # guest/kernel.h


def kvmtrace(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    ensure_built()
    return subprocess.run([*PYVMM, "kvmtrace", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=ROOT)


def test_trace_of_the_tiny_guest_from_create_vm_to_its_exit(tmp_path):
    trace = tmp_path / "t.jsonl"
    res = kvmtrace("--json", "-o", str(trace), "--", *PYVMM, "run", str(GUEST), "-m", "128M",
                   "--append", "scenario=selftest")
    assert res.returncode == 0, res.stderr
    recs = records(trace)
    assert recs[0]["type"] == "start" and recs[0]["mode"] == "seccomp"

    names = [r["request"] for r in recs if r["type"] == "ioctl"]
    order = [names.index(n) for n in ("KVM_CREATE_VM", "KVM_SET_USER_MEMORY_REGION", "KVM_CREATE_VCPU",
                                      "KVM_SET_CPUID2", "KVM_RUN")]
    assert order == sorted(order), "the setup ioctls come in the order a VMM must make them"
    (vm,) = ioctls(recs, "KVM_CREATE_VM")
    assert vm["role"] == "system" and vm["ret"] > 0
    ram = [r["arg"] for r in ioctls(recs, "KVM_SET_USER_MEMORY_REGION") if r["arg"]["flags"] == 0]
    assert ram == [{"slot": 0, "flags": 0, "guest_phys_addr": 0, "memory_size": 128 * MiB,
                    "userspace_addr": ram[0]["userspace_addr"]}]
    (vcpu,) = ioctls(recs, "KVM_CREATE_VCPU")
    assert vcpu["arg"] == {"vcpu_id": 0} and vcpu["role"] == "vm"
    (cpuid,) = ioctls(recs, "KVM_SET_CPUID2")
    assert cpuid["role"] == "vcpu" and cpuid["fd"] == vcpu["ret"] and cpuid["arg"]["nent"] > 10
    assert {e["function"] for e in cpuid["arg"]["entries"]} >= {0, 1, 0x4000_0000}

    runs = ioctls(recs, "KVM_RUN")
    assert runs and all(r["role"] == "vcpu" and r["vcpu"] == 0 and r["tid"] != vm["tid"] for r in runs), \
        "KVM_RUN comes from the vCPU thread, a thread of its own"
    console = res.stdout
    banner = BANNER.search(console).group(0)
    assert banner.encode() in serial_bytes(recs), "the IO exits on 0x3f8 spell the guest's banner"
    assert serial_bytes(recs).replace(b"\r\n", b"\n").decode() in console.replace("\r\n", "\n")
    last = runs[-1]["exit"]
    assert (last["reason"], last["port"], last["size"], last["data"]) == ("IO", 0xF4, 4, "00000000")
    lsr = [r["exit"] for r in runs if r["exit"].get("port") == 0x3FD]
    assert lsr and all(e["direction"] == "in" and int(e["data"], 16) & 0x20 for e in lsr), \
        "each LSR read shows the reply pyvmm gave: THRE set"

    summary = recs[-1]
    assert summary["type"] == "summary"
    assert summary["ioctls"]["KVM_RUN"]["count"] == len(runs)
    assert summary["exits"]["by_reason"]["IO"] == sum(1 for r in runs if r["exit"]["reason"] == "IO")
    exit_rec = next(r for r in recs if r["type"] == "process_exit")
    assert exit_rec["code"] == 0
    assert "KVM_SET_USER_MEMORY_REGION" in res.stderr and "COM1 RBR/THR" in res.stderr, \
        "the table is printed for people while the JSON goes to the file"


def test_text_trace_names_fields_and_exit_code_is_the_guests(tmp_path):
    res = kvmtrace("--", *PYVMM, "run", str(GUEST), "-m", "64M", "--no-firmware", "--append", "scenario=nosuch")
    assert res.returncode == EXIT_BAD_SCENARIO, res.stderr
    err = res.stderr
    assert re.search(r"vm +KVM_SET_USER_MEMORY_REGION \{slot 0, flags 0, guest_phys_addr 0x0, "
                     r"memory_size 64 MiB, userspace_addr 0x[0-9a-f]+\} = 0 <", err)
    # --no-firmware: pyvmm sets the PVH entry state itself, so the trace shows its registers.
    assert re.search(r"vcpu0 +KVM_SET_SREGS \{mode 32-bit protected mode, cr0 0x11 PE\|ET, .*efer 0,", err)
    assert re.search(r"vcpu0 +KVM_SET_REGS \{rip 0x[0-9a-f]+, rflags 0x2, rbx 0x6000\}", err)
    assert f"IO out 0xf4 (debug exit) size 4: {EXIT_BAD_SCENARIO:02x}000000" in err
    assert f"exited with {EXIT_BAD_SCENARIO}" in err


def test_summary_only(tmp_path):
    res = kvmtrace("--summary", "--", *PYVMM, "run", str(GUEST), "-m", "64M", "--append", "scenario=selftest")
    assert res.returncode == 0, res.stderr
    assert " = 0 <" not in res.stderr, "--summary prints no per-call lines"
    assert re.search(r"KVM_RUN +│ +[\d,]+ ", res.stderr)
    assert re.search(r"IO +│ 0x3f8 out +│ COM1 RBR/THR +│ +[\d,]+ │", res.stderr)


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _wait_for(stream, pattern: str, timeout: float) -> str:
    """Lines of a pipe until one matches (select, so a silent process fails the test instead of hanging it)."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.5)
        if ready:
            line = stream.readline()
            if not line:
                break
            seen += line
            if re.search(pattern, line):
                return seen
    raise AssertionError(f"no line matching {pattern!r} within {timeout} s; got:\n{seen}")


def test_attach_traces_a_balloon_inflate_and_detaches_leaving_the_vm_running(tmp_path):
    ensure_built()
    sock = tmp_socket("kvmtrace.qmp")
    vm = subprocess.Popen([*PYVMM, "run", str(GUEST), "-m", "256M", "--append", "scenario=demo dirty=64M",
                           "--qmp", f"unix:{sock},server,wait=off"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=ROOT, text=True)
    tracer = None
    try:
        _wait_for(vm.stdout, r"balloon: version 2 features", 90)
        trace = tmp_path / "attach.jsonl"
        tracer = subprocess.Popen([*PYVMM, "kvmtrace", "-p", str(vm.pid), "--json", "-o", str(trace)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                  cwd=ROOT, text=True)
        attached = _wait_for(tracer.stderr, r"attached to", 30)
        assert f"attached to {vm.pid}" in attached and "vcpu0" in attached
        with QmpConnection(sock) as q:
            q.execute("balloon", {"value": 192 * MiB})
            deadline = time.monotonic() + 120
            while q.execute("query-balloon")["actual"] != 192 * MiB:
                assert time.monotonic() < deadline, "the guest did not inflate"
                time.sleep(0.2)
        tracer.send_signal(signal.SIGINT)
        rest = tracer.communicate(timeout=30)[1]
        assert tracer.returncode == 0, rest
        assert f"detached from {vm.pid}; it runs on" in rest

        recs = records(trace)
        mmio = [r["exit"] for r in ioctls(recs, "KVM_RUN") if r.get("exit", {}).get("reason") == "MMIO"]
        window = [e for e in mmio if 0xD000_0000 <= e["gpa"] < 0xD000_1000]
        assert window, "the balloon's virtio-mmio window is where the inflate talks to the device"
        # The driver reports its progress in the config field `actual` (virtio-mmio Config + 4), in pages.
        actual = [int.from_bytes(bytes.fromhex(e["data"]), "little") for e in window
                  if e["write"] and e["gpa"] == 0xD000_0104]
        assert actual and actual[-1] == (64 * MiB) >> 12
        reads = [e for e in window if not e["write"] and e["gpa"] == 0xD000_0060]
        assert reads and all("data" in e for e in reads), "InterruptStatus reads carry pyvmm's reply"
        assert any(r["type"] == "detach" for r in recs) and recs[-1]["type"] == "summary"

        # Detached, the VM goes on: no tracer, and it deflates on request and quits cleanly.
        assert vm.poll() is None
        for task in Path(f"/proc/{vm.pid}/task").iterdir():
            assert "TracerPid:\t0\n" in (task / "status").read_text(), f"thread {task.name} still traced"
        with QmpConnection(sock) as q:
            assert q.execute("query-status")["status"] == "running"
            q.execute("balloon", {"value": 256 * MiB})
            deadline = time.monotonic() + 120
            while q.execute("query-balloon")["actual"] != 256 * MiB:
                assert time.monotonic() < deadline, "the guest did not deflate after the detach"
                time.sleep(0.2)
            try:
                q.execute("quit")
            except Exception:
                pass                                   # the VMM may hang up before it answers
        assert vm.wait(30) == 0
    finally:
        for p in (tracer, vm):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def test_errors_are_one_line(tmp_path):
    res = kvmtrace("--", "no-such-vmm-anywhere")
    assert res.returncode == 127
    assert res.stderr.splitlines() == ["pyvmm: kvmtrace: command not found: no-such-vmm-anywhere "
                                       "(give a path, or check PATH)"]

    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    res = kvmtrace("-p", str(pid_max + 1))
    assert res.returncode == 1
    assert res.stderr.splitlines() == [f"pyvmm: kvmtrace: no process with PID {pid_max + 1} "
                                       "(is the VMM running? check with ps)"]

    res = kvmtrace()
    assert res.returncode == 1 and len(res.stderr.splitlines()) == 1 and "-p PID" in res.stderr

    # A process that already has a tracer (itself, through PTRACE_TRACEME: this test is its tracer).
    traced = subprocess.Popen([sys.executable, "-c", "import ctypes, time; ctypes.CDLL(None).ptrace(0, 0, 0, 0); "
                               "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert traced.stdout.readline().strip() == "ready"
        res = kvmtrace("-p", str(traced.pid))
        assert res.returncode == 1
        assert res.stderr.splitlines() == [
            f"pyvmm: kvmtrace: cannot trace PID {traced.pid} ({_comm(traced.pid)}): it is already traced by "
            f"PID {os.getpid()} ({_comm(os.getpid())}); a process has one tracer at a time"]
    finally:
        traced.kill()
        traced.wait()


def test_a_tracee_that_dies_is_one_line_and_its_signal_is_the_exit_code():
    res = kvmtrace("--", sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert res.returncode == 128 + signal.SIGKILL
    assert re.fullmatch(r"pyvmm: kvmtrace: \d+ \(python3?\) killed by SIGKILL", res.stderr.splitlines()[-1])
    assert sum("killed by SIGKILL" in line and line.startswith("pyvmm:") for line in res.stderr.splitlines()) == 1


def test_a_vmm_killed_while_traced(tmp_path):
    """The VMM dies under the trace (SIGKILL from outside, mid-run): one line, the signal's exit code, and
    the summary of what was traced up to then."""
    ensure_built()
    trace = tmp_path / "killed.jsonl"
    tracer = subprocess.Popen([*PYVMM, "kvmtrace", "--json", "-o", str(trace), "--", *PYVMM, "run", str(GUEST),
                               "-m", "64M", "--append", "scenario=demo dirty=16M"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT, text=True)
    try:
        _wait_for(tracer.stdout, r"balloon: version 2 features", 90)
        vmm = json.loads(trace.read_text().splitlines()[0])["pid"]
        comm = _comm(vmm)
        os.kill(vmm, signal.SIGKILL)
        err = tracer.communicate(timeout=30)[1]
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
    assert tracer.returncode == 128 + signal.SIGKILL
    assert err.splitlines()[-1] == f"pyvmm: kvmtrace: {vmm} ({comm}) killed by SIGKILL"
    recs = records(trace)
    assert recs[-1]["type"] == "summary" and recs[-1]["exits"]["total"] > 0
    assert any(r["type"] == "process_exit" and r["signal"] == "SIGKILL" for r in recs)


def test_python_ptrace_is_loaded_only_by_the_verb():
    code = ("import sys, pyvmm.cli as c; c.build_parser().parse_args(['kvmtrace', '-p', '1']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ptrace' or 'kvmtrace' in m))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr
