"""virtio-rng under KVM: the tiny guest's driver (guest/rng.c, scenario=rng) reads it, beside the balloon."""

import re

import pytest

from pyvmm.virtio.rng import RngOptions, SplitMix64
from tests.support.guest import machine, pyvmm_cli, run_guest

pytestmark = pytest.mark.kvm


def printed_bytes(out: str) -> bytes:
    m = re.search(r"rng: (\d+) bytes in (\d+) buffers:((?: [0-9a-f]{2})+)", out)
    assert m, out[-2000:]
    return bytes.fromhex(m.group(3))


@pytest.mark.parametrize("version", [2, 1], ids=["modern", "legacy"])
def test_seeded_bytes_reach_the_guest(version):
    code, out, m = run_guest("scenario=rng rng_seed=1 rng_bytes=100 rng_chunk=24",
                             devices=(RngOptions(seed=1),), virtio_version=version)
    assert code == 0, out[-2000:]
    assert "rng: the bytes are splitmix64's stream from seed 1" in out
    assert printed_bytes(out) == SplitMix64(1).read(32)
    # Two devices: the balloon in the first window (irq 5), the rng in the second (irq 6).
    assert [(t.name, t.base, t.irq_gsi) for t in m.virtio_devices] == [
        ("balloon0", 0xD000_0000, 5), ("rng0", 0xD000_1000, 6)]
    rng = m.virtio_devices[1].device
    assert rng.bytes_served == 100 and rng.buffers_served == 5      # 4 x 24 + 4
    assert "virtio_mmio.device=0x200@0xd0001000:6" in out


def test_a_wrong_seed_is_caught_by_the_guest():
    code, out, _ = run_guest("scenario=rng rng_seed=2", devices=(RngOptions(seed=1),))
    assert code == 1 and "FAIL bytes differ from the seeded stream" in out


def test_urandom_without_a_seed_and_no_balloon():
    code, out, m = run_guest("scenario=rng rng_bytes=256", devices=(RngOptions(),), balloon=None)
    assert code == 0, out[-2000:]
    assert [t.name for t in m.virtio_devices] == ["rng0"] and m.virtio_devices[0].base == 0xD000_0000
    assert len(set(printed_bytes(out))) > 1


def test_rate_limit_splits_buffers_and_still_delivers():
    # 40 bytes per 100 ms: 16-byte requests get 16, 16, 8, then wait for the next period.
    with machine("scenario=rng rng_bytes=120", devices=(RngOptions(seed=5, max_bytes=40, period_ms=100),)) as m:
        code = m.wait(60)
        out = m.console_text()
        rng = m.virtio_devices[1].device
    assert code == 0, out[-2000:]
    assert rng.bytes_served == 120
    assert rng.buffers_served > 120 // 16      # partial buffers at each period's end


def test_cli_two_devices_and_the_trace_names_them():
    res = pyvmm_cli("run", "-nographic", "--append", "scenario=rng rng_seed=1",
                    "-device", "virtio-balloon-device", "-device", "virtio-rng-device,seed=1", "--trace", "virtio")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "scenario rng: PASS" in res.stdout
    assert re.search(r"rng0 entropy !! 16 bytes into a 16-byte buffer", res.stderr), res.stderr[-3000:]
    assert re.search(r"rng0 .*DeviceID", res.stderr) and re.search(r"balloon0 .*DeviceID", res.stderr)


@pytest.mark.parametrize("arg, message", [
    ("virtio-rng-device,max-bytes=0", "max-bytes=0: the device would never give a byte"),
    ("virtio-rng-device,speed=3", "unknown property 'speed' (seed, max-bytes, period)"),
    ("virtio-rng-device,seed=x", "seed='x' is not a number"),
    ("virtio-rng-pci", "pyvmm has no PCI bus"),
])
def test_bad_rng_options_are_one_line(arg, message):
    res = pyvmm_cli("run", "-nographic", "-device", arg)
    assert res.returncode == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_monitor_and_vbreak_name_the_device():
    import time

    from pyvmm.arch.x86 import layout
    from pyvmm.monitor.hmp import run_hmp

    messages = []

    def setup(m):
        m.stop_output = messages.append
        assert run_hmp(m, "vbreak rng0 QueueNotify requestq").startswith("vbreak 1: rng0 QueueNotify requestq")

    with machine("scenario=rng rng_seed=9", devices=(RngOptions(seed=9),), setup=setup) as m:
        deadline = time.monotonic() + 60
        while m.status() != "debug" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert m.debugger.wait_stopped(10) is not None
        assert messages[0].splitlines()[0] == "vbreak 1: rng0 QueueNotify <- 0 (requestq)"
        info = run_hmp(m, "info virtio")
        assert "balloon0: virtio-balloon at 0xd0000000 irq 5" in info
        assert "rng0: virtio-rng at 0xd0001000 irq 6" in info
        assert "pending 1" in run_hmp(m, "info virtqueue rng0 requestq")
        # The DSDT announces both windows, one LNRO0005 each.
        assert m.memory.read(layout.ACPI_START, 0x2_0000).count(b"LNRO0005") == 2
        run_hmp(m, "vdelete 1")
        run_hmp(m, "cont")
        assert m.wait(60) == 0, m.console_text()[-2000:]
    assert "rng: the bytes are splitmix64's stream from seed 9" in m.console_text()
