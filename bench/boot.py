"""Tiny-guest boot benchmark: wall time from process start to exit, pyvmm (firmware, direct) vs QEMU microvm."""

from __future__ import annotations

import io
import json
import re
import statistics
from pathlib import Path

import common
from common import Result, Unavailable

SCENARIO = "selftest"
APPEND = f"scenario={SCENARIO}"
ROUNDS = 10
SPLIT_ROUNDS = 3

# Run inside a fresh interpreter: `pyvmm run` exactly as the CLI does it, with timestamps
# (CLOCK_MONOTONIC, shared by all processes) at the phase boundaries, printed as JSON on stderr.
_SPLIT_CHILD = r"""
import time
t_main = time.monotonic()
import json, sys
import pyvmm.vm as vm
import pyvmm.builder as builder
from pyvmm.cli import main
t_imported = time.monotonic()
marks = {}
_build_vm = builder.build_vm
def build_vm(cfg):
    marks["building"] = time.monotonic()
    return _build_vm(cfg)
builder.build_vm = build_vm
_close = vm.Machine.close
def close(self):
    marks.update(built=self.start_time, started=self.guest_start_time, stopped=time.monotonic())
    _close(self)
    marks["closed"] = time.monotonic()
vm.Machine.close = close
code = main(sys.argv[1:])
marks.update(main=t_main, imported=t_imported, returned=time.monotonic())
sys.stderr.write("BOOTSPLIT " + json.dumps(marks) + "\n")
sys.exit(code)
"""


def _split_run(cmd: list[str]) -> dict | None:
    """One instrumented `pyvmm run`: the phases in seconds, or None if the run failed."""
    out = common.timed_run([common.PYTHON, "-c", _SPLIT_CHILD, *cmd[3:]])
    m = re.search(r"^BOOTSPLIT (\{.*\})$", out.stderr, re.MULTILINE)
    if not common.guest_passed(out, SCENARIO, "pyvmm") or not m:
        return None
    t = json.loads(m.group(1))
    if t.get("started") is None:
        return None
    end = out.launched + out.wall
    return {
        "interpreter start-up": t["main"] - out.launched,
        "imports (pyvmm.cli, pyvmm.vm, pyvmm.builder)": t["imported"] - t["main"],
        "CLI and config (arguments, VmConfig)": t["building"] - t["imported"],
        "build_vm (KVM, RAM, ELF, ROM, devices; their imports)": t["built"] - t["building"],
        "start() (threads, terminal, signals)": t["started"] - t["built"],
        "guest running (start() to stop)": t["stopped"] - t["started"],
        "teardown and interpreter exit": end - t["stopped"],
    }


def _import_times(cmd: list[str]) -> list[tuple[str, float]]:
    """`python -X importtime` of one run: the top-level packages by cumulative import time (ms)."""
    out = common.timed_run([common.PYTHON, "-X", "importtime", *cmd[1:]])
    per_pkg: dict[str, float] = {}
    total = 0.0
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        cumulative, indent, name = int(m.group(1)), len(m.group(2)), m.group(3)
        if indent == 1:        # a top-level import: its cumulative time counts once
            total += cumulative / 1000
            top = name.split(".")[0]
            per_pkg[top] = per_pkg.get(top, 0.0) + cumulative / 1000
    ranked = sorted(per_pkg.items(), key=lambda kv: -kv[1])
    return [("(all imports)", total), *ranked[:6]]


