"""The tiny guest side by side with QEMU microvm: the same ELF, script and steps against QEMU's own devices.

QEMU is the reference: its virtio-balloon-device drives the same guest driver pyvmm's device drives,
its QMP answers the same qemu.qmp script, and it boots the same PVH ELF.
"""

import asyncio
import re
import subprocess
import sys
import time

import pytest

from pyvmm.virtio.rng import RngOptions
from tests.support.guest import (
    BANNER,
    GUEST,
    ROOT,
    MiB,
    ensure_built,
    qemu_cmd,
    qmp_connect,
    qmp_disconnect,
    run_guest,
    run_qemu,
    tmp_socket,
)

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]

LOW = 64 * MiB
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


def test_same_elf_under_qemu_microvm_prints_the_same_banner():
    code, out = run_qemu("scenario=selftest")
    ours, our_out, _ = run_guest("scenario=selftest")
    assert code == 0 and ours == 0
    assert BANNER.search(out).group(0) == BANNER.search(our_out).group(0)
    assert "scenario selftest: PASS" in out


def test_qemu_reference_on_the_same_guest():
    """For the record, in the same run: QEMU on this host either passes too (a host that emulates
    int3) or stops with an emulation failure; pyvmm must pass either way (test above)."""
    try:
        res = subprocess.run(qemu_cmd("scenario=gaps", memory="64M"), capture_output=True, text=True,
                             timeout=15, stdin=subprocess.DEVNULL)
        out = res.stdout + res.stderr
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
    assert "pyvmm-guest: scenario gaps" in out
    assert "gaps: PASS" in out or "emulation failure" in out.lower() or "KVM internal error" in out


def test_same_guest_against_qemus_balloon_device():
    """The reference device: QEMU's virtio-balloon-device, steered through QMP as pyvmm is."""
    sock = tmp_socket("qmp.sock")
    cmd = qemu_cmd("scenario=demo dirty=192M", memory="256M", qmp=sock,
                   balloon="virtio-balloon-device,id=balloon0,deflate-on-oom=on")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    async def drive():
        qmp = await qmp_connect(sock, "test", stats_interval=1)

        async def until(size: int, timeout: float = 120):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if (await qmp.execute("query-balloon"))["actual"] == size:
                    return
                await asyncio.sleep(0.2)
            raise AssertionError(f"QEMU's balloon never reached {size}")

        # Wait for the driver: before DRIVER_OK QEMU answers query-balloon with the full size too, so
        # wait for the first stats instead, which only a live driver sends.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            stats = await qmp.execute("qom-get", {"path": "/machine/peripheral/balloon0",
                                                  "property": "guest-stats"})
            if stats["stats"]["stat-total-memory"] > 0:
                break
            await asyncio.sleep(0.5)
        assert stats["stats"]["stat-total-memory"] > 200 * MiB
        await qmp.execute("balloon", {"value": LOW})
        await until(LOW)
        await qmp.execute("balloon", {"value": RAM})
        await until(RAM)
        await asyncio.sleep(1.5)
        stats = await qmp.execute("qom-get", {"path": "/machine/peripheral/balloon0", "property": "guest-stats"})
        await qmp.execute("quit")
        await qmp_disconnect(qmp)
        return stats

    try:
        stats = asyncio.run(asyncio.wait_for(drive(), 300))
    finally:
        try:
            out = proc.communicate(timeout=30)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0].decode(errors="replace")
    assert "balloon: target=49152 actual=49152" in out
    assert stats["stats"]["stat-free-memory"] > 0 and stats["last-update"] > 0


def test_same_rng_scenario_against_qemus_virtio_rng_device():
    """The reference entropy device: QEMU's virtio-rng-device (legacy virtio-mmio on microvm) feeds the
    same guest driver the same way pyvmm's does; unseeded, the guest checks the bytes are not constant."""
    code, out = run_qemu("scenario=rng rng_bytes=256", extra=("-device", "virtio-rng-device"))
    assert code == 0, out[-2000:]
    assert re.search(r"virtio-mmio: 0x[0-9a-f]+ irq \d+ version 1 device 4 vendor 0x554d4551", out), out
    assert "rng: 256 bytes in 16 buffers:" in out and "scenario rng: PASS" in out
    ours, our_out, _ = run_guest("scenario=rng rng_bytes=256", devices=(RngOptions(),))
    assert ours == 0 and "rng: 256 bytes in 16 buffers:" in our_out
