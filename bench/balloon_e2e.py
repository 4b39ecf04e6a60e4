"""Balloon end to end: the tiny guest dirties 192 MiB of 256 MiB, target 64 MiB and back; pyvmm vs QEMU."""

from __future__ import annotations

import os
import time
from pathlib import Path

import common
from common import Result

MIB = 1 << 20
RAM = 256 * MIB
DIRTY = 192 * MIB
LOW = 64 * MIB
ROUNDS = 3
POLL = 0.005          # both engines are polled at the same interval
APPEND = f"scenario=demo dirty={DIRTY >> 20}M"
DIRTY_LINE = r"(?m)^dirty: \d+ pages"
READY_LINE = r"(?m)^balloon: version \d+ features"
TARGET_TIMEOUT = 120.0


def _until(done, timeout: float = TARGET_TIMEOUT) -> float | None:
    """Seconds until done() holds, polling every POLL seconds; None on timeout."""
    t0 = time.perf_counter()
    while not done():
        if time.perf_counter() - t0 > timeout:
            return None
        time.sleep(POLL)
    return time.perf_counter() - t0


def pyvmm_cycle(kernel: Path) -> dict:
    """One pyvmm run in this process through the Python API; times in s, sizes in bytes."""
    from pyvmm.config import VmConfig
    from pyvmm.vm import Machine

    m = Machine(VmConfig(kernel=kernel, memory=RAM, append=APPEND, console="none", firmware=None))
    try:
        t0 = time.perf_counter()
        m.start()
        m.wait_for_console(DIRTY_LINE, TARGET_TIMEOUT)
        t_dirty = time.perf_counter() - t0
        m.wait_for_console(READY_LINE, TARGET_TIMEOUT)
        b = m.balloon
        time.sleep(0.1)     # the driver finishes DRIVER_OK and primes its queues
        rss0 = b.info().guest_ram_rss
        want = (RAM - LOW) >> 12
        b.set_target(LOW)
        t_in = _until(lambda: b.actual == want)
        rss1 = b.info().guest_ram_rss
        b.set_target(RAM)
        t_out = _until(lambda: b.actual == 0)
        rss2 = b.info().guest_ram_rss
        return {"dirty": t_dirty, "inflate": t_in, "deflate": t_out, "rss_before": rss0,
                "rss_inflated": rss1, "rss_deflated": rss2}
    finally:
        m.stop(0, "benchmark done")
        m.close()


def qemu_cycle(kernel: Path) -> dict:
    """The same cycle under QEMU microvm, driven through QMP `balloon` / `query-balloon`."""
    sock = common.qmp_socket_path("balloon")
    if os.path.exists(sock):
        os.unlink(sock)
    vm = common.Background(common.qemu_cmd(kernel, APPEND, extra=["-qmp", f"unix:{sock},server=on,wait=off"]))
    q = None
    try:
        t0 = time.perf_counter()
        vm.wait_for(DIRTY_LINE, TARGET_TIMEOUT)
        t_dirty = time.perf_counter() - t0
        vm.wait_for(READY_LINE, TARGET_TIMEOUT)
        q = common.qmp_connect(sock)
        time.sleep(0.1)
        pid = vm.proc.pid

        def actual() -> int:
            return q.cmd_obj({"execute": "query-balloon"})["return"]["actual"]

        rss0 = common.smaps_rss(pid)["ram_rss"]
        q.cmd_obj({"execute": "balloon", "arguments": {"value": LOW}})
        t_in = _until(lambda: actual() == LOW)
        rss1 = common.smaps_rss(pid)["ram_rss"]
        q.cmd_obj({"execute": "balloon", "arguments": {"value": RAM}})
        t_out = _until(lambda: actual() == RAM)
        rss2 = common.smaps_rss(pid)["ram_rss"]
        return {"dirty": t_dirty, "inflate": t_in, "deflate": t_out, "rss_before": rss0,
                "rss_inflated": rss1, "rss_deflated": rss2}
    finally:
        common.qmp_quit(q)
        vm.stop()
        if os.path.exists(sock):
            os.unlink(sock)


