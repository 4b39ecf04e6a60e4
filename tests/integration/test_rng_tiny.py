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
