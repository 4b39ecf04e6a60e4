"""Soak: inflate/deflate cycles between 256 and 64 MiB; nothing leaks and host and guest always agree.

`make test` runs a few cycles; `make soak` runs PYVMM_SOAK_CYCLES=1000.
"""

import os
import sys
import time

import pytest

from pyvmm.hoststat import mapping_rss, process_rss
from tests.integration.test_balloon_tiny import wait_balloon
from tests.support.guest import MiB, machine

pytestmark = pytest.mark.kvm

CYCLES = int(os.environ.get("PYVMM_SOAK_CYCLES", "2"))


def test_soak_inflate_deflate_cycles():
    with machine("scenario=demo dirty=192M", memory=256 * MiB) as m:
        m.wait_for_console(r"balloon: version 2 features", 120)
        low_rss, overhead = [], []
        t0 = time.monotonic()
        for _cycle in range(CYCLES):
            m.balloon.set_target(64 * MiB)
            info = wait_balloon(m, 64 * MiB)
            assert info.agree and info.actual_pages == info.ballooned_pages == 192 * MiB >> 12
            guest = sum(mapping_rss(r) for r in m.memory.regions)
            low_rss.append(guest)
            m.balloon.set_target(256 * MiB)
            info = wait_balloon(m, 256 * MiB)
            assert info.agree and info.ballooned_pages == 0
            guest = sum(mapping_rss(r) for r in m.memory.regions)
            overhead.append(process_rss() - guest)
            assert info.bad_pfns == 0 and info.guest_errors == 0
        elapsed = time.monotonic() - t0
        # Host RSS of guest RAM at the low point returns to the same level every cycle (within 1 MiB).
        assert max(low_rss) - min(low_rss) <= 1 * MiB, low_rss
        # The VMM's own memory beyond guest RAM does not grow from the second cycle on.
        if len(overhead) > 1:
            assert overhead[-1] - overhead[1] <= 4 * MiB, overhead
        sys.stderr.write(f"soak: {CYCLES} cycles in {elapsed:.1f} s, guest RSS at 64 MiB "
                         f"{min(low_rss) / MiB:.1f}-{max(low_rss) / MiB:.1f} MiB, VMM overhead "
                         f"{overhead[0] / MiB:.1f} -> {overhead[-1] / MiB:.1f} MiB, nothing lost\n")
