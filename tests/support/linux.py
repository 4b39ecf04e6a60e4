"""The minimal Linux guest for end-to-end tests: built once per machine into ~/.cache/pyvmm/linux."""

from __future__ import annotations

import subprocess
import time

from pyvmm.arch.x86.cpuid import is_kvm_pvm_host
from pyvmm.config import LINUX_DEFAULT_APPEND, LINUX_PVM_APPEND, VmConfig, linux_cache
from tests.support.guest import ROOT

DRIVER_OK = 4


def ensure_linux_built() -> None:
    """`make linux-guest` when the cache is empty or stale (the script itself says 'up to date')."""
    subprocess.run(["bash", str(ROOT / "linux" / "build.sh")], check=True, stdout=subprocess.DEVNULL)


def linux_append(extra: str = "") -> str:
    base = LINUX_DEFAULT_APPEND + (" " + LINUX_PVM_APPEND if is_kvm_pvm_host() else "")
    return f"{base} {extra}".strip()


def linux_config(**kw) -> VmConfig:
    cache = linux_cache()
    kw.setdefault("kernel", cache / "vmlinux")
    kw.setdefault("initrd", cache / "initramfs.cpio.gz")
    kw.setdefault("append", linux_append())
    kw.setdefault("memory", 256 << 20)
    kw.setdefault("console", "none")
    return VmConfig(**kw)


def wait_driver_ok(m, timeout: float = 1500.0) -> None:
    """Until Linux's virtio_balloon has set DRIVER_OK on our transport."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if m.balloon_transport.status & DRIVER_OK:
            return
        if m.status() == "shutdown":
            raise AssertionError(f"the VM stopped: {m.stop_reason}\n{m.crash_report}\n{m.console_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"Linux's driver never reached DRIVER_OK\n{m.console_text()[-3000:]}")
