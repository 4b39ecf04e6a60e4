"""Code in the docs runs: docs/architecture.md's hello-KVM loop."""

import contextlib
import io
import re

import pytest

from tests.support.guest import ROOT


@pytest.mark.kvm
def test_architecture_hello_kvm_runs():
    text = (ROOT / "docs" / "architecture.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "pyvmm.kvm" in code and "pyvmm.vm" not in code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/architecture.md", "exec"), {})
    assert out.getvalue() == "H\n"
