"""Test-suite policy: KVM tests run wherever /dev/kvm exists and fail loudly under PYVMM_REQUIRE_KVM=1."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pyvmm.loader.firmware import FirmwareImage, load_firmware
from tests.support.firmware import BAD_GDT_ELF, BIN, BUILD, ELF

HAVE_KVM = os.access("/dev/kvm", os.R_OK | os.W_OK)
REQUIRE_KVM = os.environ.get("PYVMM_REQUIRE_KVM") == "1"


def pytest_configure(config):
    if REQUIRE_KVM and not HAVE_KVM:
        raise pytest.UsageError("PYVMM_REQUIRE_KVM=1 but /dev/kvm is missing or not accessible: "
                                "the KVM tests cannot run on this machine")


def pytest_collection_modifyitems(config, items):
    no_kvm = pytest.mark.skip(reason="no /dev/kvm on this machine (set PYVMM_REQUIRE_KVM=1 to fail instead)")
    no_qemu = pytest.mark.skip(reason="qemu-system-x86_64 not installed (make test installs it)")
    have_qemu = shutil.which("qemu-system-x86_64") is not None
    for item in items:
        if "kvm" in item.keywords and not HAVE_KVM:
            item.add_marker(no_kvm)
        if "qemu" in item.keywords and not have_qemu and not REQUIRE_KVM:
            item.add_marker(no_qemu)      # under CI a missing QEMU makes these tests fail, not skip


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on its item (item.rep_setup, rep_call, rep_teardown), for fixtures that
    clean up differently after a failure (tests/e2e/test_linux_shell.py)."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def figure(record_property):
    """figure(text): a figure the test measured (a time, a share, a count), printed and kept on the
    test's report, so that pytest_terminal_summary below lists it in every run's output, CI's
    included (pytest shows a passing test's prints only with -s or -rP)."""
    def say(text: str) -> None:
        print(f"\n{text}")
        record_property("figure", text)
    return say


def pytest_terminal_summary(terminalreporter):
    """One section with every figure the tests recorded (the call phase's report carries it, also
    from an xdist worker), whatever became of the test."""
    seen = []
    for reports in terminalreporter.stats.values():
        for rep in reports:
            if getattr(rep, "when", None) != "call":
                continue
            seen += [(rep.nodeid, rep.outcome, v) for k, v in getattr(rep, "user_properties", ()) if k == "figure"]
    if seen:
        terminalreporter.write_sep("=", "figures measured by the tests")
        for nodeid, outcome, text in sorted(seen):
            terminalreporter.write_line(f"{nodeid} ({outcome}): {text}")


@pytest.fixture(scope="module")
def built() -> Path:
    """The boot ROM as `make build` (which `make test` runs first) leaves it."""
    missing = [p.name for p in (ELF, BIN, BAD_GDT_ELF) if not p.exists()]
    if missing:
        pytest.fail(f"firmware/build lacks {', '.join(missing)}: run `make build` (or `make -C firmware`)")
    return BUILD


@pytest.fixture(scope="module")
def fw(built: Path) -> FirmwareImage:
    return load_firmware(ELF)
