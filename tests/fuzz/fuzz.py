"""Coverage-guided fuzzing of one target of tests/fuzz/targets.py (atheris), or hypothesis where atheris is absent.

    python -m tests.fuzz.fuzz TARGET [CORPUS_DIR] [-runs=N | -max_total_time=S] [libFuzzer flags]

TARGET is one of virtio, qmp, hmp, options, elf, bzimage, firmware, tracefile, multiboot.  Inputs that fail are
written by libFuzzer as crash-* files; copy the virtio ones into tests/fuzz/regressions/ so the test
suite replays them forever.  The last line printed says how many inputs ran.
"""

from __future__ import annotations

import logging
import os
import sys
import time

logging.disable(logging.CRITICAL)   # guest-error lines are the expected output of hostile input

_count = 0
_t0 = time.monotonic()


def _report() -> None:
    print(f"fuzz: {_count} inputs ran in {time.monotonic() - _t0:.1f} s, no failure", flush=True)


def _atheris_main(target: str, argv: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["pyvmm"]):
        from tests.fuzz.targets import TARGETS
    run_one = TARGETS[target]

    runs = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("-runs=")), None)
    deadline = next((float(a.split("=", 1)[1]) for a in argv if a.startswith("-max_total_time=")), None)

    def one_input(data: bytes) -> None:
        global _count
        run_one(data)
        _count += 1
        # libFuzzer leaves through exit() without running Python's atexit, so report on the way.
        if (runs is not None and _count == runs) or _count % 100_000 == 0 or (
                deadline is not None and time.monotonic() - _t0 >= deadline - 1 and _count % 1000 == 0):
            _report()

    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def _hypothesis_main(target: str, argv: list[str]) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.fuzz.targets import TARGETS

    run_one = TARGETS[target]

    runs = next((int(a.split("=", 1)[1]) for a in argv if a.startswith("-runs=")), 20_000)
    corpus = next((a for a in argv[1:] if not a.startswith("-")), None)
    db = None
    if corpus:
        from hypothesis.database import DirectoryBasedExampleDatabase
        os.makedirs(corpus, exist_ok=True)
        db = DirectoryBasedExampleDatabase(corpus)

    @settings(max_examples=runs, deadline=None, database=db, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=4096))
    def fuzz(data: bytes) -> None:
        global _count
        run_one(data)
        _count += 1

    fuzz()
    _report()


# The names of tests/fuzz/targets.py's TARGETS, spelled out here: importing that module before atheris
# instruments it would leave every pyvmm module it loads without coverage feedback.
TARGET_NAMES = ("virtio", "qmp", "hmp", "options", "elf", "bzimage", "firmware", "tracefile", "multiboot", "rsp")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGET_NAMES:
        sys.stderr.write(f"usage: python -m tests.fuzz.fuzz {{{','.join(TARGET_NAMES)}}} [CORPUS] [-runs=N]\n")
        sys.exit(2)
    target, argv = argv[1], [argv[0], *argv[2:]]
    for path in [a for a in argv[1:] if not a.startswith("-")]:
        os.makedirs(path, exist_ok=True)
    print(f"fuzz: target {target}", flush=True)
    if os.environ.get("PYVMM_FUZZ_ENGINE") != "hypothesis":
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("fuzz: atheris is not installed; using hypothesis", flush=True)
        else:
            _atheris_main(target, argv)
            return
    _hypothesis_main(target, argv)


if __name__ == "__main__":
    main(sys.argv)
