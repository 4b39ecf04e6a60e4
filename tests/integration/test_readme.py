"""The README's Python example runs as written."""

import contextlib
import io
import re

import pytest

from tests.support.guest import ROOT, ensure_built


@pytest.mark.kvm
def test_readme_python_example_runs():
    ensure_built()
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    m = re.match(r"(\d+) MiB; host RSS (\d+) MiB", out.getvalue())
    assert m, out.getvalue()
    assert int(m.group(1)) == 128
