"""The package installs: `pip install .` and a wheel from `python -m build` into fresh venvs give a `pyvmm`
that boots its bundled guest and firmware from package data, with no source tree in sight; bash
completion comes from argcomplete."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.guest import ROOT

pytestmark = pytest.mark.kvm

IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "fuzz-corpus*",
                                ".pytest_cache", ".hypothesis", "_data", "*.o", "*.elf", "*.bin", "bench",
                                "docs", "linux")


def _source_copy(tmp_path: Path) -> Path:
    """The source tree as a clone has it (no build products), away from the checkout the suite runs in."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    return src


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin"


def _boots_from_elsewhere(bin_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(bin_dir / "pyvmm"), "run", "-m", "64M", "--append", "scenario=selftest"],
                       cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "scenario selftest: PASS" in r.stdout
    where = subprocess.run([str(bin_dir / "python"), "-c",
                            "import pyvmm.config as c; print(c.DEFAULT_GUEST); print(c.DEFAULT_FIRMWARE)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all("site-packages/pyvmm/_data/" in p for p in where), where


def test_pip_install_dot_boots_the_bundled_guest(tmp_path):
    src = _source_copy(tmp_path)
    bin_dir = _venv(tmp_path / "venv")
    r = subprocess.run([str(bin_dir / "pip"), "install", "-q", str(src)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    shutil.rmtree(src)                   # nothing of the source tree is needed any more
    _boots_from_elsewhere(bin_dir, tmp_path)


def test_a_wheel_from_python_m_build_boots_the_bundled_guest(tmp_path):
    src = _source_copy(tmp_path)
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    wheels = list(dist.glob("pyvmm-*.whl"))
    assert len(wheels) == 1
    import zipfile

    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "pyvmm/_data/guest.elf" in names and "pyvmm/_data/firmware.elf" in names
    shutil.rmtree(src)
    bin_dir = _venv(tmp_path / "venv")
    r = subprocess.run([str(bin_dir / "pip"), "install", "-q", str(wheels[0])], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    _boots_from_elsewhere(bin_dir, tmp_path)


def test_bash_completion_of_options(tmp_path):
    out = tmp_path / "completions"
    line = "pyvmm run -mon"
    env = dict(os.environ, _ARGCOMPLETE="1", _ARGCOMPLETE_STDOUT_FILENAME=str(out), COMP_LINE=line,
               COMP_POINT=str(len(line)), PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "pyvmm"], env=env, cwd=ROOT, check=True, timeout=60)
    assert out.read_text().split() == ["-monitor"]
