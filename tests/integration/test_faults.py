"""Faults of the host and of the people around the VM: each ends in one line, or the VM goes on, and nothing leaks.

Guest RAM the host will not map, no file descriptor left, the trace file on a full disk, the QMP socket
deleted under a running VM, a QMP client killed mid-command, pyvmm stopped and continued (SIGSTOP,
SIGCONT), and every vCPU hammering one register at once.  Where the VM can go on, it does; where it
cannot, pyvmm says so in one line and exits; no thread, fd or mapping is left behind (counted).
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pyvmm.arch.x86 import cpu
from pyvmm.config import VmConfig
from pyvmm.kvm.abi import KvmMpState
from pyvmm.monitor.hmp import run_hmp
from pyvmm.vm import Machine
from tests.support.elfs import write_pvh_elf
from tests.support.guest import GUEST, ROOT, ensure_built, tmp_socket

pytestmark = pytest.mark.kvm

MiB = 1 << 20


def pyvmm_with_limits(args: list[str], *, nofile: int | None = None, address_space: int | None = None,
                      timeout: float = 60) -> subprocess.CompletedProcess:
    def limits() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        if address_space is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    ensure_built()
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, cwd=ROOT, preexec_fn=limits)


def one_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("pyvmm: "), stderr
    return lines[0]


def test_guest_ram_the_host_will_not_map():
    res = pyvmm_with_limits(["run", str(GUEST), "-m", "4G", "--append", "scenario=selftest"],
                            address_space=2 << 30)
    line = one_line(res.stderr)
    assert res.returncode == 2 and "cannot map 4096 MiB of guest RAM (Cannot allocate memory)" in line
    assert "-m" in line and "ulimit -v" in line


def test_every_file_descriptor_limit_ends_in_one_line_or_a_clean_run():
    """From the fewest descriptors the interpreter can start with, up: each open that fails on the way
    (the KVM fds, eventfds, pipes, the kvm_run mappings, module files) is one line; then the run passes."""
    outcomes = {}
    for n in range(5, 40):
        res = pyvmm_with_limits(["run", str(GUEST), "-m", "64M", "--append", "scenario=selftest"], nofile=n)
        if res.returncode == 0:
            outcomes[n] = "ok"
            break
        line = one_line(res.stderr)
        assert "out of file descriptors" in line and f"now {n}" in line, line
        outcomes[n] = line
    assert list(outcomes.values())[-1] == "ok", outcomes
    assert len(outcomes) > 3          # several different places were made to fail on the way


def test_trace_file_on_a_full_disk_stops_the_trace_not_the_vm():
    res = pyvmm_with_limits(["run", str(GUEST), "-m", "128M", "--append", "scenario=hostile",
                             "--trace", "virtio", "--trace-file", "/dev/full"], timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    warnings = [x for x in res.stderr.splitlines() if "trace file /dev/full" in x]
    assert len(warnings) == 1 and "No space left on device" in warnings[0] and "the VM goes on" in warnings[0]
    assert "Traceback" not in res.stderr


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settled_fds(pid: int) -> int:
    """The fd count once it holds still for a moment (a client that just hung up is still being dropped)."""
    last = _fds(pid)
    for _ in range(50):
        time.sleep(0.1)
        now = _fds(pid)
        if now == last:
            return now
        last = now
    return last


def _qmp(path: str, *commands: str) -> list[bytes]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        f = s.makefile("rwb")
        replies = [f.readline()]
        for c in ('{"execute": "qmp_capabilities"}', *commands):
            f.write(c.encode() + b"\n")
            f.flush()
            replies.append(f.readline())
        return replies


@pytest.fixture
def running_vm():
    """`pyvmm run` with the demo guest and a QMP socket, in its own process."""
    ensure_built()
    sock = tmp_socket("fault.qmp")
    p = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", str(GUEST), "-m", "128M", "--append",
                          "scenario=demo dirty=8M", "--qmp", f"unix:{sock}"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.exists(sock), "no QMP socket"
    assert b"running" in _qmp(sock, '{"execute": "query-status"}')[-1]
    yield p, sock
    if p.poll() is None:
        p.kill()
        p.wait(10)


def test_qmp_socket_deleted_while_the_vm_runs(running_vm):
    p, sock = running_vm
    os.unlink(sock)
    with open(sock, "w") as f:                       # someone else's file now lives at that path
        f.write("not ours")
    time.sleep(0.5)
    assert p.poll() is None                          # the VM goes on
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 143 and b"Traceback" not in err, err
    assert Path(sock).read_text() == "not ours"      # pyvmm removed only its own socket: none


def test_qmp_client_killed_mid_command_leaves_the_vm_and_no_fd(running_vm):
    p, sock = running_vm
    before = _settled_fds(p.pid)
    code = (f"import socket, os, signal; s = socket.socket(socket.AF_UNIX); s.connect({sock!r}); s.recv(4096); "
            "s.sendall(b'{\"execute\": \"qmp_capabilities\"}'); s.recv(4096); "
            "s.sendall(b'{\"execute\": \"balloon\", \"argum'); os.kill(os.getpid(), signal.SIGKILL)")
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert killed.returncode == -signal.SIGKILL
    assert _settled_fds(p.pid) == before
    assert b'"running"' in _qmp(sock, '{"execute": "query-status"}')[-1]


def test_sigstop_and_sigcont_the_vm_goes_on(running_vm):
    p, sock = running_vm
    p.send_signal(signal.SIGSTOP)
    time.sleep(1.0)
    p.send_signal(signal.SIGCONT)
    replies = _qmp(sock, '{"execute": "query-status"}', '{"execute": "balloon", "arguments": {"value": 100663296}}',
                   '{"execute": "query-balloon"}')
    assert b'"running"' in replies[2] and b'"return": {}' in replies[3]
    deadline = time.monotonic() + 60
    while b"100663296" not in _qmp(sock, '{"execute": "query-balloon"}')[-1]:
        assert time.monotonic() < deadline, "the guest never reached the target after SIGCONT"
        time.sleep(0.2)
    _qmp(sock, '{"execute": "quit"}')
    assert p.wait(20) == 0


# --- every vCPU at one register -------------------------------------------------------------------------

# 1: movl $0x10000, 0xd0000050 ; jmp 1b -- QueueNotify of the balloon's window with bits above 15 set,
# which (without VIRTIO_F_NOTIFICATION_DATA) names no queue: a guest error on every write.
HAMMER = bytes.fromhex("c705500000d000000100") + b"\xeb\xf4"


def test_every_vcpu_hammering_one_register(tmp_path):
    """Four vCPUs write the balloon's QueueNotify as fast as they can (no ioeventfd: every write reaches
    the transport) while the monitor reads the device: every write is one guest error, counted exactly,
    the device never needs a reset, the monitor answers, and the VM stops cleanly."""
    elf = write_pvh_elf(tmp_path, "hammer.elf", code=HAMMER)
    smp = 4
    m = Machine(VmConfig(kernel=elf, memory=64 * MiB, smp=smp, firmware=None, ioeventfd=False, console="none"))
    try:
        entry, start_info = m.kernel.image.pvh_entry, m.kernel.boot_info
        for v in m.vcpus[1:]:                 # the APs start at the same loop, no INIT/SIPI needed
            cpu.set_pvh_entry_state(v.fd, entry, start_info)
            v.fd.set_mp_state(KvmMpState.RUNNABLE)
        threads_before = threading.active_count()
        m.start()
        answers = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            answers.append(run_hmp(m, "info virtio"))
        assert m.status() == "running"
        m.stop()
        m.wait(10)
        t = m.virtio_devices[0]
        exits = [v.exits for v in m.vcpus]
    finally:
        m.close()
    assert all(e > 100 for e in exits), exits
    assert t.guest_errors == sum(exits)       # one per write, none lost, none doubled
    assert not t.status & 0x40                # no DEVICE_NEEDS_RESET
    assert answers and all("balloon0: virtio-balloon at 0xd0000000" in a for a in answers)
    assert threading.active_count() <= threads_before
