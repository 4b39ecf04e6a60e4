"""Virtio breakpoints on the tiny guest under KVM, from the monitor alone: the stop, the rings, cont."""

import time

import pytest

from pyvmm.monitor.hmp import run_hmp
from tests.support.gdb import symbol
from tests.support.guest import MiB, machine

pytestmark = pytest.mark.kvm


def wait_for(cond, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def instruction_before(m, rip: int, start: int):
    """The instruction that ends at rip, decoding from start (a function's first byte)."""
    import capstone

    code = m.read_memory(start, rip - start + 16)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    return next((i for i in md.disasm(code, start) if i.address + i.size == rip), None)


@pytest.mark.parametrize("ioeventfd", [True, False], ids=["ioeventfd", "no-ioeventfd"])
def test_vbreak_queue_notify_stops_shows_the_pfns_and_resumes_to_a_completed_inflate(ioeventfd):
    messages = []
    with machine("scenario=demo dirty=1M", memory=128 * MiB, ioeventfd=ioeventfd) as m:
        m.stop_output = messages.append
        m.wait_for_console(r"balloon: target=0 actual=0", timeout=60)
        line = run_hmp(m, "vbreak QueueNotify inflateq")
        assert line.startswith("vbreak 1: QueueNotify inflateq (the driver notifies inflateq)")
        assert ("ioeventfds are deassigned" in line) == ioeventfd
        m.balloon.set_target(127 * MiB)
        wait_for(lambda: m.status() == "debug", what="the vbreak's stop")
        assert m.debugger.wait_stopped(10) is not None
        (text,) = messages
        assert text.splitlines()[0] == "vbreak 1: balloon0 QueueNotify <- 0 (inflateq)"
        assert "256 PFNs (le32): 0x" in text and "spec \"The Virtqueue Available Ring\"" in text
        vq = run_hmp(m, "info virtqueue balloon0 inflateq")
        assert "pending 1" in vq and "avail ring, not yet taken: 0" in vq   # the device has not seen it
        assert m.balloon.info(rss=False).actual == 128 * MiB
        # The notifying vCPU stopped right after its write to QueueNotify, in vq_kick.
        rip = m.vcpus[0].fd.get_regs().rip
        insn = instruction_before(m, rip, symbol("vq_kick"))
        assert insn is not None and insn.mnemonic == "mov", (hex(rip), insn)
        assert "last hit: vbreak 1: balloon0 QueueNotify <- 0 (inflateq)" in run_hmp(m, "info vbreak")
        assert run_hmp(m, "vdelete 1").startswith("1 virtio breakpoint deleted")
        assert run_hmp(m, "cont") == "" and m.status() == "running"
        wait_for(lambda: m.balloon.info(rss=False).actual == 127 * MiB, what="the inflate")
        assert m.balloon.info(rss=False).ballooned_pages == 256
        if ioeventfd:
            assert m.notify_eventfds["balloon0"].assigned          # back once no QueueNotify vbreak is left


def test_vbreak_status_driver_ok_at_boot_and_cont():
    messages = []

    def setup(m):
        m.stop_output = messages.append
        run_hmp(m, "vbreak Status DRIVER_OK")

    with machine("scenario=demo dirty=1M", memory=128 * MiB, setup=setup) as m:
        wait_for(lambda: m.status() == "debug", what="DRIVER_OK")
        assert "balloon0 Status <- 0x0f ACKNOWLEDGE|DRIVER|DRIVER_OK|FEATURES_OK" in messages[0]
        assert "Device Status Field" in messages[0]
        assert "mode: 64-bit long mode" in run_hmp(m, "info registers")
        assert run_hmp(m, "info status") == "VM status: paused (debug)\n"
        run_hmp(m, "cont")
        m.wait_for_console(r"balloon: version 2 features", timeout=60)


def test_the_host_probe_matches_what_the_gdbstub_does():
    """The mechanism each gdb breakpoint kind gets follows the probe of this host's KVM."""
    with machine("scenario=gaps", balloon=None) as m:
        m.wait(60)
        host = m.debugger.host
        assert host.single_step and host.hw_breakpoints            # every host pyvmm supports has these
        # An int3 the guest runs itself: on a host whose int3 comes back as an emulation failure
        # pyvmm finishes it (counted); where KVM_GUESTDBG_USE_SW_BP traps, nothing is counted.
        assert ("int3 -> #BP injected" in m.emulation_fixups) == (host.int3 == "emulation-failure")
    with machine("scenario=demo dirty=1M", balloon=None, memory=64 * MiB) as m:
        m.debugger.attach()
        assert m.debugger.wait_stopped(10) is not None
        ticks = symbol("ticks")
        assert m.debugger.insert_breakpoint("write", ticks, 8)
        bp = m.debugger.breakpoints[("write", ticks, 8)]
        assert bp.mechanism == ("debug register" if host.hw_watchpoints else "read-only page")
        assert m.debugger.insert_breakpoint("access", ticks, 8) is (True if host.hw_watchpoints else None)
        m.debugger.resume(None, None)
        wait_for(lambda: m.status() == "debug", what="the watchpoint on ticks")
        ev = m.debugger.wait_stopped(10)
        assert ev.reason == "watch" and ev.address == ticks


def test_interactive_console_minus_S_and_a_vbreak_that_opens_the_monitor():
    """`pyvmm run -S` on a terminal: prelaunch until `cont`; a virtio breakpoint's stop opens the
    (pyvmm) prompt with its message; `cont` resumes."""
    import sys

    import pexpect

    from tests.support.guest import GUEST, ROOT, ensure_built

    ensure_built()
    p = pexpect.spawn(sys.executable, ["-m", "pyvmm", "run", str(GUEST), "-m", "128M", "--append",
                                       "scenario=demo dirty=1M", "-S"], cwd=str(ROOT), timeout=30,
                      encoding="utf-8", dimensions=(40, 200))
    try:
        assert p.waitnoecho(20)                      # the console is raw: Ctrl-A reaches pyvmm
        p.send("\x01c")
        p.expect_exact("(pyvmm) ")
        p.send("info status\r")
        p.expect_exact("VM status: paused (prelaunch)")
        p.expect_exact("(pyvmm) ")
        p.send("vbreak Status DRIVER_OK\r")
        p.expect_exact("vbreak 1: Status DRIVER_OK (the driver writes Status setting DRIVER_OK)")
        p.expect_exact("(pyvmm) ")
        p.send("cont\r")
        p.expect_exact("vbreak 1: balloon0 Status <- 0x0f ACKNOWLEDGE|DRIVER|DRIVER_OK|FEATURES_OK")
        p.expect_exact("(type cont to resume)")
        p.expect_exact("(pyvmm) ")
        p.send("info status\r")
        p.expect_exact("VM status: paused (debug)")
        p.send("vdelete all\r")
        p.expect_exact("1 virtio breakpoint deleted")
        p.send("cont\r")
        p.expect_exact("(pyvmm) ")
        p.send("\x01c")                              # back to the console: the guest went on
        p.expect_exact("balloon: target=0 actual=0")
        p.send("\x01x")
        p.expect(pexpect.EOF)
    finally:
        p.close(force=True)
    assert p.exitstatus == 0


def test_qmp_sees_prelaunch_and_debug_and_cont_resumes_both():
    """-S under QMP: status prelaunch until `cont`; a virtio breakpoint's stop is status debug, with a
    STOP event, until `cont` again."""
    import asyncio

    from tests.support.guest import qmp_connect, qmp_disconnect, tmp_socket

    sock = tmp_socket("vbreak-qmp.sock")

    async def drive(m):
        qmp = await qmp_connect(sock)
        try:
            assert (await qmp.execute("query-status"))["status"] == "prelaunch"
            await qmp.execute("human-monitor-command", {"command-line": "vbreak Status DRIVER_OK"})
            with qmp.listener("STOP") as stops:
                await qmp.execute("cont")
                await asyncio.wait_for(stops.get(), 60)
            status = await qmp.execute("query-status")
            assert status["status"] == "debug" and not status["running"]
            out = await qmp.execute("human-monitor-command", {"command-line": "info vbreak"})
            assert "last hit: vbreak 1: balloon0 Status <- 0x0f" in out
            await qmp.execute("human-monitor-command", {"command-line": "vdelete all"})
            await qmp.execute("cont")
            assert (await qmp.execute("query-status"))["status"] == "running"
            await qmp.execute("quit")
        finally:
            await qmp_disconnect(qmp)

    with machine("scenario=demo dirty=1M", memory=128 * MiB, qmp=(f"unix:{sock}",), start_paused=True) as m:
        m.stop_output = lambda text: None
        asyncio.run(drive(m))
        assert m.wait(30) == 0
