"""Linux's own virtio_balloon driver against pyvmm, and against QEMU's device in the same run.

The minimal kernel is built from Debian's linux-source-6.1 by `make linux-guest` (the first test run on a
machine builds it, under 3 minutes on 2 cores; later runs reuse ~/.cache/pyvmm/linux).  Guest code is emulated on
this host (every guest page costs about a millisecond), so the balloon moves in small steps, and the
tests that can share a boot share one (the module's linux_vm).
"""

import asyncio
import json
import re
import subprocess
import time

import pytest

from pyvmm.config import linux_cache
from pyvmm.hoststat import mapping_rss
from pyvmm.virtio.rng import RngOptions
from pyvmm.vm import Machine
from tests.support.guest import MiB, qmp_connect, qmp_disconnect, tmp_socket
from tests.support.linux import DRIVER_OK, ensure_linux_built, linux_append, linux_config, wait_driver_ok

pytestmark = [pytest.mark.kvm, pytest.mark.linux]

RAM = 256 * MiB
LOW = 224 * MiB
ACPI_TABLES = ["RSDP", "XSDT", "FACP", "DSDT", "APIC"]


@pytest.fixture(scope="module", autouse=True)
def linux_built():
    ensure_linux_built()


def guest_rss(m) -> int:
    return sum(mapping_rss(r) for r in m.memory.regions)


@pytest.fixture(scope="module")
def linux_vm(tmp_path_factory):
    """One boot for the tests below: 2 vCPUs, two devices (the balloon and virtio-rng) found through ACPI
    alone (no virtio_mmio.device=), RAM preallocated, the virtio trace to a file, QMP on a socket; yielded
    once the balloon's driver is at DRIVER_OK."""
    trace = tmp_path_factory.mktemp("linux") / "trace.jsonl"
    sock = tmp_socket("linux.qmp")
    cfg = linux_config(smp=2, trace=frozenset({"virtio"}), trace_file=trace, mem_prealloc=True,
                       qmp=(f"unix:{sock},server,wait=off",), devices=(RngOptions(),))
    with Machine(cfg) as m:
        m.tracer._stream = None                      # the JSON file is enough here
        assert "virtio_mmio.device" not in m.cmdline
        m.start()
        wait_driver_ok(m)
        yield m, trace, sock


def test_two_vcpus_acpi_discovery_and_driver_ok(linux_vm):
    """Linux finds our balloon through the DSDT's LNRO0005 device alone, brings up both vCPUs from the
    MADT, and its virtio_balloon driver reaches DRIVER_OK."""
    m, trace, _ = linux_vm
    out = m.wait_for_console(r"smpboot: Total of 2 processors activated", 120).string
    from pyvmm.monitor.hmp import run_hmp

    virtio = run_hmp(m, "info virtio")
    for table in ACPI_TABLES:
        assert re.search(rf"ACPI: {table} 0x[0-9A-F]+ .*PYVMM", out), table
    assert not re.search(r"ACPI (BIOS )?Error", out), out
    assert "DRIVER_OK" in virtio and "VIRTIO_BALLOON_F_STATS_VQ" in virtio and "VIRTIO_F_VERSION_1" in virtio
    records = [json.loads(x) for x in trace.read_text().splitlines()]
    writes = [r for r in records if str(r.get("reg", "")).startswith("DriverFeatures[") and r.get("dir") == "write"]
    assert writes, "the trace shows the features Linux accepted"


def test_linux_virtio_rng_binds_the_second_window_and_reads(linux_vm):
    """The same boot: Linux finds the second LNRO0005 window (rng0, GSI 6), its own virtio_rng driver
    reaches DRIVER_OK, and the hw_random core reads it: device-writable buffers filled, in the trace."""
    m, trace, _ = linux_vm
    from pyvmm.monitor.hmp import run_hmp

    rng = next(t for t in m.virtio_devices if t.name == "rng0")
    assert (rng.base, rng.irq_gsi) == (0xD000_1000, 6)
    deadline = time.monotonic() + 600
    while not (rng.status & DRIVER_OK and rng.device.buffers_served >= 1):
        assert time.monotonic() < deadline, f"virtio_rng: status {rng.status:#x}\n{m.console_text()[-3000:]}"
        assert m.status() != "shutdown", m.console_text()[-3000:]
        time.sleep(0.5)
    assert "rng0: virtio-rng at 0xd0001000 irq 6" in run_hmp(m, "info virtio")
    records = [json.loads(x) for x in trace.read_text().splitlines()]
    filled = [r for r in records if r.get("dev") == "rng0" and r.get("reg") == "entropy"]
    assert filled and all(r["value"] > 0 for r in filled), "the trace shows virtio_rng's buffers filled"
    assert any(r.get("dev") == "rng0" and r.get("reg") == "Status" and r.get("dir") == "write"
               and r["value"] & DRIVER_OK for r in records)
    # The balloon beside it is unaffected: still at DRIVER_OK, no guest errors on either device.
    assert m.balloon_transport.status & DRIVER_OK
    assert rng.guest_errors == 0 and m.balloon_transport.guest_errors == 0


