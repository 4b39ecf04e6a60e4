"""A QEMU user's habits on the tiny guest: -S and cont, system_reset and the guest's own reboot,
-no-reboot, -pidfile, -serial file:, -monitor on a socket, and the monitor in a real terminal (line
editing, completion, x and xp, gva2gpa)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from pyvmm.cli_control import QmpConnection
from tests.support.guest import BANNER, ROOT, ensure_built, pyvmm_cli
from tests.support.terminal import render_terminal

pytestmark = pytest.mark.kvm

RUNNING = "scenario=demo dirty=1M"      # the tiny guest boots, then follows the balloon until stopped


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def vm(tmp_path: Path, *args: str):
    """`pyvmm run ARGS` in the background, its console in tmp_path/out.txt; killed at the end."""
    ensure_built()
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:
        p = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", "-m", "128M", *args], stdout=f,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
    try:
        yield p, out
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def banners(out: Path) -> int:
    return len(BANNER.findall(out.read_text(errors="replace")))


def test_start_paused_then_cont_then_system_reset_boots_twice(tmp_path):
    sock = tmp_path / "q.sock"
    with vm(tmp_path, "-S", "-qmp", f"unix:{sock},server,wait=off", "-append", RUNNING) as (p, out):
        wait_for(sock.exists, what="the QMP socket")
        with QmpConnection(str(sock)) as q:
            assert q.execute("query-status")["status"] == "prelaunch"
            time.sleep(1.0)
            assert banners(out) == 0                     # not one instruction ran
            q.execute("cont")
            assert q.execute("query-status")["status"] == "running"
            wait_for(lambda: banners(out) == 1, what="the first boot")
            wait_for(lambda: "dirty:" in out.read_text(), what="the guest's scenario")
            q.execute("system_reset")
            assert q.wait_event("RESET", 30)["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
            wait_for(lambda: banners(out) == 2, what="the second boot")
            cpus = q.execute("query-cpus-fast")
            assert [c["cpu-index"] for c in cpus] == [0] and cpus[0]["target"] == "x86_64"
            q.execute("quit")
        assert p.wait(30) == 0
    text = out.read_text()
    assert text.count("pyvmm-firmware") >= 2 or text.count("pyvmm-guest: cmdline") == 2


def test_guest_reboot_scenario_boots_twice_and_exits_0():
    r = pyvmm_cli("run", "-m", "64M", "-append", "scenario=reboot")
    assert r.returncode == 0, r.stderr
    assert len(BANNER.findall(r.stdout)) == 2
    assert "reboot: first boot, resetting through the i8042" in r.stdout
    assert "reboot: second boot" in r.stdout and "scenario reboot: PASS" in r.stdout


def test_no_reboot_exits_on_the_first_reset():
    r = pyvmm_cli("run", "-m", "64M", "-no-reboot", "-append", "scenario=reboot")
    assert r.returncode == 0, r.stderr
    assert len(BANNER.findall(r.stdout)) == 1
    assert "reboot: second boot" not in r.stdout
    assert "-no-reboot: exiting" in r.stderr


def test_pidfile_serial_file_and_console_log(tmp_path):
    pid, console, log = tmp_path / "vm.pid", tmp_path / "console.txt", tmp_path / "copy.txt"
    with vm(tmp_path, "-pidfile", str(pid), "-serial", f"file:{console}", "--console-log", str(log),
            "-append", "scenario=selftest") as (p, out):
        seen = wait_for(lambda: pid.exists() and pid.read_text(), what="the pid file")
        assert int(seen) == p.pid
        assert p.wait(60) == 0
    assert not pid.exists()                               # removed at exit, as QEMU does
    assert "scenario selftest: PASS" in console.read_text()
    assert log.read_text() == console.read_text()
    assert "scenario selftest" not in out.read_text()     # the console went to the file, not stdout


def test_monitor_on_a_unix_socket(tmp_path):
    path = tmp_path / "m.sock"
    with vm(tmp_path, "-monitor", f"unix:{path},server,nowait", "-append", RUNNING) as (p, out):
        wait_for(lambda: banners(out) == 1 and path.exists(), what="boot and the monitor socket")
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.settimeout(30)
            got = b""
            while not got.endswith(b"(pyvmm) "):
                got += s.recv(4096)
            assert got.startswith(b"pyvmm monitor")
            s.sendall(b"info status\n")
            got = b""
            while got.count(b"(pyvmm) ") < 1:
                got += s.recv(4096)
            assert b"VM status: running" in got
            s.sendall(b"quit\n")
        assert p.wait(30) == 0


@pytest.fixture
def term():
    """pyvmm run on a real terminal (pexpect), the tiny guest running; the monitor shown."""
    ensure_built()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = pexpect.spawn(sys.executable, ["-m", "pyvmm", "run", "-m", "128M", "-append", RUNNING], cwd=str(ROOT),
                          env=env, timeout=60, dimensions=(50, 200))
    child.expect_exact("Ctrl-A h: help")
    child.expect_exact("dirty:")
    child.send("\x01c")
    child.expect_exact("(pyvmm) ")
    yield child
    child.close(force=True)


def test_monitor_line_editing_in_a_terminal(term):
    term.send("info status\r")
    term.expect_exact("VM status: running")
    term.expect_exact("(pyvmm) ")
    term.send("\x1b[A")                                  # Up: the last command back on the line
    term.expect_exact("info status")
    term.send("\r")
    term.expect_exact("VM status: running")
    term.expect_exact("(pyvmm) ")
    term.send("info bal\t")                              # Tab completes the info sub-command
    term.expect_exact("loon ")
    term.send("\r")
    term.expect(r"balloon: actual=128\r\n")
    term.expect(r"host RSS of guest RAM +\d+\.\d MiB")
    term.expect_exact("(pyvmm) ")


def test_x_reads_the_rom_and_follows_the_page_tables(term):
    reset_vector = (ROOT / "firmware" / "build" / "firmware.bin").read_bytes()[-16:]
    expect = " ".join(f"0x{int.from_bytes(reset_vector[i:i + 8], 'little'):016x}" for i in (0, 8))
    term.send("x/2g 0xfffffff0\r")
    term.expect_exact(f"00000000fffffff0: {expect}")
    term.expect_exact("(pyvmm) ")
    term.send("xp/2g 0xfffffff0\r")
    term.expect_exact(f"00000000fffffff0: {expect}")
    term.expect_exact("(pyvmm) ")
    # A virtual address under the guest's page tables: x reads what xp reads at the gpa gva2gpa gives.
    term.send("gva2gpa $rsp\r")
    term.expect(r"gpa: (0x[0-9a-f]+)\r\n")
    gpa = int(term.match.group(1), 16)
    term.expect_exact("(pyvmm) ")
    term.send("info tlb\r")
    term.expect(r"4-level paging")
    term.expect_exact("(pyvmm) ")
    term.send("stop\r")                                  # hold the stack still between the two reads
    term.expect_exact("(pyvmm) ")
    term.send("x/4xg $rsp\r")
    term.expect(r"([0-9a-f]{16}): ((?:0x[0-9a-f]{16} ?){2})\r\n((?:[0-9a-f]{16}): (?:0x[0-9a-f]{16} ?){2})\r\n")
    virtual_rows = [term.match.group(2).decode().split(), term.match.group(3).decode().split()[1:]]
    term.expect_exact("(pyvmm) ")
    term.send(f"xp/4xg {gpa:#x}\r")
    term.expect(r"[0-9a-f]{16}: ((?:0x[0-9a-f]{16} ?){2})\r\n[0-9a-f]{16}: ((?:0x[0-9a-f]{16} ?){2})\r\n")
    physical_rows = [term.match.group(1).decode().split(), term.match.group(2).decode().split()]
    assert virtual_rows == physical_rows
    term.send("cont\r")
    term.expect_exact("(pyvmm) ")


def test_guest_lines_stay_whole_beside_the_progress_line(tmp_path):
    """`make run`'s demo: in a terminal (the live progress line) and piped, every line the guest
    printed (its own copy in --console-log) appears whole in what the user sees."""
    ensure_built()
    log_tty, log_pipe = tmp_path / "tty.log", tmp_path / "pipe.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = pexpect.spawn(sys.executable, ["-m", "pyvmm", "run", "--demo", "--console-log", str(log_tty)],
                          cwd=str(ROOT), env=env, timeout=300, dimensions=(50, 200))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    screen = render_terminal(child.before.decode(errors="replace"))
    _assert_whole(log_tty.read_text(), screen)
    piped = subprocess.run([sys.executable, "-m", "pyvmm", "run", "--demo", "--console-log", str(log_pipe)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                           timeout=300)
    assert piped.returncode == 0
    _assert_whole(log_pipe.read_text(), piped.stdout.decode(errors="replace").splitlines())
    assert "balloon inflate: reached 64.0 MiB" in piped.stdout.decode()


def _assert_whole(guest: str, seen: list[str]) -> None:
    want = [ln.rstrip("\r") for ln in guest.splitlines() if ln.strip()]
    assert len(want) > 10
    got = [ln.rstrip("\r") for ln in seen]
    missing = [ln for ln in want if ln not in got]
    assert not missing, f"guest lines cut or lost: {missing[:3]}"
