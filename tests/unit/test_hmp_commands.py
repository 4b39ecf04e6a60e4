"""Every human-monitor command against the fake machine (real balloon and virtio-mmio, Python driver)."""

from __future__ import annotations

import re
import struct

import pytest

from pyvmm.monitor.hmp import run_hmp
from tests.support.fake_machine import RING_BASE, FakeMachine, MiB


@pytest.fixture
def m():
    machine = FakeMachine()
    yield machine
    machine.close()


def test_help_lists_every_command(m):
    out = run_hmp(m, "help")
    for cmd in ("info balloon", "info stats", "info virtio", "info virtqueue", "info registers", "info mtree",
                "balloon <size>", "x/", "stop", "cont", "trace on|off", "quit"):
        assert cmd in out
    assert run_hmp(m, "help balloon").startswith("balloon <size>")
    assert run_hmp(m, "help nope") == "unknown command: 'nope'\n"
    assert "info virtqueue" in run_hmp(m, "info")


def test_empty_and_unknown(m):
    assert run_hmp(m, "   ") == ""
    assert run_hmp(m, "bogus 1 2") == "unknown command: 'bogus'\n"
    assert "unknown info subcommand" in run_hmp(m, "info bogus")


def test_info_balloon_first_line_is_qemus(m):
    out = run_hmp(m, "info balloon")
    assert out.splitlines()[0] == "balloon: actual=64"
    assert re.search(r"target\s+64.0 MiB\n", out)
    assert re.search(r"host RSS of guest RAM\s+\d+\.\d MiB\n", out)
    assert re.search(r"stats\s+(never received|received \d+\.\d s ago)\n", out)
    assert "WARNING" not in out          # the host's and the driver's counts agree


def test_balloon_in_mib_and_with_suffix(m):
    assert run_hmp(m, "balloon 40") == ""
    assert m.wait_actual(40 * MiB) == 40 * MiB
    assert run_hmp(m, "info balloon").splitlines()[0] == "balloon: actual=40"
    assert run_hmp(m, "balloon 1G") == "balloon: target clamped to guest RAM (64.0 MiB)\n"
    assert m.wait_actual(64 * MiB) == 64 * MiB
    assert run_hmp(m, "balloon 48M") == ""
    assert m.balloon.info().target == 48 * MiB


@pytest.mark.parametrize("line, msg", [
    ("balloon", "usage: balloon <size>"),
    ("balloon 1", "below the floor of 16.0 MiB"),
    ("balloon 0", "Parameter 'target' expects a size"),
    ("balloon lots", "is not a size"),
])
def test_balloon_bad_sizes(m, line, msg):
    out = run_hmp(m, line)
    assert out.startswith("Error: ") and msg in out and out.count("\n") == 1
    assert m.balloon.info().target == 64 * MiB


def test_no_balloon_errors_like_qemu():
    machine = FakeMachine(balloon=False)
    assert run_hmp(machine, "info balloon") == "Error: No balloon device has been activated\n"
    assert run_hmp(machine, "balloon 32") == "Error: No balloon device has been activated\n"
    assert run_hmp(machine, "info virtio") == "no virtio devices\n"


def test_info_stats(m):
    out = run_hmp(m, "info stats")
    assert "last update" in out and "polling off" in out
    assert re.search(r"stat-minor-faults\s+1234\n", out)
    assert re.search(r"stat-total-memory\s+67108864 \(64.0 MiB\)", out)
    assert re.search(r"stat-htlb-pgfail\s+-\n", out)       # never sent by the guest
    m.balloon.stats_interval = 5
    assert "polling every 5 s" in run_hmp(m, "info stats")
    m.balloon.stats_interval = 0


def test_info_status_stop_cont(m):
    assert run_hmp(m, "info status") == "VM status: running\n"
    assert run_hmp(m, "stop") == ""
    assert run_hmp(m, "info status") == "VM status: paused\n"
    assert run_hmp(m, "c") == ""
    assert m.status() == "running"


def test_info_virtio(m):
    out = run_hmp(m, "info virtio")
    assert "balloon0: virtio-balloon at 0xd0000000 irq 5, virtio-mmio version 2" in out
    assert "ACKNOWLEDGE|DRIVER|DRIVER_OK|FEATURES_OK" in out
    assert "VIRTIO_BALLOON_F_STATS_VQ" in out and "VIRTIO_F_VERSION_1" in out
    assert "0 inflateq (size 16, ready), 1 deflateq (size 16, ready), 2 statsq (size 16, ready)" in out


