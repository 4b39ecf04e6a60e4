"""The build step of `pip install .` and `python -m build`: the tiny guest and the boot firmware are built
with make (gcc, ld) and shipped inside the package as pyvmm/_data/, so an installed `pyvmm run` boots
them with no source tree.  An editable install (make build) boots them from guest/build and
firmware/build instead.  Everything else about the package is in pyproject.toml."""

import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
ARTEFACTS = {
    ("guest", "build/guest.elf"): "guest.elf",
    ("firmware", "build/firmware.elf"): "firmware.elf",
}


class BuildWithGuest(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        data = Path(self.build_lib) / "pyvmm" / "_data"
        data.mkdir(parents=True, exist_ok=True)
        for (directory, target), name in ARTEFACTS.items():
            subprocess.run(["make", "-s", "-C", str(ROOT / directory), target], check=True)
            shutil.copy2(ROOT / directory / target, data / name)


setup(cmdclass={"build_py": BuildWithGuest})
