"""The register-level trace: line format, JSON-lines schema, zero work when off, and the docs excerpt."""

import io
import itertools
import json
import pathlib
import re

from pyvmm.trace import Tracer, current_vcpu, set_current_vcpu
from tests.support.virtio_driver import Rig

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "trace.md"
MiB = 1 << 20


def fake_clock():
    ticks = itertools.count()
    return lambda: next(ticks) * 1e-6


def capture_handshake(json_path=None) -> str:
    """A full v2 handshake, one target change and one 4-page inflate, traced as on vCPU 0."""
    out = io.StringIO()
    tracer = Tracer({"virtio"}, stream=out, json_path=json_path, clock=fake_clock())
    rig = Rig(version=2, ram=16 * MiB, tracer=tracer)
    set_current_vcpu(0)
    try:
        rig.driver.start(stats=[(4, 12 * MiB), (5, 16 * MiB)])
        rig.balloon.set_target(16 * MiB - 4 * 4096)
        rig.drv.ack_interrupt()
        rig.driver.num_pages()
        rig.driver.inflate([0x200, 0x201, 0x202, 0x203])
        rig.driver.set_actual(4)
    finally:
        set_current_vcpu(None)
        tracer.close()
        rig.close()
    return out.getvalue()


def doc_excerpt() -> str:
    text = DOC.read_text()
    m = re.search(r"<!-- trace-excerpt:begin -->\n```text\n(.*?)```\n<!-- trace-excerpt:end -->", text, re.DOTALL)
    assert m, "docs/trace.md lost its excerpt markers"
    return m.group(1)


def test_docs_excerpt_is_what_the_driver_produces():
    assert capture_handshake() == doc_excerpt()


def test_lines_decode_by_name():
    text = capture_handshake()
    for expected in [
        "balloon0 Status <- 0x0b ACKNOWLEDGE|DRIVER|FEATURES_OK",
        "balloon0 DeviceFeatures[1] -> 0x00000001 VERSION_1",
        "balloon0 QueueSel <- 1 (deflateq)",
        "balloon0 QueueNotify <- 0 (inflateq)",
        "balloon0 num_pages -> 4",
        "balloon0 actual <- 4",
        "balloon0 Interrupt !! 0x2 CONFIG_CHANGE raised",
        "balloon0 InterruptACK <- 2 CONFIG_CHANGE",
    ]:
        assert expected in text, expected
    assert all(line.split()[1] == "cpu0" for line in text.splitlines())


def test_json_lines_schema(tmp_path):
    path = tmp_path / "trace.jsonl"
    text = capture_handshake(json_path=str(path))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == len(text.splitlines())
    for r in records:
        assert {"t", "vcpu", "cat", "dev", "dir", "reg", "value", "text"} <= r.keys()
        assert r["dir"] in ("read", "write", "event") and r["cat"] == "virtio" and r["vcpu"] == 0
        assert isinstance(r["value"], int)
        if r["dir"] != "event":
            assert isinstance(r["offset"], int) and r["size"] in (1, 2, 4)
    status = [r for r in records if r["reg"] == "Status" and r["dir"] == "write" and r["value"] == 0x0B]
    assert status and status[0]["offset"] == 0x70 and status[0]["text"] == "ACKNOWLEDGE|DRIVER|FEATURES_OK"


def test_emit_for_other_categories_and_off_categories():
    out = io.StringIO()
    t = Tracer({"boot"}, stream=out, clock=fake_clock())
    assert t.boot and not t.virtio
    t.emit("boot", "entered long mode", rip=0x100000)
    t.emit("exits", "not shown")
    assert out.getvalue() == "   0.000001     - boot: entered long mode\n"


def test_all_category_and_off():
    assert Tracer({"all"}, stream=None).virtio
    off = Tracer.off()
    assert not off.virtio and not off.enabled


def test_tracing_off_formats_nothing():
    rig = Rig(version=2)
    calls = []
    rig.dev._tracer.access = lambda *a, **k: calls.append(a)   # would be called if any formatting ran
    rig.driver.start()
    rig.driver.inflate([1])
    assert calls == []


def test_vcpu_is_thread_local():
    import threading
    set_current_vcpu(3)
    seen = []
    t = threading.Thread(target=lambda: seen.append(current_vcpu()))
    t.start()
    t.join()
    assert seen == [None] and current_vcpu() == 3
    set_current_vcpu(None)


def test_counts_are_decimal_and_masks_hex_everywhere():
    """An inflate of 256 pages and actual = 1536: the same numbers in decimal on every line (register,
    config field, device event); InterruptStatus in hex."""
    out = io.StringIO()
    tracer = Tracer({"virtio"}, stream=out, clock=fake_clock())
    rig = Rig(version=2, ram=16 * MiB, tracer=tracer)
    set_current_vcpu(0)
    try:
        rig.driver.start()
        rig.balloon.set_target(16 * MiB - 1536 * 4096)
        rig.drv.ack_interrupt()
        rig.driver.num_pages()
        rig.driver.inflate(list(range(0x1000, 0x1100)))
        rig.driver.set_actual(1536)
    finally:
        set_current_vcpu(None)
        tracer.close()
        rig.close()
    text = out.getvalue()
    assert "balloon0 num_pages -> 1536" in text and "balloon0 actual <- 1536" in text
    assert re.search(r"balloon0 inflate !! 256 ", text), text
    assert re.search(r"balloon0 actual !! 1536\b", text), text
    assert "balloon0 Interrupt !! 0x2 CONFIG_CHANGE raised" in text
    assert not re.search(r"(inflate|deflate|actual|stats) !! 0x", text)
