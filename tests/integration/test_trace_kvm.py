"""docs/trace.md's trace captured under KVM stays true: the same writes and events, in the same order."""

import io
import re
import time

import pytest

from tests.support.guest import ROOT, MiB, machine

pytestmark = pytest.mark.kvm

# Reads that identify the device or answer a handshake step are compared; polling reads are not.
_KEEP_READS = re.compile(r"(MagicValue|Version|DeviceID|VendorID|DeviceFeatures\[\d\]|QueueSizeMax|QueueReady) ->")


def significant(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        line = re.sub(r"^\s*[\d.]+\s+", "", line.rstrip())     # drop the time column
        if not line:
            continue
        if " <- " in line or " !! " in line or _KEEP_READS.search(line):
            out.append(line)
    return out


def documented() -> list[str]:
    text = (ROOT / "docs" / "trace.md").read_text()
    m = re.search(r"<!-- kvm-trace:begin -->\n```text\n(.*?)```\n<!-- kvm-trace:end -->", text, re.S)
    assert m, "docs/trace.md lost its KVM trace markers"
    return m.group(1).splitlines()


def test_kvm_trace_in_docs_is_what_pyvmm_prints():
    ram = 128 * MiB
    buf = io.StringIO()

    def capture(m):
        m.tracer._stream = buf

    with machine("scenario=demo dirty=1M", memory=ram, ioeventfd=False, trace=frozenset({"virtio"}),
                 setup=capture) as m:
        m.wait_for_console(r"balloon: version 2 features", 60)
        time.sleep(0.5)
        m.balloon.set_target(ram - 256 * 4096)
        deadline = time.monotonic() + 30
        while m.balloon.info().actual_pages != 256 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    live = significant(buf.getvalue().splitlines())
    doc = significant(documented())
    assert len(doc) > 60
    assert live == doc
