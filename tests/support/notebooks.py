"""Notebooks run as a student runs them: nbclient drives an IPython kernel of this interpreter."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
LABS = ROOT / "docs" / "labs"


def notebook(*sources: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def client(nb: nbformat.NotebookNode, cwd: Path = ROOT, timeout: int = 600) -> NotebookClient:
    """A client whose kernel is this interpreter (the venv's ipykernel), started in cwd."""
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}},
                          allow_errors=False)


def run(nb: nbformat.NotebookNode, cwd: Path = ROOT, timeout: int = 600) -> nbformat.NotebookNode:
    client(nb, cwd, timeout).execute()
    return nb


def text_of(cell: nbformat.NotebookNode) -> str:
    """Everything a cell showed: its streams, and the text/plain and text/html of its results."""
    out = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            out.append(o.text)
        elif o.output_type in ("execute_result", "display_data"):
            out.append(o.data.get("text/plain", ""))
            out.append(o.data.get("text/html", ""))
    return "".join(out)
