"""The unit tier: no KVM, no subprocess, no QEMU.  Enforced here, so a test that needs one of them fails
with a line that says where it belongs (tests/integration/ or tests/e2e/)."""

from __future__ import annotations

import os
import subprocess

import pytest

_real_open = os.open


@pytest.fixture(autouse=True)
def _unit_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_subprocess(*args, **kwargs):
        raise AssertionError("a unit test started a subprocess: move it to tests/integration/")

    def no_kvm(path, *args, **kwargs):
        if os.fspath(path).startswith("/dev/kvm"):
            raise AssertionError("a unit test opened /dev/kvm: move it to tests/integration/")
        return _real_open(path, *args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", no_subprocess)
    monkeypatch.setattr(os, "open", no_kvm)
