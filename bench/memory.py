"""Memory overhead: host RSS of the VMM process beyond its guest RAM, pyvmm vs QEMU on the same idle guest."""

from __future__ import annotations

import time

import common
from common import Result

MIB = 1 << 20
ROUNDS = 3
# The demo scenario with nothing dirtied: the guest boots, starts its balloon driver and waits.
APPEND = "scenario=demo dirty=0"
READY_LINE = r"^balloon: version \d+ features"
SETTLE = 0.5   # seconds after the driver is up, so lazy start-up work is done before we look


def measure(cmd: list[str]) -> dict | None:
    """Start a VM process, wait for the guest's balloon driver, read its smaps, stop it."""
    vm = common.Background(cmd)
    try:
        vm.wait_for(READY_LINE, common.RUN_TIMEOUT)
        time.sleep(SETTLE)
        s = common.smaps_rss(vm.proc.pid)
    finally:
        vm.stop()
    s["overhead"] = s["rss"] - s["ram_rss"]
    s["anon_overhead"] = s["anon"] - s["ram_rss"]
    return s


def run(repeats: int = ROUNDS) -> Result:
    """RSS beyond guest RAM of each VMM running the same idle tiny guest (256 MiB)."""
    res = Result("memory", "Memory overhead: VMM process RSS beyond guest RAM (same idle tiny guest, 256 MiB)")
    common.need_kvm()
    kernel = common.need_guest()
    common.need_pyvmm("pyvmm.virtio.balloon")
    # The same guest with what this wave added switched on: a gdbstub listening, a QMP socket and an HMP
    # socket (the trace stays off, as by default).
    sock = common.RESULTS / "memory-features"
    features = ["-gdb", "tcp:127.0.0.1:0", "-qmp", f"unix:{sock}.qmp,server,nowait",
                "-monitor", f"unix:{sock}.hmp,server,nowait"]
    engines = {"pyvmm": common.pyvmm_cmd(kernel, APPEND, firmware=False),
               "pyvmm with gdbstub, QMP and monitor sockets": common.pyvmm_cmd(kernel, APPEND, firmware=False,
                                                                               extra=features)}
    qemu_missing = common.have(common.need_qemu)
    if qemu_missing:
        res.skipped.append(f"QEMU reference: {qemu_missing}")
    else:
        engines["QEMU"] = common.qemu_cmd(kernel, APPEND)
    failures: dict[str, str] = {}

    def runner(name, cmd):
        def go():
            try:
                return measure(cmd)
            except Exception as e:  # noqa: BLE001 - a failed run is reported in the table, not raised
                failures.setdefault(name, f"{type(e).__name__}: {e}")
                return None
        return go

    got = common.interleave({n: runner(n, c) for n, c in engines.items()}, repeats, "memory", warmup=True)

    def series(engine: str, key: str) -> list[float | None]:
        return [r[key] / MIB if r else None for r in got.get(engine, [])]

    for engine in engines:
        for key, label in (("rss", "process RSS"), ("ram_rss", "guest RAM resident"),
                           ("overhead", "RSS beyond guest RAM"), ("anon_overhead", "anonymous RSS beyond guest RAM"),
                           ("ram_size", "guest RAM mapping size (largest anonymous VMA)")):
            res.add(f"{engine} {label}", "MiB", [v for v in series(engine, key) if v is not None])
    if "QEMU" in engines:
        for engine, suffix in (("pyvmm", ""), ("pyvmm with gdbstub, QMP and monitor sockets", ", features on")):
            for key, label in (("overhead", "RSS beyond guest RAM"),
                               ("anon_overhead", "anonymous RSS beyond RAM")):
                pairs = [(a, b) for a, b in zip(series(engine, key), series("QEMU", key), strict=False) if a and b]
                res.ratio(f"pyvmm / QEMU, {label}{suffix}", [a for a, _ in pairs], [b for _, b in pairs],
                          goal="< 1.0" if key == "overhead" else "")
    for name, why in failures.items():
        res.notes.append(f"{name}: some runs failed ({why})")
    res.notes.append(f"Both read the same way from /proc/PID/smaps {SETTLE} s after the guest's balloon driver "
                     "is up: guest RAM is the largest anonymous mapping (only pages the guest touched are "
                     "resident); RSS beyond it includes the shared libraries each VMM maps (libpython and "
                     "the interpreter heap for pyvmm; QEMU's many libraries); the anonymous line counts only "
                     "private memory. The kernel merges adjacent anonymous VMAs, so the largest one can be slightly "
                     "bigger than guest RAM. pyvmm: `pyvmm run --no-firmware` with its default balloon.")
    return res


if __name__ == "__main__":
    raise SystemExit(common.standalone(run))
