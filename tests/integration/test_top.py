"""`pyvmm top --once --json` against a running demo guest: the counts add up, and an inflate shows."""

import json
import subprocess
import sys

import pytest

from tests.support.guest import ROOT, MiB, machine, tmp_socket

pytestmark = pytest.mark.kvm


def test_top_once_json_during_an_inflate():
    sock = tmp_socket("top.qmp")
    with machine("scenario=demo dirty=64M", memory=256 * MiB, qmp=(f"unix:{sock},server,wait=off",)) as m:
        m.wait_for_console(r"balloon: version 2 features", timeout=60)
        m.balloon.set_target(64 * MiB)            # 192 MiB to inflate: a few seconds here
        out = subprocess.run([sys.executable, "-m", "pyvmm", "top", "--qmp", sock, "--once", "--json",
                              "--interval", "0.5"], cwd=str(ROOT), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        view = json.loads(out.stdout)
        exits_after = m.vcpus[0].exits
    (cpu,) = view["vcpus"]
    assert sum(x["count"] for x in cpu["by-reason"].values()) == cpu["exits"] > 0
    assert cpu["exits"] <= exits_after
    # Over top's interval, every IO and MMIO exit the vCPU counted reached a device on its bus (the
    # buses count by device from top's first look on) or was counted as unhandled there.
    seen = {r: x["in-interval"] for r, x in cpu["by-reason"].items()}
    pio = sum(d["in-interval"] for d in view["devices"] if d["bus"] == "pio")
    mmio = sum(d["in-interval"] for d in view["devices"] if d["bus"] == "mmio")
    assert seen.get("MMIO", 0) > 0                                   # the driver read and wrote registers
    assert seen.get("IO", 0) == pio + view["unhandled"]["pio"]["in-interval"]
    assert seen.get("MMIO", 0) == mmio + view["unhandled"]["mmio"]["in-interval"]
    balloon_window = next(d for d in view["devices"] if d["name"] == "virtio-mmio balloon0")
    assert balloon_window["in-interval"] > 0 and "InterruptStatus" in balloon_window["by-register"]
    (balloon,) = [d for d in view["virtio"] if "balloon" in d]
    assert balloon["name"] == "balloon0"
    assert balloon["notifications"]["inflateq"]["per-s"] > 0         # inflating while top looked
    assert balloon["balloon"]["target"] == 64 * MiB
    assert balloon["balloon"]["actual"] >= 64 * MiB
    assert any(i["device"] == "balloon0" and i["raised"] > 0 for i in view["irqs"])
    assert cpu["state"] in ("running", "halted")


def test_top_against_no_vm_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pyvmm", "top", "--qmp", str(tmp_path / "none.sock"), "--once"],
                         cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and out.stderr.count("\n") == 1
    assert "cannot connect to QMP" in out.stderr
