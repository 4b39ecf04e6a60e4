"""Exit-cost benchmark: ns per port-I/O write, MMIO read and QueueNotify, pyvmm vs QEMU vs a minimal C VMM."""

from __future__ import annotations

import re
import time
from pathlib import Path

import common
from common import Result, Unavailable

N = 20000
ROUNDS = 5
SCENARIO = "bench"
# The guest's lines: "bench: <name> n=<N> cycles=<total>", timed with rdtsc around each loop.
BENCH_LINE = re.compile(r"^bench: (\w+) n=(\d+) cycles=(\d+)", re.MULTILINE)
LOOPS = {"pio_write": "port-I/O write", "mmio_read": "MMIO read (InterruptStatus)",
         "mmio_notify": "QueueNotify write"}


def parse_guest(text: str, khz: float) -> dict[str, float]:
    """ns per exit of each loop the guest timed (cycles / n / TSC frequency)."""
    return {name: int(cycles) / int(n) * 1e6 / khz for name, n, cycles in BENCH_LINE.findall(text)}


def parse_floor(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"^ns_per_exit (\w+) ([0-9.]+)", text, re.MULTILINE)}


def run(repeats: int = ROUNDS, n: int = N) -> Result:
    """ns per exit of each kind, interleaved rounds of every engine, with per-round ratios."""
    res = Result("exits", f"VM exit cost, ns per exit (guest `scenario=bench n={n}`, rdtsc in the guest)")
    common.need_kvm()
    kernel = common.need_guest()
    khz, khz_source = common.tsc_khz()
    append = f"scenario={SCENARIO} n={n}"
    pyvmm_missing = common.have(lambda: common.need_pyvmm("pyvmm.virtio.balloon"))
    qemu_missing = common.have(common.need_qemu)
    floor_missing = common.have(common.need_floor)

    engines: dict[str, tuple[str, list[str]]] = {}
    if pyvmm_missing:
        res.skipped.append(f"pyvmm (the bench scenario needs the balloon device): {pyvmm_missing}")
    else:
        engines["pyvmm"] = ("pyvmm", common.pyvmm_cmd(kernel, append, firmware=False))
        engines["pyvmm --no-ioeventfd"] = ("pyvmm", common.pyvmm_cmd(kernel, append, firmware=False,
                                                                     ioeventfd=False))
    if qemu_missing:
        res.skipped.append(f"QEMU reference: {qemu_missing}")
    else:
        engines["QEMU"] = ("qemu", common.qemu_cmd(kernel, append))
    if floor_missing:
        res.skipped.append(f"C floor: {floor_missing}")
    if not engines and floor_missing:
        raise Unavailable("; ".join(res.skipped))

    failures: dict[str, str] = {}

    def vm_runner(name: str, engine: str, cmd: list[str]):
        def go():
            out = common.timed_run(cmd)
            got = parse_guest(out.stdout, khz)
            if not common.guest_passed(out, SCENARIO, engine) or not got:
                failures.setdefault(name, f"exit status {out.code}: {out.tail()}")
                return None
            got["wall"] = out.wall
            return got
        return go

    def floor_runner():
        out = common.timed_run([str(common.KVM_FLOOR), "all", str(n)])
        got = parse_floor(out.stdout)
        if out.code != 0 or not got:
            failures.setdefault("C floor", f"exit status {out.code}: {out.tail()}")
            return None
        return got

    runners = {name: vm_runner(name, e, cmd) for name, (e, cmd) in engines.items()}
    if not floor_missing:
        runners["C floor"] = floor_runner
    got = common.interleave(runners, repeats, "exits", warmup=True)

    def series(engine: str, key: str) -> list[float | None]:
        return [r.get(key) if r else None for r in got.get(engine, [])]

    def clean(values: list[float | None]) -> list[float]:
        return [v for v in values if v is not None]

    # Port I/O and MMIO reads take the same path with or without ioeventfd: both pyvmm runs count.
    py_pio = series("pyvmm", "pio_write")
    py_mmio = series("pyvmm", "mmio_read")
    rows = [
        ("pyvmm port-I/O write", py_pio),
        ("pyvmm MMIO read", py_mmio),
        ("pyvmm QueueNotify (ioeventfd)", series("pyvmm", "mmio_notify")),
        ("pyvmm QueueNotify (--no-ioeventfd, in the vCPU thread)", series("pyvmm --no-ioeventfd", "mmio_notify")),
        ("pyvmm --no-ioeventfd port-I/O write", series("pyvmm --no-ioeventfd", "pio_write")),
        ("pyvmm --no-ioeventfd MMIO read", series("pyvmm --no-ioeventfd", "mmio_read")),
        ("QEMU port-I/O write", series("QEMU", "pio_write")),
        ("QEMU MMIO read", series("QEMU", "mmio_read")),
        ("QEMU QueueNotify (its default ioeventfd)", series("QEMU", "mmio_notify")),
        ("C floor port-I/O (KVM_RUN loop only)", series("C floor", "pio")),
        ("C floor MMIO read (KVM_RUN loop only)", series("C floor", "mmio")),
    ]
    for name, values in rows:
        res.add(name, "ns", clean(values))

    def ratio(name: str, a: list, b: list, **kw) -> None:
        pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
        res.ratio(name, [x for x, _ in pairs], [y for _, y in pairs], **kw)

    ratio("pyvmm / floor, port-I/O write", py_pio, series("C floor", "pio"), goal="<= 1.3")
    ratio("pyvmm / floor, MMIO read", py_mmio, series("C floor", "mmio"), goal="<= 1.3")
    ratio("pyvmm / QEMU, port-I/O write", py_pio, series("QEMU", "pio_write"))
    ratio("pyvmm / QEMU, MMIO read", py_mmio, series("QEMU", "mmio_read"))
    ratio("pyvmm / QEMU, QueueNotify (both ioeventfd)", series("pyvmm", "mmio_notify"),
          series("QEMU", "mmio_notify"))
    ratio("QueueNotify ioeventfd / in-thread", series("pyvmm", "mmio_notify"),
          series("pyvmm --no-ioeventfd", "mmio_notify"), goal="< 1.0")
    for name in engines:
        res.add(f"{name} whole run (boot + 3 x {n} exits + exit)", "s", clean(series(name, "wall")))

    for name, why in failures.items():
        res.notes.append(f"{name}: some runs failed ({why})")
    res.notes.append(f"Guest cycles are converted at {khz / 1000:.1f} MHz ({khz_source}). The guest times "
                     f"each loop of {n} exits with rdtsc, interrupts off; the C floor (bench/kvm_floor.c) "
                     "times the same round trip with a guest loop that only exits and a host that only calls "
                     "KVM_RUN again. pyvmm runs here use --no-firmware (the ROM does not touch these loops).")
    res.notes.append("QEMU microvm gives the guest a legacy (version 1) virtio-mmio transport and handles "
                     "QueueNotify through its own ioeventfd; pyvmm gives version 2.")
    return res


