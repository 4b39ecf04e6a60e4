"""KVM-level user errors: permission, API version, a missing capability, a failing ioctl."""

import errno

import pytest

from pyvmm.errors import KvmError, PyvmmError
from pyvmm.kvm import abi, system
from pyvmm.kvm.abi import KvmCap


def test_permission_denied(monkeypatch):
    def deny(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(system.os, "open", deny)
    with pytest.raises(PyvmmError, match="no permission to open /dev/kvm: add your user to the 'kvm' group"):
        system.Kvm("/dev/kvm")


@pytest.mark.kvm
def test_wrong_api_version(monkeypatch):
    real = system.ioctl

    def fake(fd, req, arg=None, *, name):
        return 11 if req == abi.KVM_GET_API_VERSION else real(fd, req, arg, name=name)

    monkeypatch.setattr(system, "ioctl", fake)
    with pytest.raises(PyvmmError, match="API version 11; pyvmm needs 12"):
        system.Kvm()


@pytest.mark.kvm
def test_missing_capability(monkeypatch):
    kvm = system.Kvm()
    monkeypatch.setattr(kvm, "check_extension", lambda cap: 0 if cap == KvmCap.IRQFD else 1)
    with pytest.raises(PyvmmError, match="lacks the capability KVM_CAP_IRQFD"):
        kvm.require(KvmCap.IRQCHIP, KvmCap.IRQFD)
    kvm.close()


@pytest.mark.kvm
def test_failing_ioctl_names_itself():
    kvm = system.Kvm()
    vm = kvm.create_vm()
    with pytest.raises(KvmError, match=r"KVM_SET_USER_MEMORY_REGION failed: EINVAL") as e:
        vm.set_user_memory_region(0x1001, 4096, 0)    # unaligned gpa
    assert e.value.errno == errno.EINVAL
    vm.close()
    kvm.close()
