"""Soak: inflate/deflate cycles of a 256 MiB guest; nothing leaks and host and guest always agree.

`make test` runs two cycles of the full swing (256 -> 64 -> 256 MiB); `make soak` runs 1000 cycles of a
32 MiB swing (PYVMM_SOAK_CYCLES=1000 PYVMM_SOAK_MIB=32): the same code paths each cycle, at a cost that
lets a thousand of them finish well within an hour on a nested host (a full swing takes about 6 s here).
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
SWING = int(os.environ.get("PYVMM_SOAK_MIB", "192")) * MiB     # ballooned and given back each cycle
RAM = 256 * MiB
LOW = RAM - SWING


def test_soak_inflate_deflate_cycles():
    with machine("scenario=demo dirty=192M", memory=RAM) as m:
        m.wait_for_console(r"balloon: version 2 features", 120)
        low_rss, overhead = [], []
        t0 = time.monotonic()
        for _cycle in range(CYCLES):
            m.balloon.set_target(LOW)
            info = wait_balloon(m, LOW)
            assert info.agree and info.actual_pages == info.ballooned_pages == SWING >> 12
            guest = sum(mapping_rss(r) for r in m.memory.regions)
            low_rss.append(guest)
            m.balloon.set_target(RAM)
            info = wait_balloon(m, RAM)
            assert info.agree and info.ballooned_pages == 0
            guest = sum(mapping_rss(r) for r in m.memory.regions)
            overhead.append(process_rss() - guest)
            assert info.bad_pfns == 0 and info.guest_errors == 0
        elapsed = time.monotonic() - t0
        # Host RSS of guest RAM at the low point never grows: a page the guest gets back stays discarded
        # until the guest writes it, and this scenario writes nothing after its start. With a swing smaller
        # than what the guest dirtied, each inflate takes other dirty pages, so the low point falls cycle
        # by cycle until all of them were given back once; from then on (the second half) it is flat.
        assert all(b <= a + MiB for a, b in zip(low_rss, low_rss[1:], strict=False)), low_rss
        settled = low_rss[len(low_rss) // 2:]
        assert max(settled) - min(settled) <= 1 * MiB, settled
        # The VMM's own memory beyond guest RAM does not grow from the second cycle on.
        if len(overhead) > 1:
            assert overhead[-1] - overhead[1] <= 4 * MiB, overhead
        sys.stderr.write(f"soak: {CYCLES} cycles of {SWING // MiB} MiB in {elapsed:.1f} s, guest RSS at "
                         f"{LOW // MiB} MiB "
                         f"{min(low_rss) / MiB:.1f}-{max(low_rss) / MiB:.1f} MiB, VMM overhead "
                         f"{overhead[0] / MiB:.1f} -> {overhead[-1] / MiB:.1f} MiB, nothing lost\n")
