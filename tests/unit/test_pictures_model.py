"""The timeline, the pictures and the notebook helpers on made-up data: no KVM, no guest."""

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import pytest

from pyvmm.errors import PyvmmError
from pyvmm.notebook import TraceView, text_sink
from pyvmm.plot import plot_memory_map, plot_virtqueue
from pyvmm.timeline import BalloonTimeline
from pyvmm.virtio.queue import QueueSnapshot

MiB = 1 << 20
SVG = "{http://www.w3.org/2000/svg}"


@dataclass
class Info:
    target: int
    actual: int
    guest_ram_rss: int | None
    stats: dict = field(default_factory=dict)


class FakeBalloon:
    def __init__(self, script):
        self.script = list(script)

    def info(self):
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


def test_timeline_phases_and_plot_metadata(tmp_path):
    steps = [Info(256 * MiB, 256 * MiB, 200 * MiB), Info(64 * MiB, 256 * MiB, 200 * MiB),
             Info(64 * MiB, 128 * MiB, 90 * MiB, {"memfree": 30 * MiB}), Info(64 * MiB, 64 * MiB, 10 * MiB),
             Info(256 * MiB, 64 * MiB, 10 * MiB), Info(256 * MiB, 256 * MiB, 10 * MiB)]
    tl = BalloonTimeline(FakeBalloon(steps), start=False)
    for _ in steps:
        tl.sample()
    assert [s.phase for s in tl.samples] == ["steady", "inflate", "inflate", "steady", "deflate", "steady"]
    assert [p[0] for p in tl.phases()] == ["inflate", "deflate"]
    assert tl.samples[2].free == 30 * MiB and tl.samples[0].free is None
    tl.plot(tmp_path / "t.svg")
    root = ET.parse(tmp_path / "t.svg").getroot()
    desc = next(e for e in root.iter() if e.tag.endswith("description") or e.tag.endswith("desc"))
    data = json.loads(desc.text)
    assert [s["actual"] for s in data["samples"]] == [s.actual for s in steps]
    ids = {g.get("id") for g in root.iter(f"{SVG}g")}
    assert {"series-target", "series-actual", "series-rss", "series-free"} <= ids
    with pytest.raises(PyvmmError, match="as .png or .svg"):
        tl.plot(tmp_path / "t.jpg")


def test_virtqueue_picture_draws_every_descriptor_and_the_indices(tmp_path):
    descs = ((0x1000, 16, 1, 1), (0x2000, 8, 2, 0)) + ((0, 0, 0, 0),) * 6
    q = QueueSnapshot(0, 8, 128, True, 0x10000, 0x11000, 0x12000, False, last_avail=3, next_used=2,
                      descriptors=descs, avail_idx=4, avail_ring=(0, 0, 0, 0, 0, 0, 0, 0), used_idx=2,
                      used_ring=((0, 24),) * 8, device="dev0", name="requestq")
    q.plot(tmp_path / "q.svg")
    root = ET.parse(tmp_path / "q.svg").getroot()
    ids = {g.get("id"): " ".join(t.text or "" for t in g.iter(f"{SVG}text")) for g in root.iter(f"{SVG}g")}
    assert len([i for i in ids if i and i.startswith("desc-")]) == 8
    assert "NEXT -> 1" in ids["desc-0"] and "WRITE" in ids["desc-1"]
    assert "avail.idx = 4" in ids["avail-idx"] and "used.idx = 2" in ids["used-idx"]
    assert "last_avail = 3" in ids["last-avail"]
    assert "dev0 requestq (queue 0)" in ids["title"]
    empty = QueueSnapshot(1, 0, 128, False, 0, 0, 0, False, 0, 0)
    plot_virtqueue(empty, tmp_path / "e.png")
    assert (tmp_path / "e.png").stat().st_size > 0


def test_memory_map_picture_shades_ballooned_ram(tmp_path):
    regions = [(0, 64 * MiB - 1, "ram"), (0xD000_0000, 0xD000_01FF, "virtio-mmio balloon0"),
               (0xFFFF_0000, 0xFFFF_FFFF, "firmware (rom)")]
    fig = plot_memory_map(regions, tmp_path / "m.svg", ballooned={pfn for pfn in range(1024, 4096)})
    root = ET.parse(tmp_path / "m.svg").getroot()
    ids = {g.get("id") for g in root.iter(f"{SVG}g")}
    assert {"region-0x0", "region-0x4000000", "region-0xd0000000", "region-0xffff0000"} <= ids
    assert len(fig.axes[0].patches) > len(regions) + 1      # the ballooned stripes


def test_text_sink_keeps_split_utf8_and_drops_cr():
    got = []
    sink = text_sink(got.append)
    for piece in (b"caf", b"\xc3", b"\xa9\r\n", b"ok\r\n"):
        sink(piece)
    assert "".join(got) == "café\nok\n"

    def broken(text):
        raise ValueError("the cell is gone")

    text_sink(broken)(b"x")     # a failing callback does not reach the vCPU thread


def test_trace_view_filters_and_tabulates():
    recs = [{"t": 0.5, "vcpu": 0, "cat": "virtio", "dev": "balloon0", "dir": "write", "reg": "QueueNotify",
             "value": 0, "text": "inflateq"},
            {"t": 0.1, "vcpu": None, "cat": "boot", "text": "long mode"}]
    tv = TraceView(recs)
    assert len(tv.filter(reg="QueueNotify")) == 1 and len(tv.filter(cat="boot")) == 1
    html = tv._repr_html_()
    assert html.count("<tr>") == 3 and "QueueNotify" in html and "long mode" in html
    assert "balloon0 QueueNotify <- " in repr(tv)
