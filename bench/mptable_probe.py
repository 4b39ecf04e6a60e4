"""Why Linux's early boot is slower under pyvmm with ACPI off: the MP table it does not find.

    python bench/mptable_probe.py [--rounds 2]

Linux 6.1 looks for an Intel MP floating pointer in setup_arch() (find_smp_config): the first KiB of
RAM, the last KiB of base memory (the EBDA) and the BIOS area 0xF0000-0xFFFFF, in 16-byte steps, and its
smp_scan_config() maps and unmaps the whole rest of the region with early_memremap() at every step. QEMU
microvm's firmware (qboot) writes an MP table, so the scan stops there; pyvmm writes none, so the scan
runs to the end of the BIOS area: thousands of early fixmap updates and TLB flushes, all of it emulated
kernel code on a kvm_pvm host. Sampling the vCPU's RIP in that phase finds __early_set_fixmap,
__early_ioremap, early_iounmap and flush_tlb_one_kernel.

This probe boots the minimal Linux (ACPI off, 512 MiB, as bench/linux.py does) to DRIVER_OK as pyvmm
does today and again with a minimal MP table written into the EBDA before the start (floating pointer
and a configuration table: one processor entry, an ISA bus, no I/O APIC, so interrupt routing stays the
8259's as without a table), and prints, per boot, the guest clock from `x86/PAT` to `RAMDISK` (the phase
the scan is in), whether Linux found the table, and the wall time to the virtio-mmio probe and to
DRIVER_OK. It is a measurement of the cause, not the fix: pyvmm's platform should build a real MP table
(every vCPU, the I/O APIC and its interrupt entries), as Firecracker and kvmtool do.
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
import time

import common
from common import Unavailable

import linux

LAPIC = 0xFEE0_0000


def _checksum(data: bytes | bytearray) -> int:
    return -sum(data) & 0xFF


def minimal_mp_table(base: int) -> bytes:
    """MP spec 1.4: a 16-byte floating pointer at ``base``, its configuration table right after it."""
    entries = (struct.pack("<BBBBIIQ", 0, 0, 0x14, 0x3, 0x600, 0x201, 0)   # processor: APIC id 0, enabled, BSP
               + struct.pack("<BB6s", 1, 0, b"ISA   "))                    # bus 0: ISA
    header = struct.pack("<4sHBB8s12sIHHIHBB", b"PCMP", 44 + len(entries), 4, 0, b"PYVMM   ", b"MPTABLEPROBE",
                         0, 0, 2, LAPIC, 0, 0, 0)
    table = bytearray(header + entries)
    table[7] = _checksum(table)
    pointer = bytearray(struct.pack("<4sIBBBB4s", b"_MP_", base + 16, 1, 4, 0, 0, bytes(4)))
    pointer[10] = _checksum(pointer)
    return bytes(pointer + table)


def boot(with_table: bool) -> dict:
    from pyvmm.arch.x86.layout import EBDA_START as EBDA  # reserved in pyvmm's e820
    from pyvmm.config import VmConfig
    from pyvmm.vm import Machine

    kernel, initrd = linux.linux_files()
    cfg = VmConfig(kernel=kernel, initrd=initrd, memory=512 * linux.MIB, append=linux.linux_append(), acpi=False,
                   mem_prealloc=True, console="none")
    with Machine(cfg) as m:
        if with_table:
            m.memory.write(EBDA, minimal_mp_table(EBDA))
        t0 = time.perf_counter()
        m.start()
        m.wait_for_console(linux.PROBE_LINE, linux.BOOT_TIMEOUT)
        probe = time.perf_counter() - t0
        while not m.balloon_transport.status & linux.DRIVER_OK:
            if time.perf_counter() - t0 > linux.BOOT_TIMEOUT:
                raise RuntimeError("the driver never reached DRIVER_OK")
            time.sleep(0.05)
        driver_ok = time.perf_counter() - t0
        text = m.console_text()
        m.stop(0, "probe done")

    def stamp(pattern: str) -> float:
        found = re.search(r"\[\s*([0-9.]+)\] " + pattern, text)
        return float(found.group(1)) if found else float("nan")

    return {"scan_phase": stamp(r"RAMDISK:") - stamp(r"x86/PAT:"), "found": "found SMP MP-table" in text,
            "probe": probe, "driver_ok": driver_ok}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    try:
        common.need_kvm()
        linux.linux_files()
    except Unavailable as e:
        print(f"mptable_probe: not run: {e}")
        return 2
    print(f"{'round':>5} {'MP table':>8} {'found':>5} {'PAT->RAMDISK (guest s)':>22} {'probe (s)':>9} "
          f"{'DRIVER_OK (s)':>13}")
    for i in range(a.rounds):
        for with_table in (False, True):
            try:
                r = boot(with_table)
            except (RuntimeError, TimeoutError) as e:
                print(f"mptable_probe: error: {e}", file=sys.stderr)
                return 1
            print(f"{i + 1:>5} {'yes' if with_table else 'no':>8} {'yes' if r['found'] else 'no':>5} "
                  f"{r['scan_phase']:>22.3f} {r['probe']:>9.2f} {r['driver_ok']:>13.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
