"""What `pyvmm kvmtrace` costs the VMM it traces: exits per second of the tiny guest's scenario=bench loops
(rdtsc in the guest) under pyvmm untraced and traced, interleaved round by round.

    .venv/bin/python bench/kvmtrace.py [--repeats 5] [--n 5000]

The traced configurations: the default (a seccomp filter stops the VMM only at KVM ioctls) with only the
summary, the same writing every exit as JSON, and --no-seccomp (every system call stops, as with -p).
Also runs QEMU microvm traced and untraced when QEMU is installed.  Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from exits import BENCH_LINE  # noqa: E402

LOOPS = ("pio_write", "mmio_read")


def exits_per_second(text: str, khz: float) -> dict[str, float]:
    """Exits per second of each loop the guest timed: n / (cycles / TSC frequency)."""
    return {name: int(n) / (int(cycles) / (khz * 1000)) for name, n, cycles in BENCH_LINE.findall(text)
            if name in LOOPS}


def configurations(n: int) -> dict[str, list[str]]:
    append = f"scenario=bench n={n}"
    vmm = common.pyvmm_cmd(common.GUEST_ELF, append, firmware=False)
    trace = [common.PYTHON, "-m", "pyvmm", "kvmtrace"]
    out = {
        "pyvmm untraced": vmm,
        "pyvmm, kvmtrace --summary": [*trace, "--summary", "--", *vmm],
        "pyvmm, kvmtrace --json -o FILE": [*trace, "--json", "-o", os.devnull, "--", *vmm],
        "pyvmm, kvmtrace --summary --no-seccomp (as -p)": [*trace, "--summary", "--no-seccomp", "--", *vmm],
    }
    if common.have(common.need_qemu) is None:
        q = common.qemu_cmd(common.GUEST_ELF, append)
        out["QEMU untraced"] = q
        out["QEMU, kvmtrace --summary"] = [*trace, "--summary", "--", *q]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=5000, help="exits per loop in the guest")
    args = ap.parse_args()
    common.need_kvm()
    common.need_guest()
    khz, source = common.tsc_khz()
    configs = configurations(args.n)
    results: dict[str, dict[str, list[float]]] = {name: {loop: [] for loop in LOOPS} for name in configs}
    for _ in range(args.repeats):
        for name, cmd in configs.items():        # interleaved: drift on a shared machine falls on all
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                                 cwd=common.ROOT)
            rates = exits_per_second(res.stdout, khz)
            for loop in LOOPS:
                if loop in rates:
                    results[name][loop].append(rates[loop])
    print(f"tiny guest scenario=bench n={args.n}, {args.repeats} rounds, TSC {khz / 1000:.0f} MHz ({source}); "
          f"load {os.getloadavg()[0]:.2f}")
    print("| configuration | port-I/O write exits/s | MMIO read exits/s | slowdown (port I/O) |")
    print("|---|---:|---:|---:|")
    base = {}
    for name, per_loop in results.items():
        med = {loop: statistics.median(v) if v else float("nan") for loop, v in per_loop.items()}
        if name.endswith("untraced"):
            base[name.split()[0]] = med["pio_write"]
        ref = base.get(name.split()[0].rstrip(","))
        slow = f"{ref / med['pio_write']:.1f}x" if ref and not name.endswith("untraced") else "-"
        print(f"| {name} | {med['pio_write']:,.0f} | {med['mmio_read']:,.0f} | {slow} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
