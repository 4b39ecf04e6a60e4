"""Virtio breakpoints on the real transport and balloon, a Python driver playing the guest: no KVM."""

import struct

import pytest

from pyvmm.debug.vbreak import VirtioBreakpoints
from pyvmm.monitor.hmp import run_hmp
from pyvmm.virtio.abi import BalloonFeature, Status
from tests.support.virtio_driver import Rig

STATS = int(BalloonFeature.VIRTIO_BALLOON_F_STATS_VQ)


class Hits:
    """The on_hit callback: records hits; stops the machine unless told it is already stopped."""

    def __init__(self) -> None:
        self.hits = []
        self.stop = True

    def __call__(self, hit) -> bool:
        self.hits.append(hit)
        return self.stop

    @property
    def texts(self) -> list[str]:
        return [h.text for h in self.hits]


@pytest.fixture
def rig():
    r = Rig(version=2)
    yield r
    r.close()


@pytest.fixture
def vb(rig):
    hits = Hits()
    exits = []
    v = VirtioBreakpoints([rig.dev], hits, lambda t, on: exits.append((t.name, on)) or "")
    v.hits, v.exits = hits, exits
    return v


def post_inflate(rig, pfns):
    q = rig.driver.q["inflateq"]
    q.add([struct.pack(f"<{len(pfns)}I", *pfns)])
    q.kick()
    return q


def test_no_breakpoint_no_hook(rig, vb):
    assert rig.dev.hook is None
    bp, _ = vb.add(["Status"])
    assert rig.dev.hook is not None
    vb.delete(bp.number)
    assert rig.dev.hook is None


def test_queue_notify_stops_with_the_new_buffer_and_holds_the_notification(rig, vb):
    rig.driver.start()
    _, line = vb.add(["QueueNotify", "inflateq"])
    assert line.startswith("vbreak 1: QueueNotify inflateq") and "notifies inflateq" in line
    assert vb.exits[-1] == ("balloon0", True)              # the ioeventfds must go: the write has to exit
    q = post_inflate(rig, [0x100, 0x101, 0x102, 0x200])
    (hit,) = vb.hits.hits
    text = hit.text
    assert text.splitlines()[0] == "vbreak 1: balloon0 QueueNotify <- 0 (inflateq)"
    assert 'spec "MMIO Device Register Layout"' in text and "The Virtqueue Available Ring" in text
    assert "4 PFNs (le32): 0x100-0x102 0x200" in text
    # Held: the device has not seen the buffer; the ring shows it as the driver left it.
    assert rig.dev.held_notifies == (0,) and rig.balloon.pages.count == 0
    assert q.reap() == []
    rig.dev.serve_held()
    assert rig.balloon.pages.count == 4 and len(q.reap()) == 1
    assert vb.breakpoints[0].hits == 1


def test_a_notification_is_not_held_when_the_machine_did_not_stop(rig, vb):
    rig.driver.start()
    vb.add(["QueueNotify"])
    vb.hits.stop = False
    post_inflate(rig, [0x100])
    assert rig.dev.held_notifies == () and rig.balloon.pages.count == 1


def test_other_queues_do_not_match(rig, vb):
    rig.driver.start()
    vb.add(["QueueNotify", "deflateq"])
    post_inflate(rig, [0x100])
    assert vb.hits.hits == [] and rig.balloon.pages.count == 1


def test_status_driver_ok_fires_once_when_it_is_set(rig, vb):
    vb.add(["Status", "DRIVER_OK"])
    rig.driver.start()
    assert len(vb.hits.hits) == 1
    text = vb.hits.texts[0]
    assert "balloon0 Status <- 0x0f" in text and "DRIVER_OK" in text and "Device Status Field" in text
    assert rig.dev.status & Status.DRIVER_OK                 # the write went through: stop after it
    rig.drv.w(0x70, rig.dev.status)                          # written again, already set: no new hit
    assert len(vb.hits.hits) == 1


def test_driver_features_with_and_without_a_feature(rig, vb):
    vb.add(["DriverFeatures"])
    vb.add(["DriverFeatures", "VERSION_1"])
    vb.add(["DriverFeatures", "STATS_VQ"])
    rig.driver.start(accept=0)
    # Window 1 (VERSION_1 is bit 32) meets breakpoints 1 and 2; window 0, without STATS_VQ, only 1.
    assert [t.splitlines()[0].split(":")[0] for t in vb.hits.texts] == ["vbreak 1, 2", "vbreak 1"]
    assert [b.hits for b in vb.breakpoints] == [2, 1, 0]
    assert "DriverFeatures[1] <- 0x00000001 VERSION_1" in vb.hits.texts[0] and "Feature Bits" in vb.hits.texts[0]