def test_info_virtio_before_the_driver():
    machine = FakeMachine(driver=False)
    out = run_hmp(machine, "info virtio")
    assert "status:   0 (reset)" in out and "(none negotiated)" in out and "not ready" in out
    out = run_hmp(machine, "info virtqueue balloon0 0")
    assert "not ready" in out and "(not set up by the driver)" in out
    machine.close()


def test_info_virtqueue_inflate_after_ballooning(m):
    run_hmp(m, "balloon 60")
    m.wait_actual(60 * MiB)
    out = run_hmp(m, "info virtqueue balloon0 0")
    assert out.startswith("balloon0 queue 0 (inflateq): size 16 (max 256), ready\n")
    assert f"desc table {RING_BASE:#x}" in out
    # 4 MiB = 1024 pages = 4 buffers of 256 PFNs, all taken and returned
    assert "avail.idx 4  used.idx 4  last_avail 4  pending 0  in flight 0" in out
    assert f"[   0] addr {RING_BASE + 0x1000:#018x} len   1024 -" in out
    assert "used ring, latest first: id 0 len 0" in out


def test_info_virtqueue_stats_buffer_in_flight(m):
    out = run_hmp(m, "info virtqueue balloon0 statsq")
    assert "in flight 1" in out
    assert "in flight, head descriptors: 0" in out
    assert "<- in flight" in out


def test_info_virtqueue_pending_entries_are_listed(m):
    # make one deflate buffer available without notifying: the device has not taken it yet
    t = m.virtio_devices[0]
    q = t.queues[1]
    m.mem.write(q.desc, struct.pack("<QIHH", RING_BASE + 0x5000, 8, 0, 0))
    m.mem.write_u16(q.avail + 4, 0)
    m.mem.write_u16(q.avail + 2, 1)
    out = run_hmp(m, "info virtqueue 0 1")
    assert "avail.idx 1  used.idx 0  last_avail 0  pending 1" in out
    assert "avail ring, not yet taken: 0" in out


@pytest.mark.parametrize("line, msg", [
    ("info virtqueue", "usage: info virtqueue [<dev>] <queue> [--svg FILE]  (e.g. info virtqueue balloon0 0, "
                       "info virtqueue inflateq --svg q.svg)"),
    ("info virtqueue a b c", "usage: info virtqueue [<dev>] <queue> [--svg FILE]  (e.g. info virtqueue "
                             "balloon0 0, info virtqueue inflateq --svg q.svg)"),
    ("info virtqueue nope 0", "no virtio device 'nope' (devices: balloon0)"),
    ("info virtqueue balloon0 7", "balloon0 has no queue '7' (3 queues)"),
])
def test_info_virtqueue_errors(m, line, msg):
    assert run_hmp(m, line) == f"Error: {msg}\n"


def test_info_registers(m):
    assert run_hmp(m, "info registers").startswith("CPU#0\nRAX=")
    assert run_hmp(m, "info registers 0").startswith("CPU#0")
    assert run_hmp(m, "info registers 1") == "Error: no vCPU 1 (the machine has 1)\n"
    assert run_hmp(m, "info registers x") == "Error: cpu index must be a number, not 'x'\n"
    assert run_hmp(m, "info registers", cpu=1).startswith("Error: no vCPU 1")


def test_info_mtree(m):
    out = run_hmp(m, "info mtree")
    assert "  0000000000000000-0000000003ffffff: ram\n" in out
    assert "  00000000d0000000-00000000d00001ff: virtio-mmio balloon0\n" in out


@pytest.fixture
def pattern(m):
    m.mem.write(0x2000, bytes(range(32)) + b"Hi!\n'\\\x7f" + (-2).to_bytes(8, "little", signed=True))
    return m


@pytest.mark.parametrize("line, expected", [
    ("x/4x 0x2000", "0000000000002000: 0x03020100 0x07060504 0x0b0a0908 0x0f0e0d0c\n"),
    ("xp/4xw 0x2000", "0000000000002000: 0x03020100 0x07060504 0x0b0a0908 0x0f0e0d0c\n"),
    ("x/10xb 8192", ("0000000000002000: 0x00 0x01 0x02 0x03 0x04 0x05 0x06 0x07\n"
                    "0000000000002008: 0x08 0x09\n")),
    ("x/3xh 0x2000", "0000000000002000: 0x0100 0x0302 0x0504\n"),
    ("x/3xg 0x2000", ("0000000000002000: 0x0706050403020100 0x0f0e0d0c0b0a0908\n"
                     "0000000000002010: 0x1716151413121110\n")),
    ("x/2ub 0x2010", "0000000000002010:  16  17\n"),
    ("x/1dg 0x2027", "0000000000002027:                   -2\n"),
    ("x/2db 0x2027", "0000000000002027:  -2  -1\n"),
    ("x/2ob 0x2008", "0000000000002008: 010 011\n"),
    ("x/7c 0x2020", "0000000000002020: 'H' 'i' '!' '\\n' '\\'' '\\\\' '\\x7f'\n"),
    ("x/2x 0x3fffffc", "0000000003fffffc: Cannot access memory\n"),     # per line, as QEMU
    ("x/6x 0x3fffff0", ("0000000003fffff0: 0x00000000 0x00000000 0x00000000 0x00000000\n"
                       "0000000004000000: Cannot access memory\n")),
    ("x 0x2000", "0000000000002000: 0x03020100\n"),
])
def test_memory_dump_formats(pattern, line, expected):
    assert run_hmp(pattern, line) == expected


