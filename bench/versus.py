"""This checkout against another commit: same-loop exit cost and tiny-guest boot, interleaved in one run.

    python bench/versus.py REV [--rounds 7]

Two of `make bench`'s ratios, taken with this checkout's pyvmm and with REV's (checked out in a
temporary git worktree, its guest and firmware built there), alternately round by round so drift of a
shared machine lands on both:
- exits: bench/exits.py's "same loop" measure (the C floor's own guest code run by pyvmm, host wall time
  per KVM_RUN) divided by the floor measured just before in the same round. Each side runs in a fresh
  interpreter with its own tree first on sys.path and its own bench/exits.py.
- boot: bench/boot.py's headline, `pyvmm run` of the tiny guest's self-test through the firmware, process
  start to exit, divided by QEMU microvm's run of the same ELF in the same round.
So a change to the exit path or to start-up shows as a change of the ratio, whatever the machine's speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import boot
import common

BOOT_RUNS = 3   # per tree and per round; the round's ratio uses each side's median

# Run inside each tree: its own pyvmm, its own bench/exits.py; prints {loop key: ns per exit}.
PROBE = """
import json, sys
from pathlib import Path
tree, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
sys.path[:0] = [str(tree), str(tree / "bench")]
import exits
got = {}
for loop in exits.SAME_LOOPS:
    value, why = exits.measure_loop(loop, exits.build_loop_elf(loop, out_dir))
    got[loop.key] = value if value is not None else why
print(json.dumps(got))
"""


def measure(tree: Path, out_dir: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(tree), str(out_dir)], capture_output=True, text=True,
                         timeout=common.RUN_TIMEOUT, cwd=str(tree))
    if out.returncode != 0:
        raise RuntimeError(f"{tree}: exit status {out.returncode}: {out.stderr.strip().splitlines()[-1:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    bad = {k: v for k, v in got.items() if not isinstance(v, float)}
    if bad:
        raise RuntimeError(f"{tree}: {bad}")
    return got


def boot_wall(tree: Path | None) -> float:
    """One run of bench/boot.py's tiny-guest self-test: `pyvmm run` from TREE (its own pyvmm, guest and
    firmware), or QEMU microvm on this checkout's guest when TREE is None."""
    if tree is None:
        engine, out = "qemu", common.timed_run(common.qemu_cmd(common.GUEST_ELF, boot.APPEND))
    else:
        cmd = common.pyvmm_cmd(tree / "guest" / "build" / "guest.elf", boot.APPEND, balloon="on")
        engine, out = "pyvmm", common.timed_run(cmd, env={"PYTHONPATH": str(tree)}, cwd=tree)
    if not common.guest_passed(out, boot.SCENARIO, engine):
        raise RuntimeError(f"{tree or 'QEMU microvm'}: exit status {out.code}: {out.tail()}")
    return out.wall


def floor() -> dict[str, float]:
    import exits

    out = common.timed_run([str(common.KVM_FLOOR), "all", str(exits.FLOOR_N)])
    got = exits.parse_floor(out.stdout)
    if out.code != 0 or not got:
        raise RuntimeError(f"kvm_floor: exit status {out.code}: {out.tail()}")
    return got


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rev", help="the commit to compare with (anything `git worktree add` takes)")
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args(argv)
    import exits

    try:
        common.need_kvm()
        common.need_floor()
        common.need_guest()
        common.need_qemu()
    except common.Unavailable as e:
        print(f"versus: not run: {e}")
        return 2
    with tempfile.TemporaryDirectory(prefix="pyvmm-versus-") as tmp:
        old = Path(tmp) / "tree"
        made = subprocess.run(["git", "-C", str(common.ROOT), "worktree", "add", "-q", "--detach", str(old), a.rev],
                              capture_output=True, text=True)
        if made.returncode != 0:
            print(f"versus: error: cannot check out {a.rev!r}: {made.stderr.strip()}")
            return 2
        try:
            for part in ("guest", "firmware"):
                built = subprocess.run(["make", "-s", "-C", str(old / part)], capture_output=True, text=True)
                if built.returncode != 0:
                    print(f"versus: error: {a.rev}: make -C {part} failed: {built.stderr.strip()[-300:]}")
                    return 2
            trees = {a.rev: old, "this checkout": common.ROOT}
            ratios: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
            for i in range(a.rounds):
                print(f"  round {i + 1}/{a.rounds}", file=sys.stderr, flush=True)
                f = floor()
                order = list(trees.items()) if i % 2 == 0 else list(trees.items())[::-1]
                for name, tree in order:
                    got = measure(tree, Path(tmp))
                    for loop in exits.SAME_LOOPS:
                        ratios[name].setdefault(loop.key, []).append(got[loop.key] / f[loop.floor])
                walls: dict[str, list[float]] = {name: [] for name in [*trees, "QEMU"]}
                for _ in range(BOOT_RUNS):
                    for name, tree in order:
                        walls[name].append(boot_wall(tree))
                    walls["QEMU"].append(boot_wall(None))
                q = statistics.median(walls["QEMU"])
                for name in trees:
                    ratios[name].setdefault("boot", []).append(statistics.median(walls[name]) / q)
        except RuntimeError as e:
            print(f"versus: error: {e}")
            return 1
        finally:
            subprocess.run(["git", "-C", str(common.ROOT), "worktree", "remove", "--force", str(old)],
                           capture_output=True)
    print(f"{a.rounds} interleaved rounds, load average {common.loadavg()}")
    print(f"{'ratio':<44} {a.rev:>14} {'this checkout':>14} {'difference':>11}")
    rows = [(f"exits, same loop: {loop.key} / C floor", loop.key) for loop in exits.SAME_LOOPS]
    rows.append(("tiny-guest boot / QEMU microvm", "boot"))
    for label, key in rows:
        o = common.summarize(ratios[a.rev][key])["median"]
        n = common.summarize(ratios["this checkout"][key])["median"]
        print(f"{label:<44} {o:>14.3f} {n:>14.3f} {n - o:>+11.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
