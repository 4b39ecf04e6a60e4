"""Stopping a VM: SIGINT and SIGTERM stop it cleanly and restore the terminal; a vCPU bug never hangs."""

import signal
import subprocess
import sys
import time

import pexpect
import pytest

from tests.support.guest import GUEST, ROOT, ensure_built, machine

pytestmark = pytest.mark.kvm


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_signal_stops_the_vm(sig, code, word):
    ensure_built()
    p = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", str(GUEST), "--append", "scenario=demo dirty=8M"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 60
    line = b""
    while b"balloon: version" not in line and time.monotonic() < deadline:
        line = p.stdout.readline()
    assert b"balloon: version" in line
    p.send_signal(sig)
    out, err = p.communicate(timeout=20)
    assert p.returncode == code, err
    assert word in err.decode() and b"Traceback" not in err


@pytest.mark.parametrize("monitor", ["", "--no-monitor"], ids=["monitor", "no-monitor"])
def test_terminal_restored_after_the_vm_stops(monitor):
    """In a real pseudo-terminal: raw mode while the guest runs, the same settings afterwards."""
    ensure_built()
    script = (f"stty -g; {sys.executable} -m pyvmm run {GUEST} {monitor} -m 64M --append scenario=selftest; "
              "echo EXIT=$?; stty -g")
    child = pexpect.spawn("bash", ["-c", script], cwd=str(ROOT), timeout=60, encoding="utf-8")
    child.expect(pexpect.EOF)
    lines = [x.strip() for x in child.before.splitlines() if x.strip()]
    child.close()
    assert "EXIT=0" in lines
    assert any("scenario selftest: PASS" in x for x in lines)
    before, after = lines[0], lines[-1]
    assert before.count(":") > 10 and before == after


def test_exception_on_a_vcpu_thread_stops_the_vm_and_reraises():
    with machine("scenario=selftest") as m:
        def boom(offset, size):
            raise RuntimeError("injected device bug")

        m.serial.read = boom
        with pytest.raises(RuntimeError, match="injected device bug"):
            m.wait(30)
        assert m.status() == "shutdown" and m.exit_code == 70
        assert "internal error on vCPU 0" in m.crash_report and "RIP=" in m.crash_report
