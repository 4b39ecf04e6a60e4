"""The short fuzz run of `make test`: hypothesis over the harness, the regression corpus, and atheris over the
virtio device model and the Multiboot loader."""

import os
import pathlib
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.harness import run_one

HERE = pathlib.Path(__file__).parent.parent / "fuzz"
ROOT = HERE.parent.parent  # the repository


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=1500))
def test_harness_on_random_programs(data):
    run_one(data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([0x22, 0x26, 0x23, 0x20, 0x3E]), st.binary(max_size=800))
def test_harness_from_an_initialised_device(head, rest):
    run_one(bytes([head]) + rest)


def test_regression_corpus():
    files = sorted(p for p in (HERE / "regressions").iterdir() if p.is_file() and p.name != "README.md")
    assert files, "the regression corpus is empty"
    for path in files:
        run_one(path.read_bytes())


# Inputs per target in the short run: the cheap parsers get more, the kernel and ROM loaders (a file
# written and parsed per input) fewer; `make fuzz` runs each for FUZZ_SECONDS.
SHORT_RUNS = {"virtio": 1500, "qmp": 1500, "hmp": 1000, "options": 1500, "elf": 600, "bzimage": 600,
              "firmware": 400, "tracefile": 600, "multiboot": 1500, "rsp": 3000}


@pytest.mark.parametrize("target", sorted(SHORT_RUNS))
def test_coverage_guided_short_run(tmp_path, target):
    """A short run of each target through the fuzzer's entry point (atheris if installed, else hypothesis)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    runs = SHORT_RUNS[target]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.fuzz", target, str(tmp_path / "corpus"), f"-runs={runs}", "-seed=7"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert f"fuzz: {runs} inputs ran" in out