@pytest.mark.parametrize("line, msg", [
    ("x/4x", "usage: x/"),
    ("x/4q 0", "usage: x/"),
    ("x/4x nowhere", "invalid address 'nowhere'"),
    ("x/100000xg 0", "at most 65536 bytes"),
])
def test_memory_dump_errors(m, line, msg):
    out = run_hmp(m, line)
    assert out.startswith("Error: ") and msg in out


def test_memory_dump_disassembles_with_capstone(m):
    pytest.importorskip("capstone")
    m.mem.write(0x3000, bytes.fromhex("4889c3" "90" "f4"))      # mov rbx, rax; nop; hlt
    out = run_hmp(m, "x/3i 0x3000").splitlines()
    assert out == ["0x0000000000003000:  mov rbx, rax", "0x0000000000003003:  nop", "0x0000000000003004:  hlt"]


def test_trace(m):
    assert run_hmp(m, "trace on") == "trace all: on\n"
    assert run_hmp(m, "trace off virtio") == "trace virtio: off\n"
    assert m.trace == {"all": True, "virtio": False}
    assert run_hmp(m, "trace maybe") == "Error: usage: trace on|off [category]\n"
    assert run_hmp(m, "trace on nope").startswith("Error: unknown trace category 'nope'")


def test_system_reset_and_quit(m):
    assert run_hmp(m, "system_reset") == "" and m.resets == 1
    assert run_hmp(m, "q") == "" and m.status() == "shutdown"
    assert run_hmp(m, "cont") == "Error: the guest has shut down; it cannot be continued\n"
    no_reset = FakeMachine(can_reset=False, driver=False)
    assert run_hmp(no_reset, "system_reset") == "Error: system_reset is not supported by this machine\n"
    no_reset.close()


def test_query_balloon_does_not_measure_rss(m, monkeypatch):
    from pyvmm import hoststat
    from pyvmm.monitor import commands as C

    calls = []
    real = hoststat.mapping_rss
    monkeypatch.setattr(hoststat, "mapping_rss", lambda mem: calls.append(mem) or real(mem))
    assert C.query_balloon(m) == {"actual": 64 * MiB}
    assert calls == []                               # query-balloon: no mincore over guest RAM
    assert m.balloon.info().guest_ram_rss is not None and len(calls) == 1


def test_balloon_info_measures_rss_outside_the_device_lock(m, monkeypatch):
    import threading

    from pyvmm import hoststat

    free = []
    real = hoststat.mapping_rss

    def probing(mem):
        def other_thread():        # the lock is re-entrant: only another thread can tell
            got = m.balloon.lock.acquire(blocking=False)
            if got:
                m.balloon.lock.release()
            free.append(got)
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        return real(mem)

    monkeypatch.setattr(hoststat, "mapping_rss", probing)
    info = m.balloon.info()
    assert free == [True] and info.guest_ram_rss is not None
    assert m.balloon.info(rss=False).guest_ram_rss is None and free == [True]


def test_unexpected_exception_is_an_internal_error_line(m, monkeypatch, caplog):
    def broken():
        raise KeyError("oops")

    monkeypatch.setattr(m, "status", broken)
    with caplog.at_level("ERROR", logger="pyvmm.monitor"):
        out = run_hmp(m, "info status")
    assert out == "internal error: KeyError: 'oops'\n"
    assert any(r.exc_info and "info status" in r.getMessage() for r in caplog.records)
    assert run_hmp(m, "info balloon").startswith("balloon: actual=")   # the monitor goes on


@pytest.mark.parametrize("status,shown", [("created", "paused (prelaunch)"), ("debug", "paused (debug)"),
                                          ("shutdown", "paused (shutdown)")])
def test_info_status_says_why_as_qemu(status, shown):
    class Stopped:
        def status(self):
            return status

    assert run_hmp(Stopped(), "info status") == f"VM status: {shown}\n"
