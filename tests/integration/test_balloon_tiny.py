"""The tiny guest's balloon driver against pyvmm's device under KVM (and against QEMU's device)."""

import re
import time

import pytest

from pyvmm.config import parse_balloon_options
from pyvmm.hoststat import mapping_rss
from tests.support.guest import MiB, machine

pytestmark = pytest.mark.kvm

RAM = 256 * MiB
LOW = 64 * MiB


def guest_rss(m) -> int:
    return sum(mapping_rss(r) for r in m.memory.regions)


def wait_balloon(m, target: int, timeout: float = 120.0):
    """Wait until the driver's `actual` and the host's own ballooned set both reach the target."""
    want = (m.ram_size - target) >> 12
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = m.balloon.info()
        if info.actual_pages == want and info.ballooned_pages == want:
            return info
        assert m.status() != "shutdown", m.console_text()[-2000:]
        time.sleep(0.05)
    raise AssertionError(f"balloon never reached {target >> 20} MiB: {m.balloon.info()}")


@pytest.mark.parametrize("version", [2, 1], ids=["modern", "legacy"])
def test_inflate_to_64m_gives_memory_back_then_deflate_and_verify(version):
    with machine("scenario=verify dirty=192M", memory=RAM, virtio_version=version) as m:
        m.wait_for_console(r"dirty: 49152 pages", 120)
        m.wait_for_console(rf"balloon: version {version} features", 30)
        rss_before = guest_rss(m)
        assert rss_before >= 192 * MiB
        m.balloon.set_target(LOW)
        info = wait_balloon(m, LOW)
        assert info.actual == LOW and info.agree
        ballooned = info.ballooned_pages * 4096
        assert ballooned == RAM - LOW
        rss_after = guest_rss(m)
        # Measured by the host, not reported by the guest.
        assert rss_before - rss_after >= 0.9 * ballooned, (rss_before, rss_after)
        m.balloon.set_target(RAM)
        assert m.wait(180) == 0, m.console_text()[-2000:]
        out = m.console_text()
        assert re.search(r"verify: PASS \d+ pages", out)
        # Every page read the same through a second mapping (PML4 slot 1), before and after the host
        # discarded it: the host forgot all of a page's mappings, not only the last one used.
        assert "verify: 49152 dirtied pages read through the alias" in out, out[-2000:]
        assert re.search(r"intact, 0 alias mismatches", out), out[-2000:]
        info = m.balloon.info()
        assert info.actual == RAM and info.ballooned_pages == 0 and info.bad_pfns == 0


def test_stats_arrive_with_memtot_and_memfree_that_moves():
    opts = parse_balloon_options("stats-interval=1")
    with machine("scenario=demo dirty=64M", memory=RAM, balloon=opts) as m:
        m.wait_for_console(r"balloon: version 2 features", 120)
        banner = m.wait_for_console(r"pyvmm-guest: memory \d+ MiB \((\d+) bytes RAM\)", 5)
        guest_ram = int(banner.group(1))

        def fresh_stats(after: float) -> dict:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if m.balloon.stats_updated and m.balloon.stats_updated > after:
                    return dict(m.balloon.stats)
                time.sleep(0.1)
            raise AssertionError("no stats arrived")

        full = fresh_stats(time.time())
        assert full["memtot"] == guest_ram
        m.balloon.set_target(LOW)
        wait_balloon(m, LOW)
        low = fresh_stats(time.time())
        assert low["memtot"] == guest_ram
        # The balloon took 192 MiB from the guest's free memory.
        assert full["memfree"] - low["memfree"] >= 180 * MiB, (full, low)
        info = m.balloon.info()
        assert info.stats_age is not None and info.stats_age < 5


@pytest.mark.parametrize("doom", [True, False], ids=["deflate-on-oom", "no-deflate-on-oom"])
def test_oom(doom):
    opts = parse_balloon_options(f"deflate-on-oom={'on' if doom else 'off'}")
    with machine("scenario=oom", memory=128 * MiB, balloon=opts) as m:
        m.wait_for_console(r"oom: waiting for the host", 60)
        m.balloon.set_target(64 * MiB)
        code = m.wait(180)
        out = m.console_text()
        if doom:
            assert code == 0, out[-2000:]
            assert re.search(r"oom: PASS allocated=\d+ pages, deflate-on-oom released [1-9]\d* pages", out)
            assert m.balloon.info().unrequested_deflate_pages > 0
        else:
            assert code == 3, out[-2000:]      # the guest's own EXIT_OOM, reported cleanly
            assert "oom: out of memory (no DEFLATE_ON_OOM)" in out


@pytest.mark.parametrize("ioeventfd,irqfd", [(False, False), (True, True), (False, True)],
                         ids=["plain-exits", "ioeventfd+irqfd", "irqfd"])
def test_notify_and_interrupt_paths(ioeventfd, irqfd):
    """QueueNotify through a Python exit or an ioeventfd; interrupts through KVM_IRQ_LINE or irqfd."""
    with machine("scenario=demo dirty=32M", memory=128 * MiB, ioeventfd=ioeventfd, irqfd=irqfd) as m:
        m.wait_for_console(r"balloon: version 2 features", 60)
        m.balloon.set_target(96 * MiB)
        assert wait_balloon(m, 96 * MiB, timeout=60).agree
        m.balloon.set_target(128 * MiB)
        assert wait_balloon(m, 128 * MiB, timeout=60).agree


def test_two_vcpus_boot_and_balloon():
    with machine("scenario=demo dirty=16M", memory=128 * MiB, smp=2) as m:
        assert len(m.vcpus) == 2
        m.wait_for_console(r"balloon: version 2 features", 60)
        m.balloon.set_target(112 * MiB)
        assert wait_balloon(m, 112 * MiB, timeout=60).agree
