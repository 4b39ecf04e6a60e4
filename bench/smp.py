"""vCPU scaling: total exits per second with two vCPUs making device exits at once, against one vCPU.

Both sides run bench/kvm_floor.c's port-I/O loop (`mov $PORT,%dx; 1: out %al,(%dx); jmp 1b`) on every vCPU
of one VM. The C floor (`kvm_floor smp`) gives each vCPU a thread that only calls KVM_RUN again; pyvmm runs
the same code from a PVH ELF (bench/exits.py assembles it) with `--smp 2`, the loop aimed at the 16550's
scratch register so that every exit goes through the serial device's write(). The application processors
do not wait for INIT/SIPI here: before the start, this benchmark gives them the boot processor's entry
registers and makes them runnable (KVM_SET_REGS/SREGS/MP_STATE through pyvmm's own vCPU fds), as the floor
does, so the figure is the exit path's and not a guest's SMP start-up.

The ratio that matters is (2 vCPUs) / (1 vCPU) of total exits/s: 2.0 is perfect scaling; the GIL
serialises the Python part of every exit, so pyvmm's ratio falls below the floor's by about as much as the
exit path spends holding it. QEMU is not measured: the tiny guest starts no APs, so QEMU would need a guest
SMP start-up this benchmark does not have.
"""

from __future__ import annotations

import re
import time

import common
from common import Result
from exits import SAME_LOOPS, build_loop_elf

ROUNDS = 5
FLOOR_N = 40000
WARMUP = 0.1
SECONDS = 0.5
LOOP = next(loop for loop in SAME_LOOPS if loop.key == "pio_serial")


def measure_pyvmm(elf, smp: int, seconds: float = SECONDS) -> float:
    """Total exits/s of a pyvmm VM whose `smp` vCPUs all run the loop (in this process)."""
    from pyvmm.config import VmConfig
    from pyvmm.kvm.abi import KvmMpState
    from pyvmm.vm import Machine

    m = Machine(VmConfig(kernel=elf, memory=64 << 20, console="none", firmware=None, smp=smp))
    try:
        bsp = m.vcpus[0].fd
        regs, sregs = bsp.get_regs(), bsp.get_sregs()
        for v in m.vcpus[1:]:
            v.fd.set_sregs(sregs)
            v.fd.set_regs(regs)
            v.fd.set_mp_state(KvmMpState.RUNNABLE)
        m.start()
        time.sleep(WARMUP)
        e0, t0 = sum(v.exits for v in m.vcpus), time.perf_counter()
        time.sleep(seconds)
        t1 = time.perf_counter()
        e1 = sum(v.exits for v in m.vcpus)
        per_cpu = [v.exits for v in m.vcpus]
        state = m.status()
        m.stop()
        m.wait(common.RUN_TIMEOUT)
    finally:
        m.close()
    if state != "running" or min(per_cpu) == 0:
        raise RuntimeError(f"the VM was {state}, exits per vCPU {per_cpu} ({m.stop_reason})")
    return (e1 - e0) / (t1 - t0)


def measure_floor(threads: int) -> dict[int, float]:
    out = common.timed_run([str(common.KVM_FLOOR), "smp", str(FLOOR_N), str(threads)])
    got = {int(t): float(v) for t, v in re.findall(r"^exits_per_s pio (\d+) ([0-9.]+)", out.stdout, re.M)}
    if out.code != 0 or 1 not in got or threads not in got:
        raise RuntimeError(f"kvm_floor smp: exit status {out.code}: {out.tail()}")
    return got


def run(repeats: int = ROUNDS, smp: int = 2) -> Result:
    res = Result("smp", f"vCPU scaling: total exits/s with {smp} vCPUs running the port-I/O loop at once, "
                 "against one vCPU (the C floor's loop; pyvmm through the serial device)")
    common.need_kvm()
    floor_missing = common.have(common.need_floor)
    elf = build_loop_elf(LOOP)

    def pyvmm_runner():
        return {1: measure_pyvmm(elf, 1), smp: measure_pyvmm(elf, smp)}

    runners = {"pyvmm": pyvmm_runner}
    if floor_missing:
        res.skipped.append(f"C floor: {floor_missing}")
    else:
        runners["C floor"] = lambda: measure_floor(smp)
    got = common.interleave(runners, repeats, "smp", warmup=True)

    def series(engine: str, k: int) -> list[float]:
        return [r[k] for r in got.get(engine, []) if r]

    for engine in runners:
        res.add(f"{engine}: exits/s, 1 vCPU", "1/s", series(engine, 1))
        res.add(f"{engine}: exits/s, {smp} vCPUs (total)", "1/s", series(engine, smp))
        res.ratio(f"{engine}: {smp} vCPUs / 1 vCPU, total exits/s", series(engine, smp), series(engine, 1),
                  goal=">= 1.7" if engine == "pyvmm" else "")
    if "C floor" in runners:
        res.ratio(f"pyvmm / C floor, {smp}-vCPU scaling ratio",
                  [a / b for a, b in zip(series("pyvmm", smp), series("pyvmm", 1), strict=False)],
                  [a / b for a, b in zip(series("C floor", smp), series("C floor", 1), strict=False)])
    res.notes.append(f"pyvmm: {SECONDS} s windows after {WARMUP} s of warm-up, in this process "
                     f"(`Machine(VmConfig(smp={smp}, firmware=None))`); the C floor: {FLOOR_N} round trips per "
                     "thread after 1000 of warm-up. Both need a machine with at least as many idle cores as "
                     "vCPUs: on a loaded one the ratio measures the load.")
    return res


if __name__ == "__main__":
    raise SystemExit(common.standalone(run))
