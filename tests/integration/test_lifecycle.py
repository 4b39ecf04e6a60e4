"""Stopping a VM: SIGINT and SIGTERM stop it cleanly and restore the terminal; a vCPU bug never hangs."""

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pexpect
import pytest

from pyvmm.config import VmConfig
from pyvmm.vm import Machine
from tests.support.guest import GUEST, ROOT, MiB, ensure_built, machine

pytestmark = pytest.mark.kvm


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_signal_stops_the_vm(sig, code, word):
    ensure_built()
    p = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", str(GUEST), "--append", "scenario=demo dirty=8M"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        line = b""
        while b"balloon: version" not in line and time.monotonic() < deadline:
            line = p.stdout.readline()
        assert b"balloon: version" in line
        p.send_signal(sig)
        out, err = p.communicate(timeout=20)
    finally:
        p.kill()  # a VMM that outlived the signal must not outlive the test (no-op once it has exited)
        p.wait()
    assert p.returncode == code, err
    assert word in err.decode() and b"Traceback" not in err


def test_ctrl_c_while_the_command_line_starts_is_one_line():
    """Ctrl-C before main() has a handler for it (modules loading, arguments parsed): no traceback."""
    code = ("import pyvmm.cli as c\n"
            "def interrupted():\n    raise KeyboardInterrupt\n"
            "c.main = interrupted\nc.entry()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (p.returncode, p.stderr) == (130, "pyvmm: interrupted\n")


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


def test_pause_resume_and_register_reads_keep_state_and_events_straight():
    events = []
    with machine("scenario=demo dirty=8M", memory=64 * MiB) as m:
        m.add_listener(lambda e, d: events.append(e))
        m.wait_for_console(r"balloon: version 2 features", 60)
        dump = m.vcpu_registers(0)                 # quiesces without events or state change
        assert "RIP=" in dump and m.status() == "running" and events == []
        m.pause()
        assert m.status() == "paused" and events == ["STOP"]
        exits = m.vcpus[0].exits
        time.sleep(0.3)
        assert m.vcpus[0].exits == exits           # nothing runs while paused
        m.vcpu_registers(0)
        assert m.status() == "paused" and events == ["STOP"]   # a user's pause stays a pause
        m.resume()
        assert m.status() == "running" and events == ["STOP", "RESUME"]
        m.stop(0, "test")
        m.pause()
        m.resume()
        assert m.status() == "shutdown" and events == ["STOP", "RESUME", "SHUTDOWN"]


def test_machine_started_off_the_main_thread():
    """Needs the kick handler from the main thread: a clear error without it, a working VM with it."""
    code = (
        "import threading, sys\n"
        "from pyvmm.vm import Machine\nfrom pyvmm.config import VmConfig\nfrom pyvmm.errors import PyvmmError\n"
        "from pyvmm.vcpu import install_kick_handler\n"
        "out = {}\n"
        "def run():\n"
        "    m = Machine(VmConfig(memory=64 << 20, append='scenario=selftest', console='none'))\n"
        "    try:\n"
        "        m.start(); out['code'] = m.wait(30)\n"
        "    except PyvmmError as e:\n"
        "        out['error'] = str(e)\n"
        "    finally:\n"
        "        m.close()\n"
        "t = threading.Thread(target=run); t.start(); t.join()\n"
        "print(out.get('error', ''))\n"
        "install_kick_handler()\n"
        "t = threading.Thread(target=run); t.start(); t.join()\n"
        "print(out.get('code'))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    lines = res.stdout.splitlines()
    assert "install_kick_handler() called on the main thread" in lines[0], res
    assert lines[1] == "0"


def _counts() -> tuple[int, int, int]:
    import os

    fds = len(os.listdir("/proc/self/fd"))
    maps = len(Path("/proc/self/maps").read_text().splitlines())
    return fds, maps, threading.active_count()


def _start_demo(append: str = "scenario=demo dirty=8M"):
    m = Machine(VmConfig(kernel=GUEST, memory=64 << 20, append=append, console="none"))
    m.start()
    m.wait_for_console(r"balloon: version", 30)
    return m


def test_a_dropped_machine_stops_and_leaves_nothing_behind():
    """A notebook cell run again (`vm = Machine(...); vm.start()`) drops the old Machine without close():
    its vCPUs stop and its fds, mappings and threads go with it."""
    import gc

    ensure_built()
    _start_demo().close()                   # imports, caches and the interpreter's own arenas settle
    gc.collect()
    before = _counts()
    vm = _start_demo()
    control = vm.control
    vm = None                               # the only reference
    gc.collect()
    assert control.stopped.wait(5) and control.stop_reason == "the Machine was dropped"
    time.sleep(0.2)
    assert _counts() == before


def test_two_machines_side_by_side():
    ensure_built()
    a = Machine(VmConfig(kernel=GUEST, memory=64 << 20, append="scenario=selftest", console="none"))
    b = Machine(VmConfig(kernel=GUEST, memory=96 << 20, append="scenario=selftest", console="none"))
    with a, b:
        a.start()
        b.start()
        assert a.wait(60) == 0 and b.wait(60) == 0
        import re

        sizes = [int(re.search(r"pyvmm-guest: memory (\d+) MiB", m.console_text()).group(1)) for m in (a, b)]
        assert 60 < sizes[0] <= 64 and 92 < sizes[1] <= 96


def test_a_process_that_exits_without_close_stops_its_machine():
    ensure_built()
    code = ("from pyvmm import Machine, VmConfig\n"
            f"m = Machine(VmConfig(kernel={str(GUEST)!r}, memory=64 << 20, append='scenario=demo dirty=8M',"
            " console='none'))\n"
            "m.start()\nm.wait_for_console('balloon: version', 30)\nprint('up', flush=True)\n")
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 0 and res.stdout == "up\n" and "Traceback" not in res.stderr, res.stderr
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("smp", [2, 38])          # 38: the MP table no longer fits the EBDA, it goes to 0xF0000
def test_a_reset_writes_the_firmware_tables_again(smp):
    """A guest may scribble over the EBDA and the BIOS area; a machine reset writes back what was built
    there (the MP table's pointer and table, the ACPI tables)."""
    from pyvmm.arch.x86 import layout

    areas = [(layout.EBDA_START, layout.EBDA_END - layout.EBDA_START), (layout.ACPI_START, 0x2_0000)]
    with machine("scenario=demo dirty=8M", memory=64 * MiB, smp=smp) as m:
        m.wait_for_console(r"balloon: version 2 features", 60)
        built = [m.memory.read(gpa, size) for gpa, size in areas]
        assert built[0][:4] == b"_MP_" and built[1][:8] == b"RSD PTR "
        assert (b"PCMP" in built[0]) == (smp < 38) and (b"PCMP" in built[1]) == (smp >= 38)
        for gpa, size in areas:
            m.memory.write(gpa, bytes(size))
        m.reset()
        assert [m.memory.read(gpa, size) for gpa, size in areas] == built
        m.stop(0, "test")