def test_irq_used_and_config(rig, vb):
    rig.driver.start()
    vb.add(["used", "inflateq"])
    vb.add(["irq"])
    vb.add(["config", "num_pages"])
    rig.driver.inflate([0x300])
    kinds = [h.event.kind for h in vb.hits.hits]
    assert kinds[:2] == ["used", "irq"]
    assert "inflateq used.idx" in vb.hits.texts[0] and "The Virtqueue Used Ring" in vb.hits.texts[0]
    assert "Interrupt !! 0x1 USED_BUFFER raised (inflateq)" in vb.hits.texts[1]
    assert "Notifications From The Device" in vb.hits.texts[1]
    rig.driver.num_pages()
    assert vb.hits.hits[-1].event.kind == "config-read"
    assert "num_pages: struct virtio_balloon_config at +0x0 (4 bytes)" in vb.hits.texts[-1]
    assert "Device configuration layout" in vb.hits.texts[-1]


def test_irq_for_a_config_change(rig, vb):
    rig.driver.start()
    vb.add(["irq", "config"])
    rig.driver.inflate([0x300])
    assert vb.hits.hits == []
    rig.balloon.set_target(8 << 20)
    assert [h.event.kind for h in vb.hits.hits] == ["irq"] and "CONFIG_CHANGE" in vb.hits.texts[0]


def test_reads_of_read_only_registers(rig, vb):
    vb.add(["InterruptStatus", "USED_BUFFER"])
    rig.driver.start()
    rig.driver.inflate([0x300])                              # the driver acks: reads InterruptStatus
    assert vb.hits.hits and vb.hits.hits[0].event.kind == "read"
    assert "balloon0 InterruptStatus -> 1 USED_BUFFER" in vb.hits.texts[0]


def test_a_device_prefix_and_queue_registers(rig, vb):
    vb.add(["balloon0", "QueueReady", "deflateq"])
    rig.driver.start()
    (hit,) = vb.hits.hits
    assert "QueueReady <- 1 (deflateq)" in hit.text


@pytest.mark.parametrize("words,message", [
    (["Nonsense"], "unknown virtio-mmio register 'Nonsense'"),
    (["QueueNotify", "nosuchq"], "no queue 'nosuchq'"),
    (["config", "nofield"], "no config field 'nofield'"),
    (["Status", "NOT_A_BIT"], "neither a number nor a name"),
    ([], "usage: vbreak"),
    (["a", "b", "c"], "usage: vbreak"),
])
def test_what_cannot_be_matched_is_one_line(vb, words, message):
    with pytest.raises(ValueError, match=message):
        vb.add(words)
    assert vb.breakpoints == []


def test_info_vbreak_and_vdelete(rig, vb):
    assert vb.describe() == "no virtio breakpoints\n"
    vb.add(["QueueNotify", "inflateq"])
    vb.add(["irq"])
    rig.driver.start()
    post_inflate(rig, [0x10])
    table = vb.describe()
    assert "QueueNotify inflateq" in table and "last hit: vbreak 1: balloon0 QueueNotify <- 0" in table
    assert vb.delete(1) == 1
    with pytest.raises(ValueError, match="no virtio breakpoint 1"):
        vb.delete(1)
    assert vb.exits[-1] == ("balloon0", False)               # no QueueNotify vbreak left: ioeventfds back
    assert vb.delete() == 1 and rig.dev.hook is None


class _Machine:
    """Enough of a machine for the monitor's vbreak commands."""

    def __init__(self, vbreaks) -> None:
        self.debugger = type("D", (), {"vbreaks": vbreaks})()


def test_the_monitor_commands(rig, vb):
    m = _Machine(vb)
    assert run_hmp(m, "vbreak QueueNotify inflateq").startswith("vbreak 1: QueueNotify inflateq")
    assert "QueueNotify inflateq" in run_hmp(m, "info vbreak")
    assert run_hmp(m, "vbreak Bogus").startswith("Error: unknown virtio-mmio register")
    assert run_hmp(m, "vdelete x").startswith("Error: usage: vdelete")
    assert run_hmp(m, "vdelete all") == "1 virtio breakpoint deleted\n"
    assert run_hmp(object(), "info vbreak").startswith("Error: this machine has no debugger")


def test_pfn_runs_up_and_down():
    from pyvmm.virtio.pages import format_runs

    assert format_runs([1, 2, 3, 5, 9, 8, 7, 6, 10]) == "0x1-0x3 0x5 0x9-0x6 0xa"
    assert format_runs(list(range(0x1F477, 0x1F377, -1))) == "0x1f477-0x1f378"   # Linux allocates downwards
    assert format_runs([]) == "(none)"
    assert format_runs(list(range(0, 40, 2)), limit=3) == "0x0 0x2 0x4 ... (17 more runs)"


def test_stats_buffers_are_described_by_tag(rig):
    data = struct.pack("<HQHQ", 4, 40 << 20, 5, 64 << 20)
    assert rig.balloon.describe_buffer("statsq", data) == f"stats: memfree={40 << 20} memtot={64 << 20}"
    assert rig.balloon.describe_buffer("reporting_vq", data) == ""
