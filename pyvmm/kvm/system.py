"""The /dev/kvm system fd: API version, capabilities, supported CPUID, and VM creation."""

from __future__ import annotations

import ctypes
import errno
import os
import weakref
from typing import TYPE_CHECKING

from ..errors import KvmError, PyvmmError
from . import abi
from .ioctl import close_fd, ioctl

if TYPE_CHECKING:
    from .vmfd import VmFd


class Kvm:
    """An open /dev/kvm."""

    def __init__(self, path: str | None = None) -> None:
        path = path or os.environ.get("PYVMM_KVM_DEVICE", "/dev/kvm")
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise PyvmmError(
                f"{path} does not exist: KVM is not available on this host "
                "(load the kvm module, or enable nested virtualization for this VM)"
            ) from None
        except PermissionError:
            raise PyvmmError(
                f"no permission to open {path}: add your user to the 'kvm' group "
                f"(sudo usermod -aG kvm $USER, then log in again) or run as root"
            ) from None
        except OSError as e:
            raise PyvmmError(f"cannot open {path}: {e.strerror}") from None
        self._finalizer = weakref.finalize(self, close_fd, self.fd)
        version = ioctl(self.fd, abi.KVM_GET_API_VERSION, name="KVM_GET_API_VERSION")
        if version != abi.KVM_API_VERSION:
            self.close()
            raise PyvmmError(f"{path} speaks KVM API version {version}; pyvmm needs {abi.KVM_API_VERSION}")
        self.vcpu_mmap_size = ioctl(self.fd, abi.KVM_GET_VCPU_MMAP_SIZE, name="KVM_GET_VCPU_MMAP_SIZE")

    def close(self) -> None:
        self._finalizer()

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, abi.KVM_CHECK_EXTENSION, int(cap), name="KVM_CHECK_EXTENSION")

    def require(self, *caps: abi.KvmCap) -> None:
        """Raise a one-line error naming the first missing capability."""
        for cap in caps:
            if not self.check_extension(cap):
                raise PyvmmError(f"this host's KVM lacks the capability KVM_CAP_{cap.name}, which pyvmm needs")

    @property
    def max_vcpus(self) -> int:
        return self.check_extension(abi.KvmCap.MAX_VCPUS) or self.check_extension(abi.KvmCap.NR_VCPUS) or 4

    def get_supported_cpuid(self) -> ctypes.Structure:
        """KVM_GET_SUPPORTED_CPUID, growing the buffer until it fits (E2BIG)."""
        n = 64
        while True:
            buf = abi.cpuid2_type(n)()
            buf.nent = n
            try:
                ioctl(self.fd, abi.KVM_GET_SUPPORTED_CPUID, buf, name="KVM_GET_SUPPORTED_CPUID")
                return buf
            except KvmError as e:
                if e.errno != errno.E2BIG or n >= 4096:
                    raise
                n *= 2

    def create_vm(self) -> VmFd:
        from .vmfd import VmFd

        fd = ioctl(self.fd, abi.KVM_CREATE_VM, 0, name="KVM_CREATE_VM")
        return VmFd(self, fd)
