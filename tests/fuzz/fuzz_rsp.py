"""Coverage-guided fuzzing of the gdbstub's protocol (atheris), or a long hypothesis run where atheris is absent.

    python -m tests.fuzz.fuzz_rsp [CORPUS_DIR] [-runs=N | -max_total_time=S] [libFuzzer flags]

The same driver as tests/fuzz/fuzz_virtio.py, over tests/fuzz/rsp_harness.py; the last line printed
says how many inputs ran.
"""

from __future__ import annotations

import logging
import sys

from tests.fuzz import fuzz_virtio

logging.disable(logging.CRITICAL)


def main(argv: list[str]) -> None:
    fuzz_virtio.main(argv, harness="tests.fuzz.rsp_harness", instrument="pyvmm.debug")


if __name__ == "__main__":
    main(sys.argv)
