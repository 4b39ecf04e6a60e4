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
    by_reason = {r: x["count"] for r, x in cpu["by-reason"].items()}
    assert sum(by_reason.values()) == cpu["exits"] > 0
    assert cpu["exits"] <= exits_after
    # Every IO and MMIO exit reached a device on its bus or was counted as unhandled there.
    pio = sum(d["accesses"] for d in view["devices"] if d["bus"] == "pio")
    mmio = sum(d["accesses"] for d in view["devices"] if d["bus"] == "mmio")
    assert by_reason.get("IO", 0) == pio + view["unhandled"]["pio"]
    assert by_reason.get("MMIO", 0) == mmio + view["unhandled"]["mmio"]
    serial = next(d for d in view["devices"] if d["name"].startswith("serial"))
    assert serial["by-register"]["0x3f8"]["count"] > 0              # the guest's console lines
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