def run(repeats: int = ROUNDS) -> Result:
    """Inflate 192 MiB and deflate it again, pyvmm and QEMU interleaved; time and host RSS."""
    res = Result("balloon_e2e", f"Balloon end to end: guest dirties {DIRTY >> 20} MiB of {RAM >> 20} MiB, "
                 f"target {LOW >> 20} MiB and back")
    common.need_kvm()
    kernel = common.need_guest()
    common.need_pyvmm("pyvmm.virtio.balloon", "pyvmm.hoststat")
    qemu_missing = common.have(common.need_qemu) or common.have(common.need_qmp)
    runners, failures = common.reference_runners(res, pyvmm_cycle, qemu_cycle, qemu_missing, kernel)
    got = common.interleave(runners, repeats, "balloon")

    def series(engine: str, key: str, scale: float = 1.0) -> list[float | None]:
        return [(r[key] * scale if r.get(key) is not None else None) if r else None for r in got.get(engine, [])]

    def clean(v):
        return [x for x in v if x is not None]

    moved = (RAM - LOW) / MIB
    for engine in runners:
        res.add(f"{engine} inflate {RAM >> 20} -> {LOW >> 20} MiB (time to `actual`)", "ms",
                clean(series(engine, "inflate", 1000)))
        res.add(f"{engine} deflate {LOW >> 20} -> {RAM >> 20} MiB", "ms", clean(series(engine, "deflate", 1000)))
        res.add(f"{engine} inflate rate", "MiB/s", [moved / t for t in clean(series(engine, "inflate")) if t])
        before = series(engine, "rss_before", 1 / MIB)
        after = series(engine, "rss_inflated", 1 / MIB)
        res.add(f"{engine} guest-RAM RSS before inflate", "MiB", clean(before))
        res.add(f"{engine} guest-RAM RSS after inflate", "MiB", clean(after))
        res.add(f"{engine} RSS drop on inflate", "MiB",
                [a - b for a, b in zip(before, after, strict=False) if a is not None and b is not None])
        res.add(f"{engine} guest-RAM RSS after deflate", "MiB", clean(series(engine, "rss_deflated", 1 / MIB)))
        res.add(f"{engine} boot + dirty {DIRTY >> 20} MiB", "ms", clean(series(engine, "dirty", 1000)))
    if "QEMU" in runners:
        for step, goal in (("inflate", "<= 1.0"), ("deflate", "")):
            pairs = [(a, b) for a, b in zip(series("pyvmm", step), series("QEMU", step), strict=False) if a and b]
            res.ratio(f"pyvmm / QEMU, {step} time", [a for a, _ in pairs], [b for _, b in pairs], goal=goal)
    for name, why in failures.items():
        res.notes.append(f"{name}: some runs failed ({why})")
    res.notes.append(f"Times run from the host's request (pyvmm `set_target`, QMP `balloon`) until the driver's "
                     f"`actual` matches, both polled every {POLL * 1000:.0f} ms (pyvmm: the device's `actual`; "
                     "QEMU: `query-balloon`). pyvmm runs in the benchmark's process through the Python API, "
                     "direct PVH entry; QEMU is a separate process. Guest-RAM RSS: pyvmm by mincore(2) on its "
                     "RAM mapping (pyvmm.hoststat), QEMU from /proc/PID/smaps (its largest anonymous mapping).")
    res.notes.append("The guest posts PFNs in batches of up to 256 per buffer; pyvmm merges each batch into "
                     "runs and discards each run with one madvise(MADV_DONTNEED); QEMU discards page by page. "
                     "Linux's own driver is measured by bench/linux.py (see its section).")
    return res


def profile(out_dir: Path = common.RESULTS) -> list[Path]:
    """cProfile of one in-process pyvmm balloon cycle (inflate to 64 MiB and back)."""
    common.need_kvm()
    kernel = common.need_guest()
    common.need_pyvmm("pyvmm.virtio.balloon", "pyvmm.hoststat")
    profiles: list = []
    t0 = time.monotonic()
    with common.profile_threads(profiles):
        r = pyvmm_cycle(kernel)
    took = time.monotonic() - t0
    path = out_dir / "profile_balloon.txt"
    common.write_profile(profiles, path, f"pyvmm balloon profile: {APPEND}, target {LOW >> 20} MiB and back "
                         f"(inflate {r['inflate']:.2f} s, deflate {r['deflate']:.2f} s, {took:.1f} s in all "
                         "under cProfile)")
    return [path]


if __name__ == "__main__":
    raise SystemExit(common.standalone(run))
