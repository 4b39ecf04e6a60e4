"""The vCPU fd: registers, CPUID, MSRs, the shared kvm_run page, and KVM_RUN itself."""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import weakref
from typing import TYPE_CHECKING

from . import abi
from .ioctl import close_fd, ioctl

if TYPE_CHECKING:
    from .vmfd import VmFd


class VcpuFd:
    """One vCPU: ``run()`` enters the guest; ``kvm_run`` is the shared page KVM fills on each exit."""

    def __init__(self, vm: VmFd, fd: int, index: int) -> None:
        self.vm = vm
        self.fd = fd
        self.index = index
        self.run_mmap = mmap.mmap(fd, vm.kvm.vcpu_mmap_size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        self.kvm_run: abi.kvm_run | None = abi.kvm_run.from_buffer(self.run_mmap)
        self._finalizer = weakref.finalize(self, close_fd, fd)

    def close(self) -> None:
        """Unmap kvm_run and close the fd: only then does the kernel let the vCPU (and its VM) go."""
        self.kvm_run = None
        try:
            self.run_mmap.close()
        except BufferError:
            pass  # a view of kvm_run is still alive somewhere; the mapping goes with it
        self._finalizer()

    def run(self) -> None:
        """KVM_RUN with two arguments: the cheapest call from Python (releases the GIL)."""
        fcntl.ioctl(self.fd, abi.KVM_RUN)

    def get_regs(self) -> abi.kvm_regs:
        r = abi.kvm_regs()
        ioctl(self.fd, abi.KVM_GET_REGS, r, name="KVM_GET_REGS")
        return r

    def set_regs(self, regs: abi.kvm_regs) -> None:
        ioctl(self.fd, abi.KVM_SET_REGS, regs, name="KVM_SET_REGS")

    def get_sregs(self) -> abi.kvm_sregs:
        s = abi.kvm_sregs()
        ioctl(self.fd, abi.KVM_GET_SREGS, s, name="KVM_GET_SREGS")
        return s

    def set_sregs(self, sregs: abi.kvm_sregs) -> None:
        ioctl(self.fd, abi.KVM_SET_SREGS, sregs, name="KVM_SET_SREGS")

    def get_fpu(self) -> abi.kvm_fpu:
        f = abi.kvm_fpu()
        ioctl(self.fd, abi.KVM_GET_FPU, f, name="KVM_GET_FPU")
        return f

    def set_fpu(self, fpu: abi.kvm_fpu) -> None:
        ioctl(self.fd, abi.KVM_SET_FPU, fpu, name="KVM_SET_FPU")

    def set_cpuid2(self, cpuid: ctypes.Structure) -> None:
        ioctl(self.fd, abi.KVM_SET_CPUID2, cpuid, name="KVM_SET_CPUID2")

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        buf = abi.msrs_type(len(indices))()
        buf.nmsrs = len(indices)
        for i, idx in enumerate(indices):
            buf.entries[i].index = idx
        n = ioctl(self.fd, abi.KVM_GET_MSRS, buf, name="KVM_GET_MSRS")
        return {buf.entries[i].index: buf.entries[i].data for i in range(n)}

    def set_msrs(self, values: dict[int, int]) -> None:
        buf = abi.msrs_type(len(values))()
        buf.nmsrs = len(values)
        for i, (idx, data) in enumerate(values.items()):
            buf.entries[i].index = idx
            buf.entries[i].data = data
        ioctl(self.fd, abi.KVM_SET_MSRS, buf, name="KVM_SET_MSRS")

    def get_lapic(self) -> abi.kvm_lapic_state:
        s = abi.kvm_lapic_state()
        ioctl(self.fd, abi.KVM_GET_LAPIC, s, name="KVM_GET_LAPIC")
        return s

    def set_lapic(self, state: abi.kvm_lapic_state) -> None:
        ioctl(self.fd, abi.KVM_SET_LAPIC, state, name="KVM_SET_LAPIC")

    def get_vcpu_events(self) -> abi.kvm_vcpu_events:
        e = abi.kvm_vcpu_events()
        ioctl(self.fd, abi.KVM_GET_VCPU_EVENTS, e, name="KVM_GET_VCPU_EVENTS")
        return e

    def set_vcpu_events(self, events: abi.kvm_vcpu_events) -> None:
        ioctl(self.fd, abi.KVM_SET_VCPU_EVENTS, events, name="KVM_SET_VCPU_EVENTS")

    def set_guest_debug(self, control: int, debugreg: tuple[int, ...] = ()) -> None:
        """KVM_SET_GUEST_DEBUG: the KVM_GUESTDBG_* bits, and (x86) DR0-DR3 and DR7 as debugreg[0..7]."""
        dbg = abi.kvm_guest_debug(control=control)
        for i, value in enumerate(debugreg[:8]):
            dbg.arch.debugreg[i] = value
        ioctl(self.fd, abi.KVM_SET_GUEST_DEBUG, dbg, name="KVM_SET_GUEST_DEBUG")

    def get_mp_state(self) -> int:
        s = abi.kvm_mp_state()
        ioctl(self.fd, abi.KVM_GET_MP_STATE, s, name="KVM_GET_MP_STATE")
        return s.mp_state

    def set_mp_state(self, state: int) -> None:
        """KVM_MP_STATE_*: an AP made RUNNABLE starts at its registers without waiting for INIT/SIPI."""
        ioctl(self.fd, abi.KVM_SET_MP_STATE, abi.kvm_mp_state(mp_state=state), name="KVM_SET_MP_STATE")

    def get_tsc_khz(self) -> int:
        return ioctl(self.fd, abi.KVM_GET_TSC_KHZ, name="KVM_GET_TSC_KHZ")
