"""The README's Python example runs as written: in a script here, in a notebook in test_notebooks.py."""

import contextlib
import io
import re

import pytest

from tests.support.guest import ROOT, ensure_built


def readme_example() -> str:
    return re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)


@pytest.mark.kvm
def test_readme_python_example_runs(tmp_path, monkeypatch):
    ensure_built()
    monkeypatch.chdir(tmp_path)                 # the example writes balloon.png where it runs
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(readme_example(), "README.md", "exec"), {})
    text = out.getvalue()
    assert "balloon: version 2 features" in text          # console="capture": the guest's lines, here
    m = re.search(r"^(\d+) MiB; host RSS (\d+) MiB", text, re.M)
    assert m, text
    assert int(m.group(1)) == 128
    assert (tmp_path / "balloon.png").stat().st_size > 10_000