def test_linux_inflates_and_deflates_through_qmp(linux_vm):
    """QMP balloon 256 -> 224 MiB and back: actual follows, the host RSS falls by the ballooned bytes,
    stats from Linux arrive."""
    m, _, sock = linux_vm
    m.wait_for_console(r"Run /init as init process", 900)
    rss_full = guest_rss(m)

    async def drive():
        qmp = await qmp_connect(sock, "linux-test", stats_interval=2)
        result = {}
        for size in (LOW, RAM):
            t0 = time.monotonic()
            with qmp.listener(("BALLOON_CHANGE",)) as events:
                await qmp.execute("balloon", {"value": size})
                while (await asyncio.wait_for(events.get(), 900))["data"]["actual"] != size:
                    pass
            result[size] = (time.monotonic() - t0, guest_rss(m), await qmp.execute("query-balloon"))
            await asyncio.sleep(2.5)
            result[f"stats{size}"] = await qmp.execute(
                "qom-get", {"path": "/machine/peripheral/balloon0", "property": "guest-stats"})
        await qmp.disconnect()
        return result

    result = asyncio.run(drive())
    from pyvmm.monitor.hmp import run_hmp

    info_stats = run_hmp(m, "info stats")
    _, rss_low, q_low = result[LOW]
    assert q_low == {"actual": LOW}
    assert rss_full - rss_low >= 0.9 * (RAM - LOW), (rss_full, rss_low)
    assert result[RAM][2] == {"actual": RAM}
    stats = result[f"stats{LOW}"]["stats"]
    assert 0 < stats["stat-total-memory"] <= RAM and 0 < stats["stat-free-memory"] < stats["stat-total-memory"]
    assert "stat-free-memory" in info_stats


def test_bzimage_with_command_line_devices_and_the_mp_table():
    """The bzImage through the 64-bit boot protocol, ACPI off, 2 vCPUs: Linux finds the balloon from the
    virtio_mmio.device= parameter pyvmm appends and its driver reaches DRIVER_OK; it finds both vCPUs and
    the IOAPIC in pyvmm's MP table alone, and routes the balloon's line through the IOAPIC, level-triggered."""
    cfg = linux_config(kernel=linux_cache() / "bzImage", acpi=False, append=linux_append("acpi=off"), smp=2)
    with Machine(cfg) as m:
        assert "virtio_mmio.device=0x200@0xd0000000:5" in m.cmdline
        m.start()
        m.wait_for_console(r"virtio-mmio: Registering device virtio-mmio\.0", 1500)
        wait_driver_ok(m)
        out = m.wait_for_console(r"smpboot: Total of 2 processors activated", 300).string
        from pyvmm.monitor.hmp import run_hmp

        pin5 = next(line for line in run_hmp(m, "info pic").splitlines() if line.strip().startswith("pin 5 "))
    assert "Linux version 6.1" in out
    assert re.search(r"found SMP MP-table at \[mem 0x0009fc00-0x0009fc0f\]\r?$", out, re.MULTILINE), out
    assert "IOAPIC[0]: apic_id 0, version 17, address 0xfec00000, GSI 0-23" in out
    assert "APIC: Switch to symmetric I/O mode setup" in out
    # The table's level/active-high entry for the balloon's IRQ, as Linux programmed KVM's IOAPIC pin.
    assert "active-hi level" in pin5 and "masked" not in pin5, pin5


@pytest.mark.qemu
def test_same_kernel_under_qemu_microvm():
    """The reference: QEMU's virtio-balloon-device with the same vmlinux, initramfs and steps."""
    cache = linux_cache()
    sock = tmp_socket("qemu-linux.qmp")
    cmd = ["qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "qemu64,+xsaveerptr",
           "-m", "256M", "-mem-prealloc", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
           "-device", "virtio-balloon-device,id=balloon0", "-kernel", str(cache / "vmlinux"),
           "-initrd", str(cache / "initramfs.cpio.gz"), "-append", linux_append("acpi=off"),
           "-qmp", f"unix:{sock},server,wait=off"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)

    async def drive():
        qmp = await qmp_connect(sock, "qemu-linux", stats_interval=2)
        deadline = time.monotonic() + 1500
        while time.monotonic() < deadline:        # a live driver sends stats (the boot: minutes here)
            s = await qmp.execute("qom-get", {"path": "/machine/peripheral/balloon0", "property": "guest-stats"})
            if s["stats"]["stat-total-memory"] not in (0, 2**64 - 1, -1):
                break
            await asyncio.sleep(1)
        for size in (LOW, RAM):
            await qmp.execute("balloon", {"value": size})
            deadline = time.monotonic() + 900
            while (q := await qmp.execute("query-balloon"))["actual"] != size:
                assert time.monotonic() < deadline, f"QEMU's balloon at {q} after 900 s, target {size}"
                await asyncio.sleep(0.5)
        await qmp.execute("quit")
        await qmp_disconnect(qmp)
        return s

    try:
        stats = asyncio.run(asyncio.wait_for(drive(), 2400))
    finally:
        if p.poll() is None:
            p.kill()
    assert 0 < stats["stats"]["stat-total-memory"] <= RAM
