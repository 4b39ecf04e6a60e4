"""Linux's balloon driver WITHOUT deflate-on-oom, under real memory pressure: the OOM killer acts in the
guest, and pyvmm goes on running.  Its own boot (the feature is fixed when the driver probes), beside
the shell module's boot that has deflate-on-oom on (tests/e2e/test_linux_shell.py).
"""

from __future__ import annotations

import re

import pytest

from tests.support.guest import MiB
from tests.support.linux_shell import boot_shell

pytestmark = [pytest.mark.kvm, pytest.mark.linux]


@pytest.fixture(scope="module")
def shell():
    with boot_shell("virtio-balloon-device", ram_mib=256, name="oom") as sh:
        yield sh


def test_without_deflate_on_oom_the_oom_killer_acts_and_pyvmm_keeps_running(shell, figure):
    """Ballooned down to 96 MiB, memhog asks for 128 MiB: the balloon keeps its pages (`actual` stays at
    96 MiB, no BALLOON_CHANGE), Linux's OOM killer kills memhog, the shell and the VMM carry on."""
    features = shell.run("cat /sys/bus/virtio/drivers/virtio_balloon/virtio*/features")
    assert features[2] == "0", features   # VIRTIO_BALLOON_F_DEFLATE_ON_OOM not offered, not taken
    took = shell.balloon_to(96)
    shell.drain_events()
    out = shell.run("memhog a 128 s q; echo memhog-status=$?", timeout=900)
    status = re.search(r"memhog-status=(\d+)", out)
    assert status and status[1] == "137", out   # 128 + SIGKILL
    assert "memhog: holding 128 MiB" not in out, out
    # The kernel's own report, printed on the same console (ttyS0) while memhog ran.
    kill = re.search(r"Out of memory: Killed process \d+ \(memhog\)", "\n".join(shell.kernel))
    assert kill, (out, shell.kernel)
    assert shell.qmp_exec("query-balloon")["actual"] == 96 * MiB
    assert shell.drain_events() == []
    assert shell.qmp_exec("query-status")["status"] == "running"
    assert shell.run("echo still $((40+2))") == "still 42"
    touched = max(map(int, re.findall(r"touched (\d+)/128 MiB", out)), default=0)
    figure(f"without deflate-on-oom: inflate 256 -> 96 MiB in {took:.1f} s; memhog killed (exit 137) after "
          f"touching {touched} MiB; actual stays 96 MiB; kernel: {kill[0]}")
    assert touched < 128
    shell.balloon_to(256)