def profile(out_dir: Path = common.RESULTS, n: int = N) -> list[Path]:
    """cProfile of in-process pyvmm bench runs (ioeventfd on, and off); top-25 text summaries."""
    common.need_kvm()
    kernel = common.need_guest()
    common.need_pyvmm("pyvmm.virtio.balloon")
    from pyvmm.config import VmConfig
    from pyvmm.vm import Machine

    written = []
    for label, ioeventfd in (("ioeventfd", True), ("no_ioeventfd", False)):
        profiles: list = []
        t0 = time.monotonic()
        with common.profile_threads(profiles):
            m = Machine(VmConfig(kernel=kernel, memory=256 << 20, append=f"scenario={SCENARIO} n={n}",
                                 console="none", firmware=None, ioeventfd=ioeventfd))
            try:
                m.start()
                code = m.wait(common.RUN_TIMEOUT)
            finally:
                m.close()
        took = time.monotonic() - t0
        path = out_dir / f"profile_exits_{label}.txt"
        title = (f"pyvmm exits profile: scenario=bench n={n}, {'with' if ioeventfd else 'without'} ioeventfd "
                 f"(guest exit code {code}, {took:.1f} s under cProfile)")
        common.write_profile(profiles, path, title)
        written.append(path)
    return written


if __name__ == "__main__":
    raise SystemExit(common.standalone(run))
