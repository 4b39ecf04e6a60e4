"""Instructions this host's emulator refuses (int3, fwait): pyvmm finishes them; QEMU stops here."""


import pytest

from tests.support.guest import pyvmm_cli, run_guest

pytestmark = pytest.mark.kvm


def test_pyvmm_finishes_int3_and_fwait():
    code, out, m = run_guest("scenario=gaps", balloon=None)
    assert code == 0, out
    assert "gaps: int3 raised #BP 2 times, fwait passed" in out
    # On a host whose emulator runs them itself there is nothing to count; here (kvm_pvm) there is.
    assert set(m.emulation_fixups) <= {"int3 -> #BP injected", "fwait skipped"}
    res = pyvmm_cli("run", "guest/build/guest.elf", "-m", "64M", "--append", "scenario=gaps")
    assert res.returncode == 0
    if m.emulation_fixups:
        assert "finished for the guest what this host's emulator could not" in res.stderr