def run(repeats: int = ROUNDS) -> Result:
    """Boot the tiny guest to its exit; median wall time of each engine over interleaved rounds."""
    res = Result("boot", f"Tiny-guest boot, process start to exit (`scenario={SCENARIO}`, 256 MiB)")
    common.need_kvm()
    kernel = common.need_guest()
    common.need_pyvmm()
    fw_missing = common.have(common.need_firmware)
    qemu_missing = common.have(common.need_qemu)

    # The CLI as a user runs it; the balloon stays on (pyvmm's default) when the device exists, and
    # QEMU gets a virtio-balloon too, so both build the same machine.
    balloon_missing = common.have(lambda: common.need_pyvmm("pyvmm.virtio.balloon"))
    balloon = "off" if balloon_missing else "on"
    if balloon_missing:
        res.notes.append(f"pyvmm ran with --balloon off and QEMU without virtio-balloon: {balloon_missing}")
    variants = {}
    if not fw_missing:
        variants["pyvmm (firmware)"] = common.pyvmm_cmd(kernel, APPEND, balloon=balloon)
    else:
        res.skipped.append(f"pyvmm with firmware: {fw_missing}")
    variants["pyvmm --no-firmware"] = common.pyvmm_cmd(kernel, APPEND, firmware=False, balloon=balloon)
    if not qemu_missing:
        variants["QEMU microvm"] = common.qemu_cmd(kernel, APPEND, balloon=not balloon_missing)
    else:
        res.skipped.append(f"QEMU reference: {qemu_missing}")

    def runner(name: str, cmd: list[str]):
        engine = "qemu" if name.startswith("QEMU") else "pyvmm"

        def go():
            out = common.timed_run(cmd)
            if not common.guest_passed(out, SCENARIO, engine):
                failures.setdefault(name, f"exit status {out.code}: {out.tail()}")
                return None
            return out.wall
        return go

    failures: dict[str, str] = {}
    walls = common.interleave({n: runner(n, c) for n, c in variants.items()}, repeats, "boot", warmup=True)
    ms = {n: [w * 1000 for w in v if w is not None] for n, v in walls.items()}
    for name in variants:
        res.add(f"{name} wall time", "ms", ms[name])
    for name, why in failures.items():
        res.notes.append(f"{name}: some runs failed ({why})")

    def paired(a: str, b: str) -> tuple[list[float], list[float]]:
        pairs = [(x, y) for x, y in zip(walls.get(a, []), walls.get(b, []), strict=False) if x and y]
        return [x for x, _ in pairs], [y for _, y in pairs]

    if "QEMU microvm" in walls:
        for name in variants:
            if name.startswith("pyvmm"):
                res.ratio(f"{name} / QEMU", *paired(name, "QEMU microvm"), goal="<= 1.0")
    if "pyvmm (firmware)" in walls:
        a, b = paired("pyvmm (firmware)", "pyvmm --no-firmware")
        res.add("firmware path extra cost (firmware - direct, same round)", "ms",
                [(x - y) * 1000 for x, y in zip(a, b, strict=False)])

    # Where pyvmm's time goes: a few instrumented runs of the direct path, and one -X importtime run.
    split_cmd = variants.get("pyvmm (firmware)", variants["pyvmm --no-firmware"])
    splits = [s for s in (_split_run(split_cmd) for _ in range(SPLIT_ROUNDS)) if s]
    if splits:
        for phase in splits[0]:
            res.add(f"pyvmm split: {phase}", "ms", [s[phase] * 1000 for s in splits])
    else:
        res.notes.append("pyvmm's phase split could not be measured (the instrumented runs failed)")
    imports = _import_times(split_cmd)
    if imports and imports[0][1] > 0:
        res.notes.append("`python -X importtime` of one pyvmm run (cumulative ms; measured with the tracing "
                         "overhead of -X importtime): " + ", ".join(f"{n} {t:.1f}" for n, t in imports))
    res.notes.append("Wall time is fork/exec to reaping the process, taken by the benchmark's own process; "
                     "the guest boots, runs its self-test (printf, command line, allocator, a LAPIC timer "
                     "tick) and exits through port 0xf4. One uncounted warm-up round first; pyvmm runs from "
                     "cached bytecode (bench/build/pycache), as an installed pyvmm does.")
    if splits:
        guest = statistics.median(s["guest running (start() to stop)"] for s in splits)
        total = statistics.median(sum(s.values()) for s in splits)
        res.notes.append(f"In the instrumented runs the guest ran {guest * 1000:.0f} ms of {total * 1000:.0f} ms "
                         f"(medians); the other {(total - guest) * 1000:.0f} ms is pyvmm's own start-up and "
                         "exit (the phases above), which QEMU, a C program, mostly does not pay.")
    return res


def profile(out_dir: Path = common.RESULTS) -> list[Path]:
    """cProfile of one `pyvmm run` process (main thread: start-up, imports, build, wait, teardown)."""
    import pstats

    common.need_kvm()
    kernel = common.need_guest()
    common.need_pyvmm()
    balloon = "off" if common.have(lambda: common.need_pyvmm("pyvmm.virtio.balloon")) else "on"
    cmd = common.pyvmm_cmd(kernel, APPEND, balloon=balloon)
    out_dir.mkdir(parents=True, exist_ok=True)
    prof = out_dir / "profile_boot.prof"
    # cProfile writes its file when the profiled code returns; `python -m pyvmm` leaves through
    # os._exit() (cli.entry), so profile main() itself, as the phase split does.
    prof.unlink(missing_ok=True)
    child = ("import sys, cProfile\nfrom pyvmm.cli import main\n"
             f"cProfile.run('code = main(sys.argv[1:])', {str(prof)!r})\n")
    out = common.timed_run([common.PYTHON, "-c", child, *cmd[3:]])
    path = out_dir / "profile_boot.txt"
    if not prof.exists():
        path.write_text(f"pyvmm boot profile: the profiled run failed (exit status {out.code}): {out.tail()}\n")
        return [path]
    stats = pstats.Stats(str(prof), stream=io.StringIO())
    title = (f"pyvmm boot profile: `pyvmm run guest.elf --append {APPEND}` under cProfile, main thread only "
             f"(start-up, imports, build_vm, waiting for the guest, teardown); {out.wall * 1000:.0f} ms")
    buf = stats.stream
    buf.write(f"{title}\n{'=' * len(title)}\n\n--- top 25 by cumulative time ---\n")
    stats.sort_stats("cumulative").print_stats(25)
    buf.write("\n--- top 25 by own time (tottime) ---\n")
    stats.sort_stats("tottime").print_stats(25)
    path.write_text(buf.getvalue().replace(str(common.ROOT) + "/", ""))
    return [path]


def main() -> int:
    try:
        return common.standalone(run)
    except Unavailable as e:
        print(f"benchmark not run: {e}")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
