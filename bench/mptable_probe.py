"""Why Linux's early boot was slower under pyvmm: the MP table it did not find (before/after).

    python bench/mptable_probe.py [--rounds 2]

Linux 6.1 looks for an Intel MP floating pointer in setup_arch() (find_smp_config), with ACPI on or off:
the first KiB of RAM, the last KiB of base memory (the EBDA) and the BIOS area 0xF0000-0xFFFFF, in 16-byte
steps, and its smp_scan_config() maps and unmaps the whole rest of the region with early_memremap() at
every step. QEMU microvm's firmware (qboot) writes an MP table, so the scan stops there; pyvmm wrote none
until pyvmm/arch/x86/mptable.py, so the scan ran to the end of the BIOS area: thousands of early fixmap
updates and TLB flushes, all of it emulated kernel code on a kvm_pvm host. Sampling the vCPU's RIP in that
phase found __early_set_fixmap, __early_ioremap, early_iounmap and flush_tlb_one_kernel.

This probe boots the minimal Linux (ACPI off, 512 MiB, as bench/linux.py does) to DRIVER_OK twice per
round: as pyvmm builds the machine, and with the floating pointer of pyvmm's MP table erased before the
start (the machine as it was before the table), and prints, per boot, the guest clock from `x86/PAT` to
`RAMDISK` (the phase the scan is in), whether Linux found the table, how many CPUs it brought up, and the
wall time to the virtio-mmio probe and to DRIVER_OK. Pass --smp 2 to see the second vCPU appear (ACPI off,
the table is the only place Linux learns of it).
"""

from __future__ import annotations

import argparse
import re
import sys
import time

import common
from common import Unavailable

import linux


def boot(with_table: bool, smp: int) -> dict:
    from pyvmm.arch.x86.layout import EBDA_START as EBDA  # reserved in pyvmm's e820
    from pyvmm.config import VmConfig
    from pyvmm.vm import Machine

    kernel, initrd = linux.linux_files()
    cfg = VmConfig(kernel=kernel, initrd=initrd, memory=512 * linux.MIB, append=linux.linux_append(), acpi=False,
                   smp=smp, mem_prealloc=True, console="none")
    with Machine(cfg) as m:
        if not with_table:
            m.memory.write(EBDA, bytes(16))        # the floating pointer: without it Linux finds no table
        t0 = time.perf_counter()
        m.start()
        m.wait_for_console(linux.PROBE_LINE, linux.BOOT_TIMEOUT)
        probe = time.perf_counter() - t0
        linux._until(lambda: m.balloon_transport.status & linux.DRIVER_OK, linux.BOOT_TIMEOUT - probe)
        driver_ok = time.perf_counter() - t0
        text = m.console_text()
        m.stop(0, "probe done")

    def stamp(pattern: str) -> float:
        found = re.search(r"\[\s*([0-9.]+)\] " + pattern, text)
        return float(found.group(1)) if found else float("nan")

    cpus = re.search(r"smp: Brought up \d+ nodes?, (\d+) CPU", text)
    return {"scan_phase": stamp(r"RAMDISK:") - stamp(r"x86/PAT:"), "found": "found SMP MP-table" in text,
            "cpus": int(cpus.group(1)) if cpus else 0,
            "probe": probe, "driver_ok": driver_ok}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--smp", type=int, default=1)
    a = p.parse_args(argv)
    try:
        common.need_kvm()
        linux.linux_files()
    except Unavailable as e:
        print(f"mptable_probe: not run: {e}")
        return 2
    print(f"{'round':>5} {'MP table':>8} {'found':>5} {'CPUs':>4} {'PAT->RAMDISK (guest s)':>22} {'probe (s)':>9} "
          f"{'DRIVER_OK (s)':>13}")
    for i in range(a.rounds):
        for with_table in (True, False):
            try:
                r = boot(with_table, a.smp)
            except (RuntimeError, TimeoutError) as e:
                print(f"mptable_probe: error: {e}", file=sys.stderr)
                return 1
            print(f"{i + 1:>5} {'yes' if with_table else 'no':>8} {'yes' if r['found'] else 'no':>5} "
                  f"{r['cpus']:>4} "
                  f"{r['scan_phase']:>22.3f} {r['probe']:>9.2f} {r['driver_ok']:>13.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
