"""QMP with the QEMU project's own client: the same script against pyvmm and against QEMU itself."""

import asyncio
import subprocess
import sys
import time

import pexpect
import pytest

from tests.support.guest import GUEST, MiB, ROOT, ensure_built, machine, qemu_cmd, qmp_connect, qmp_disconnect, tmp_socket

pytestmark = pytest.mark.kvm

RAM = 256 * MiB
TARGET = 192 * MiB
PATH = "/machine/peripheral/balloon0"


async def exercise(sock: str) -> dict:
    """Connect, negotiate, balloon, wait for BALLOON_CHANGE, query-balloon, qom-get guest-stats, quit.
    Identical for both VMMs: only the socket differs."""
    qmp = await qmp_connect(sock)
    seen = {"version": await qmp.execute("query-version")}
    await qmp.execute("qom-set", {"path": PATH, "property": "guest-stats-polling-interval", "value": 1})
    # A live driver sends stats; wait for them so the balloon command has someone to talk to.
    for _ in range(600):
        stats = await qmp.execute("qom-get", {"path": PATH, "property": "guest-stats"})
        if stats["stats"]["stat-total-memory"] > 0:
            break
        await asyncio.sleep(0.2)
    with qmp.listener(("BALLOON_CHANGE",)) as listener:
        await qmp.execute("balloon", {"value": TARGET})
        while True:
            event = await asyncio.wait_for(listener.get(), 120)
            if event["data"]["actual"] == TARGET:
                break
    seen["event"] = event
    seen["query-balloon"] = await qmp.execute("query-balloon")
    seen["status"] = await qmp.execute("query-status")
    seen["stats"] = await qmp.execute("qom-get", {"path": PATH, "property": "guest-stats"})
    seen["interval"] = await qmp.execute("qom-get", {"path": PATH, "property": "guest-stats-polling-interval"})
    try:
        await qmp.execute("balloon")
    except Exception as e:       # qemu.qmp raises ExecuteError carrying QEMU's error class
        seen["error"] = e.error.error.class_
    with qmp.listener(("SHUTDOWN",)) as listener:
        await qmp.execute("quit")
        seen["shutdown"] = await asyncio.wait_for(listener.get(), 10)
    await qmp_disconnect(qmp)
    return seen


def check(seen: dict) -> None:
    assert seen["version"]["qemu"]["major"] >= 7
    assert seen["event"]["event"] == "BALLOON_CHANGE" and "timestamp" in seen["event"]
    assert seen["query-balloon"] == {"actual": TARGET}
    assert seen["status"]["status"] == "running" and seen["status"]["running"] is True
    stats = seen["stats"]
    assert set(stats) == {"stats", "last-update"} and stats["last-update"] > 0
    assert stats["stats"]["stat-total-memory"] > 200 * MiB
    assert 0 < stats["stats"]["stat-free-memory"] < RAM
    assert seen["interval"] == 1
    assert seen["error"] == "GenericError"
    assert seen["shutdown"]["data"] == {"guest": False, "reason": "host-qmp-quit"}


def test_qmp_against_pyvmm():
    ensure_built()
    sock = tmp_socket("pyvmm.qmp")
    p = subprocess.Popen([sys.executable, "-m", "pyvmm", "run", str(GUEST), "-m", "256M", "--append",
                          "scenario=demo dirty=64M", "--qmp", f"unix:{sock},server,wait=off"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT)
    try:
        seen = asyncio.run(asyncio.wait_for(exercise(sock), 240))
        assert p.wait(20) == 0
    finally:
        if p.poll() is None:
            p.kill()
    check(seen)


@pytest.mark.qemu
def test_same_script_against_qemu():
    ensure_built()
    sock = tmp_socket("qemu.qmp")
    cmd = qemu_cmd("scenario=demo dirty=64M", memory="256M", qmp=sock,
                   balloon="virtio-balloon-device,id=balloon0")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        seen = asyncio.run(asyncio.wait_for(exercise(sock), 240))
        p.wait(20)
    finally:
        if p.poll() is None:
            p.kill()
    check(seen)


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
