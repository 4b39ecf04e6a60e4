"""Coverage-guided fuzzing of virtio-mmio + balloon (atheris), or a long hypothesis run where atheris is absent.

    python -m tests.fuzz.fuzz_virtio [CORPUS_DIR] [-runs=N | -max_total_time=S] [libFuzzer flags]

Inputs that fail are written by libFuzzer as crash-* files; copy them into tests/fuzz/regressions/ so
the test suite replays them forever.  The last line printed says how many inputs ran.
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


def _harness(name: str):
    import importlib

    return importlib.import_module(name).run_one


def _atheris_main(argv: list[str], harness: str, instrument: str) -> None:
    import atheris

    with atheris.instrument_imports(include=[instrument]):
        run_one = _harness(harness)

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


def _hypothesis_main(argv: list[str], harness: str) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    run_one = _harness(harness)

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


def main(argv: list[str], harness: str = "tests.fuzz.harness", instrument: str = "pyvmm") -> None:
    """Fuzz ``harness``'s run_one, instrumenting the modules under ``instrument`` for coverage."""
    for path in [a for a in argv[1:] if not a.startswith("-")]:
        os.makedirs(path, exist_ok=True)
    if os.environ.get("PYVMM_FUZZ_ENGINE") != "hypothesis":
        try:
            import atheris  # noqa: F401
        except ImportError:
            print("fuzz: atheris is not installed; using hypothesis", flush=True)
        else:
            _atheris_main(argv, harness, instrument)
            return
    _hypothesis_main(argv, harness)


if __name__ == "__main__":
    main(sys.argv)
