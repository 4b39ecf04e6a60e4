"""Debian's stock cloud kernel, unpatched, through the boot protocol and ACPI to `Run /init` (the slowest
test of the suite: about 12 minutes on this project's 2-core nested-KVM machines)."""

import re
import subprocess
from pathlib import Path

import pytest

from pyvmm.arch.x86.cpuid import is_kvm_pvm_host
from pyvmm.vm import Machine
from tests.support.guest import ROOT, MiB
from tests.support.linux import linux_append, linux_config

pytestmark = [pytest.mark.kvm, pytest.mark.linux, pytest.mark.stock]

ACPI_TABLES = ["RSDP", "XSDT", "FACP", "DSDT", "APIC"]


def test_stock_debian_cloud_kernel_reaches_init():
    """Debian's own cloud kernel, unpatched (linux-image-*-cloud-amd64, fetched with apt-get download):
    through the boot protocol, ACPI and pyvmm's handling of this host's emulation gaps, as far as this
    host lets any VMM go: `Run /init` (its user space cannot make system calls here).  Slow: 10-20
    minutes on this 2-core machine."""
    vmlinuz = subprocess.run(["bash", "linux/fetch-stock.sh"], capture_output=True, text=True, check=True,
                             cwd=str(ROOT)).stdout.strip().splitlines()[-1]
    cfg = linux_config(kernel=Path(vmlinuz), memory=512 * MiB,
                       append=linux_append("cryptomgr.notests"))
    with Machine(cfg) as m:
        m.start()
        m.wait_for_console(r"Run /init as init process", 1800)
        out = m.console_text()
        fixups = dict(m.emulation_fixups)
        assert m.status() == "running" and not m.crash_report
    assert "Debian" in out and "cloud-amd64" in out
    for table in ACPI_TABLES:
        assert re.search(rf"ACPI: {table} 0x[0-9A-F]+ .*PYVMM", out), table
    # The unpatched kernel runs the int3 self-test and fwait, which a kvm_pvm host's emulator refuses.
    if is_kvm_pvm_host():
        assert fixups and set(fixups) <= {"int3 -> #BP injected", "fwait skipped"}, fixups
