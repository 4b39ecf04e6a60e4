"""Notebooks through nbclient, as a student runs them: the README's example, a re-run cell, the labs."""

import re

import pytest

from tests.integration.test_readme import readme_example
from tests.support.guest import ensure_built
from tests.support.notebooks import LABS, client, notebook, run, text_of

pytestmark = pytest.mark.kvm


def test_readme_example_in_a_notebook(tmp_path):
    ensure_built()
    nb = run(notebook(readme_example(), "vm.balloon.info()"), cwd=tmp_path)
    out = text_of(nb.cells[0])
    assert "balloon: version 2 features" in out            # the guest's console, in the cell
    assert "dirty:" in out
    assert re.search(r"128 MiB; host RSS \d+ MiB", out), out   # (a guest line may be cut by it)
    assert (tmp_path / "balloon.png").stat().st_size > 10_000
    html = nb.cells[1].outputs[0].data["text/html"]         # BalloonInfo as a table
    assert "<table>" in html and "actual" in html and "128.0 MiB" in html


def test_a_cell_run_again_stops_the_machine_it_left_running(tmp_path):
    ensure_built()
    nb = notebook("from pyvmm import Machine, VmConfig\nmachines = []",
                  "vm = Machine(VmConfig(memory='64M', append='scenario=demo dirty=8M', console='capture'))\n"
                  "machines.append(vm)\nvm.start()\nvm.wait_for_console('balloon: version 2', timeout=60)\nvm",
                  "print([m.stopped.is_set() for m in machines], [m.status() for m in machines])")
    c = client(nb, cwd=tmp_path)
    with c.setup_kernel():
        c.execute_cell(nb.cells[0], 0)
        c.execute_cell(nb.cells[1], 1)
        shown = [o for o in nb.cells[1].outputs if o.output_type == "execute_result"]
        assert "pyvmm Machine" in shown[0].data["text/html"]      # (guest lines may come after it)
        c.execute_cell(nb.cells[1], 1)                      # the same cell again
        assert "the machine it started before is stopped" in text_of(nb.cells[1])
        c.execute_cell(nb.cells[2], 2)
    # The second machine still runs, so a guest line of its own may land in this cell's output too.
    assert "[True, False] ['shutdown', 'running']" in text_of(nb.cells[2]).splitlines()


LAB_NOTEBOOKS = sorted(LABS.glob("[0-9][0-9]-*.ipynb"))
LINUX_LABS = [p for p in LAB_NOTEBOOKS if "linux" in p.stem]     # run in tests/e2e/test_lab_linux.py


def run_lab(path, tmp_path, timeout: int = 300):
    import nbformat

    ensure_built()
    nb = nbformat.read(path, as_version=4)
    run(nb, cwd=tmp_path, timeout=timeout)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    return nb


@pytest.mark.parametrize("path", [p for p in LAB_NOTEBOOKS if p not in LINUX_LABS], ids=lambda p: p.stem)
def test_lab_notebook_runs(path, tmp_path):
    run_lab(path, tmp_path)


def test_every_lab_is_listed_with_its_time():
    assert len(LAB_NOTEBOOKS) >= 6
    readme = (LABS / "README.md").read_text()
    for p in LAB_NOTEBOOKS:
        line = next((ln for ln in readme.splitlines() if p.name in ln), "")
        assert re.search(r"\d+ min", line), f"{p.name} is not listed with its time in docs/labs/README.md"
