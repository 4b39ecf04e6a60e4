"""QMP with the QEMU project's own client: the same script against pyvmm and against QEMU itself."""

import subprocess
import sys
import time

import pexpect
import pytest

from tests.support.guest import (
    GUEST,
    ROOT,
    MiB,
    ensure_built,
    machine,
    tmp_socket,
)

pytestmark = pytest.mark.kvm

def test_human_monitor_on_the_console():
    """A real terminal: Ctrl-A c to the (pyvmm) prompt, info balloon, info virtqueue, back, Ctrl-A x."""
    ensure_built()
    child = pexpect.spawn(sys.executable, ["-m", "pyvmm", "run", str(GUEST), "-m", "128M", "--append",
                                           "scenario=demo dirty=16M"], cwd=str(ROOT), timeout=60)
    try:
        child.expect(r"balloon: version 2 features")
        child.send(b"\x01c")
        child.expect(r"\(pyvmm\) ")
        child.sendline("balloon 96")
        time.sleep(2)
        child.sendline("info balloon")
        child.expect(r"actual")
        child.sendline("info virtqueue balloon0 0")
        child.expect(r"inflateq")
        child.expect(r"avail\.idx \d+\s+used\.idx \d+")
        child.sendline("info virtio")
        child.expect(r"DRIVER_OK")
        child.send(b"\x01c")                  # back to the guest console
        child.send(b"\x01x")                  # quit
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_abusive_qmp_clients_do_not_disturb_the_vm():
    """100 idle connections, 10 MB of garbage, a client that hangs up mid-command: the guest keeps
    running and a well-behaved client still steers the balloon."""
    import socket

    sock = tmp_socket("abuse.qmp")
    with machine("scenario=demo dirty=16M", memory=128 * MiB, qmp=(f"unix:{sock},server,wait=off",)) as m:
        m.wait_for_console(r"balloon: version 2 features", 60)
        idle = []
        for _ in range(100):
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            idle.append(s)
        garbage = socket.socket(socket.AF_UNIX)
        garbage.connect(sock)
        try:
            chunk = b"{\"execute\": [[[[" * 4096
            for _ in range(10 * 1024 * 1024 // len(chunk)):
                garbage.sendall(chunk)
        except OSError:
            pass            # dropped by the server for an oversized request: as intended
        rude = socket.socket(socket.AF_UNIX)
        rude.connect(sock)
        rude.sendall(b'{"execute":"qmp_capabilities"}{"execute":"human-monitor-command",'
                     b'"arguments":{"command-line":"info virtqueue balloon0 0"}}')
        rude.close()                                     # gone before the answer
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "pyvmm", "balloon", "--qmp", sock, "96M", "--wait"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        assert m.balloon.info().actual == 96 * MiB
        assert m.status() == "running"
        assert time.monotonic() - t0 < 60
        for s in idle:
            s.close()
        garbage.close()
