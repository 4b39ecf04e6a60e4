"""Coverage-guided fuzzing of virtio-mmio + balloon (atheris), or a long hypothesis run where atheris is absent.

    python -m tests.fuzz.fuzz_virtio [CORPUS_DIR] [-runs=N | -max_total_time=S] [libFuzzer flags]
"""

import sys

from tests.fuzz.runner import main

if __name__ == "__main__":
    main(sys.argv, "tests.fuzz.harness")
