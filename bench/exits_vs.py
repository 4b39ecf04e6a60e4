"""The same-loop exit cost of this checkout against another commit, interleaved in one run.

    python bench/exits_vs.py REV [--rounds 7]

bench/exits.py's "same loop" measure (the C floor's own guest code run by pyvmm, host wall time per
KVM_RUN, divided by the floor measured just before in the same round) taken with this checkout's
pyvmm and with REV's, checked out in a temporary git worktree, alternately round by round so drift of a
shared machine lands on both. Each side runs in a fresh interpreter with its own tree first on
sys.path and its own bench/exits.py, so a change to the exit path shows as a change of the ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import common

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
    except common.Unavailable as e:
        print(f"exits_vs: not run: {e}")
        return 2
    with tempfile.TemporaryDirectory(prefix="pyvmm-exits-vs-") as tmp:
        old = Path(tmp) / "tree"
        made = subprocess.run(["git", "-C", str(common.ROOT), "worktree", "add", "-q", "--detach", str(old), a.rev],
                              capture_output=True, text=True)
        if made.returncode != 0:
            print(f"exits_vs: error: cannot check out {a.rev!r}: {made.stderr.strip()}")
            return 2
        try:
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
        finally:
            subprocess.run(["git", "-C", str(common.ROOT), "worktree", "remove", "--force", str(old)],
                           capture_output=True)
    print(f"same-loop exit cost / C floor, {a.rounds} interleaved rounds, load average {common.loadavg()}")
    print(f"{'loop':<16} {a.rev:>14} {'this checkout':>14} {'difference':>11}")
    for loop in exits.SAME_LOOPS:
        o = common.summarize(ratios[a.rev][loop.key])["median"]
        n = common.summarize(ratios["this checkout"][loop.key])["median"]
        print(f"{loop.key:<16} {o:>14.3f} {n:>14.3f} {n - o:>+11.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
