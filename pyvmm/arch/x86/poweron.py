"""The power-on state of a vCPU and of the in-kernel PIC, IOAPIC and PIT, captured once and put back on reset.

A machine reset (QMP `system_reset`, the guest's i8042 or ACPI reset) must leave every CPU as it was
at power-on: KVM gives a new vCPU exactly that state (the BSP at the reset vector in real mode, the
APs waiting for INIT/SIPI), so pyvmm reads it right after creating each vCPU, before any guest code
ran, and writes it back on reset.  The MSRs that a kernel programs and that must not outlive a reset
(the syscall entry points, kvmclock and the PV features that make KVM write into guest memory) are
among those saved.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import KvmError
from ...kvm import abi

# MSRs a guest kernel programs; each is saved if this host's KVM can read it.
RESET_MSRS = (
    0x174, 0x175, 0x176,            # IA32_SYSENTER_CS, _ESP, _EIP
    0x1A0,                          # IA32_MISC_ENABLE
    0x277,                          # IA32_PAT
    0x6E0,                          # IA32_TSC_DEADLINE
    0xC000_0081, 0xC000_0082,       # STAR, LSTAR
    0xC000_0083, 0xC000_0084,       # CSTAR, SYSCALL_MASK
    0xC000_0102, 0xC000_0103,       # KERNEL_GS_BASE, TSC_AUX
    0x11, 0x12,                     # MSR_KVM_SYSTEM_TIME, MSR_KVM_WALL_CLOCK (old numbers)
    0x4B56_4D00, 0x4B56_4D01,       # MSR_KVM_WALL_CLOCK_NEW, MSR_KVM_SYSTEM_TIME_NEW
    0x4B56_4D02, 0x4B56_4D03,       # MSR_KVM_ASYNC_PF_EN, MSR_KVM_STEAL_TIME
    0x4B56_4D04,                    # MSR_KVM_PV_EOI_EN
)


@dataclass
class VcpuPowerOn:
    regs: abi.kvm_regs
    sregs: abi.kvm_sregs
    fpu: abi.kvm_fpu
    lapic: abi.kvm_lapic_state
    events: abi.kvm_vcpu_events
    mp_state: int
    msrs: dict[int, int]

    @classmethod
    def capture(cls, fd) -> VcpuPowerOn:
        msrs: dict[int, int] = {}
        for index in RESET_MSRS:
            try:
                msrs.update(fd.get_msrs([index]))
            except KvmError:
                pass                            # not an MSR this host's KVM knows
        return cls(fd.get_regs(), fd.get_sregs(), fd.get_fpu(), fd.get_lapic(), fd.get_vcpu_events(),
                   fd.get_mp_state(), msrs)

    def restore(self, fd) -> None:
        fd.set_mp_state(self.mp_state)
        fd.set_sregs(self.sregs)
        fd.set_regs(self.regs)
        fd.set_fpu(self.fpu)
        fd.set_lapic(self.lapic)
        fd.set_vcpu_events(self.events)
        if self.msrs:
            fd.set_msrs(self.msrs)


@dataclass
class PlatformPowerOn:
    """The in-kernel PIC pair, IOAPIC and PIT as KVM created them."""

    chips: list[abi.kvm_irqchip]
    pit: abi.kvm_pit_state2

    @classmethod
    def capture(cls, vm) -> PlatformPowerOn:
        chips = [vm.get_irqchip(c) for c in (abi.KVM_IRQCHIP_PIC_MASTER, abi.KVM_IRQCHIP_PIC_SLAVE,
                                             abi.KVM_IRQCHIP_IOAPIC)]
        return cls(chips, vm.get_pit2())

    def restore(self, vm) -> None:
        for chip in self.chips:
            vm.set_irqchip(chip)
        vm.set_pit2(self.pit)
