"""Pictures of a running machine: the demo's balloon timeline (PNG), a virtqueue (SVG), the memory map."""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from pyvmm.monitor.hmp import run_hmp
from tests.support.guest import ROOT, MiB, machine

pytestmark = pytest.mark.kvm
SVG = "{http://www.w3.org/2000/svg}"


def test_demo_plot_png_is_drawn_from_the_run(tmp_path):
    png = tmp_path / "b.png"
    out = subprocess.run([sys.executable, "-m", "pyvmm", "run", "--demo", "--plot", str(png)], cwd=str(ROOT),
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"written to {png}" in out.stdout + out.stderr
    assert png.stat().st_size > 10_000
    from PIL import Image

    with Image.open(png) as im:
        assert im.format == "PNG"
        assert (im.width, im.height) == (800, 420)            # 8 x 4.2 inches at 100 dpi
        data = json.loads(im.text["pyvmm-samples"])
    samples = data["samples"]
    # One sample per 0.2 s: the demo's own pauses (0.5 + 1.2 + 0.6 s) give 11 or more, the inflate
    # and deflate add theirs (a faster host kernel has less of those: 19 samples in all was seen).
    assert len(samples) >= 8
    ram, low = 256 * MiB, 64 * MiB
    assert samples[0]["target"] == ram and samples[-1]["target"] == ram
    at_low = [s for s in samples if s["target"] == low]
    assert at_low, "no sample while the target was 64 MiB"
    assert any(s["actual"] == low for s in at_low)             # actual reached the target
    rss = [s["rss"] for s in samples]
    before = max(s["rss"] for s in samples[: samples.index(at_low[0]) + 1])
    assert before > 150 * MiB                                  # the guest dirtied 192 MiB
    assert min(s["rss"] for s in at_low) < before - 150 * MiB  # and the host got it back
    assert rss[-1] < 32 * MiB                                  # deflating does not fault pages back in
    assert [p[0] for p in data["phases"]] == ["inflate", "deflate"]
    assert any(s["free"] is not None for s in samples)         # the guest's stats arrived


def _texts(root, gid):
    for g in root.iter(f"{SVG}g"):
        if g.get("id") == gid:
            return " ".join(t.text or "" for t in g.iter(f"{SVG}text"))
    raise AssertionError(f"no element {gid!r} in the SVG")


def test_info_virtqueue_inflateq_svg(tmp_path):
    svg = tmp_path / "q.svg"
    with machine("scenario=demo dirty=16M", memory=128 * MiB) as m:
        m.wait_for_console(r"balloon: version 2 features", timeout=60)
        m.balloon.set_target(96 * MiB)
        while m.balloon.info(rss=False).actual != 96 * MiB:
            m.wait(0.1)
        m.pause()
        reply = run_hmp(m, f"info virtqueue inflateq --svg {svg}")
        assert "picture written" in reply, reply
        q = m.balloon_transport.queues[0].snapshot()
        notified = m.balloon_transport.notify_counts[0]
    assert notified > 0
    root = ET.parse(svg).getroot()
    assert "balloon0 inflateq (queue 0)" in _texts(root, "title")
    ids = {g.get("id") for g in root.iter(f"{SVG}g")}
    descs = {i for i in ids if i and i.startswith("desc-")}
    assert len(descs) == q.size == 128
    assert f"avail.idx = {q.avail_idx}" in _texts(root, "avail-idx")
    assert f"used.idx = {q.used_idx}" in _texts(root, "used-idx")
    assert f"last_avail = {q.last_avail & 0xFFFF}" in _texts(root, "last-avail")
    assert q.avail_idx > 0 and q.used_idx == q.avail_idx        # every inflate buffer came back


def test_virtqueue_picture_needs_a_known_suffix_and_queue(tmp_path):
    with machine("scenario=demo dirty=16M", memory=64 * MiB) as m:
        m.wait_for_console(r"balloon: version 2 features", timeout=60)
        assert "no virtio device has a queue 'nosuchq'" in run_hmp(m, "info virtqueue nosuchq")
        assert "--svg needs a file name" in run_hmp(m, "info virtqueue inflateq --svg")
        reply = run_hmp(m, f"info virtqueue balloon0 deflateq --svg {tmp_path}/nodir/q.svg")
        assert reply.count("\n") == 1 and "cannot write" in reply


def test_notebook_views_of_a_machine(tmp_path):
    """What a notebook shows: the trace as records and a table, a virtqueue as a picture, the memory map."""
    with machine("scenario=demo dirty=16M", memory=128 * MiB, trace="virtio", trace_text=False) as m:
        m.wait_for_console(r"balloon: version 2 features", timeout=60)
        m.balloon.set_target(96 * MiB)
        while m.balloon.info(rss=False).actual != 96 * MiB:
            m.wait(0.1)
        m.pause()
        trace = m.trace()
        q = m.virtqueue("inflateq")
        mm = m.plot_memory_map(tmp_path / "mm.svg")
        ballooned = m.balloon.pages.count
        html = m._repr_html_()
    notifies = trace.filter(reg="QueueNotify")
    assert len(notifies) > 0 and all(r["dev"] == "balloon0" for r in notifies)
    assert "<table>" in trace._repr_html_() and "QueueNotify" in trace._repr_html_()
    assert (q.device, q.name, q.size) == ("balloon0", "inflateq", 128)
    assert q._repr_html_().startswith("<svg")
    assert "pyvmm Machine" in html and "balloon0" in html
    assert ballooned == 32 * MiB >> 12
    root = ET.parse(tmp_path / "mm.svg").getroot()
    regions = {g.get("id") for g in root.iter(f"{SVG}g") if (g.get("id") or "").startswith("region-")}
    assert {"region-0x0", "region-0xd0000000", "region-0xffff0000"} <= regions
    assert mm.axes[0].get_title().endswith("(dark: ballooned pages)")


def test_cli_info_virtqueue_svg_over_qmp(tmp_path):
    from tests.support.guest import tmp_socket

    sock = tmp_socket("vq.qmp")
    with machine("scenario=demo dirty=16M", memory=64 * MiB, qmp=(f"unix:{sock},server,wait=off",)) as m:
        m.wait_for_console(r"balloon: version 2 features", timeout=60)
        out = subprocess.run([sys.executable, "-m", "pyvmm", "info", "virtqueue", "--qmp", sock, "inflateq",
                              "--svg", "q.svg", "--timeout", "60"], cwd=str(tmp_path), capture_output=True,
                             text=True, timeout=120)
        bad = subprocess.run([sys.executable, "-m", "pyvmm", "info", "virtqueue", "--qmp", sock, "nosuchq"],
                             cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "picture written to" in out.stdout
    root = ET.parse(tmp_path / "q.svg").getroot()
    assert "balloon0 inflateq (queue 0)" in _texts(root, "title")
    assert bad.returncode == 1 and bad.stdout.count("\n") == 1 and "no virtio device has a queue" in bad.stdout
