"""The initramfs's own programs (linux/*.c) built and run on the host: the answers the Linux tests and
bench/linux_cycle.py parse, pinned here where a run takes a second instead of a boot."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build(tmp_path: Path, name: str) -> Path:
    exe = tmp_path / name
    subprocess.run(["gcc", "-Os", "-static", "-Wall", "-Werror", "-o", str(exe), str(ROOT / "linux" / f"{name}.c")],
                   check=True)
    return exe


def test_memhog_allocates_verifies_and_frees(tmp_path):
    out = subprocess.run([str(build(tmp_path, "memhog")), "a", "20", "v", "s", "f", "v", "q"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["memhog: touched 16/20 MiB", "memhog: touched 20/20 MiB", "memhog: holding 20 MiB",
                   "memhog: verified 20 MiB: 0 pages wrong, 0 of them zero", "memhog: holding 20 MiB",
                   "memhog: freed 20 MiB", "memhog: verified 0 MiB: 0 pages wrong, 0 of them zero",
                   "memhog: bye"]


def test_memhog_reads_commands_from_stdin_and_names_a_bad_one(tmp_path):
    out = subprocess.run([str(build(tmp_path, "memhog"))], input="a 0\nx\ns\nq\n",
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "memhog: ready"
    assert out[1].startswith("memhog: error: 'a N' needs N > 0 MiB")
    assert out[2] == "memhog: error: unknown command 'x' (a N, f, s, v, q)"
    assert out[3:] == ["memhog: holding 0 MiB", "memhog: bye"]
