"""The KVM ABI mirrors: every struct's size and the kvm_run member offsets pinned to the kernel's."""

import ctypes

import pytest

from pyvmm.kvm import abi
from pyvmm.kvm.ioctl import _IO, _IOR, _IOW, _IOWR, KVMIO

SIZES = {
    "kvm_regs": 144,
    "kvm_segment": 24,
    "kvm_dtable": 16,
    "kvm_sregs": 312,
    "kvm_fpu": 416,
    "kvm_msr_entry": 16,
    "kvm_msrs": 8,
    "kvm_cpuid_entry2": 40,
    "kvm_cpuid2": 8,
    "kvm_lapic_state": 1024,
    "kvm_pit_config": 64,
    "kvm_guest_debug_arch": 64,
    "kvm_guest_debug": 72,
    "kvm_debug_exit_arch": 32,
    "kvm_vcpu_events": 64,
    "kvm_userspace_memory_region": 32,
    "kvm_irq_level": 8,
    "kvm_irqfd": 32,
    "kvm_ioeventfd": 64,
    "kvm_mp_state": 4,
    "kvm_run": 2352,
    # added for kvmtrace's decoding (sizes from the 6.1 headers)
    "kvm_sregs2": 320,
    "kvm_xsave": 4096,
    "kvm_xcr": 16,
    "kvm_xcrs": 392,
    "kvm_debugregs": 128,
    "kvm_msr_list": 4,
    "kvm_msr_filter_range": 24,
    "kvm_msr_filter": 392,
    "kvm_pit_state2": 112,
    "kvm_enable_cap": 104,
    "kvm_irq_routing_irqchip": 8,
    "kvm_irq_routing_msi": 16,
    "kvm_irq_routing_entry": 48,
    "kvm_irq_routing": 8,
    "kvm_device_attr": 24,
    "kvm_create_device": 12,
    "kvm_clock_data": 48,
    "kvm_signal_mask": 4,
    "kvm_msi": 32,
    "kvm_coalesced_mmio_zone": 16,
    "kvm_dirty_log": 16,
    "kvm_interrupt": 4,
    "kvm_vapic_addr": 8,
    "kvm_tpr_access_ctl": 40,
    "kvm_irqchip": 520,
    "kvm_pic_state": 16,
    "kvm_ioapic_state": 216,
}


@pytest.mark.parametrize("name,size", SIZES.items())
def test_struct_size(name, size):
    assert ctypes.sizeof(getattr(abi, name)) == size


KVM_RUN_OFFSETS = {
    "request_interrupt_window": 0,
    "immediate_exit": 1,
    "exit_reason": 8,
    "ready_for_interrupt_injection": 12,
    "if_flag": 13,
    "flags": 14,
    "cr8": 16,
    "apic_base": 24,
    "u": 32,
    "kvm_valid_regs": 288,
    "kvm_dirty_regs": 296,
    "s": 304,
}


@pytest.mark.parametrize("field,offset", KVM_RUN_OFFSETS.items())
def test_kvm_run_offsets(field, offset):
    assert getattr(abi.kvm_run, field).offset == offset


def test_kvm_run_exit_members():
    io = abi._kvm_run_io
    assert (io.direction.offset, io.size.offset, io.port.offset, io.count.offset, io.data_offset.offset) == (
        0, 1, 2, 4, 8)
    mmio = abi._kvm_run_mmio
    assert (mmio.phys_addr.offset, mmio.data.offset, mmio.len.offset, mmio.is_write.offset) == (0, 8, 16, 20)
    assert ctypes.sizeof(mmio) == 24
    assert abi._kvm_run_fail_entry.cpu.offset == 8
    assert abi._kvm_run_internal.data.offset == 8
    assert abi._kvm_run_system_event.data.offset == 8
    assert ctypes.sizeof(abi._kvm_run_exit) == 256


def test_sregs2_layout():
    s = abi.kvm_sregs2
    assert s.cr0.offset == 0xE0 and s.flags.offset == 0x118


def test_cap_numbers():
    assert (abi.KvmCap.SREGS2, abi.KvmCap.XSAVE2, abi.KvmCap.X86_NOTIFY_VMEXIT, abi.KvmCap.BINARY_STATS_FD) == (
        200, 208, 219, 203)


def test_sregs_layout():
    s = abi.kvm_sregs
    assert s.gdt.offset == 192 and s.idt.offset == 208
    assert s.cr0.offset == 224 and s.efer.offset == 264 and s.apic_base.offset == 272
    assert s.interrupt_bitmap.offset == 280


def test_flexible_arrays():
    assert ctypes.sizeof(abi.cpuid2_type(3)) == 8 + 3 * 40
    assert ctypes.sizeof(abi.msrs_type(2)) == 8 + 2 * 16


@pytest.mark.parametrize("value,expected", [
    (abi.KVM_SET_USER_MEMORY_REGION, 0x4020AE46),
    (abi.KVM_GET_SREGS, 0x8138AE83),
    (abi.KVM_SET_SREGS, 0x4138AE84),
    (abi.KVM_RUN, 0xAE80),
    (abi.KVM_GET_REGS, 0x8090AE81),
    (abi.KVM_GET_SUPPORTED_CPUID, 0xC008AE05),
    (abi.KVM_SET_CPUID2, 0x4008AE90),
    (abi.KVM_IRQ_LINE, 0x4008AE61),
    (abi.KVM_IRQFD, 0x4020AE76),
    (abi.KVM_IOEVENTFD, 0x4040AE79),
    (abi.KVM_CREATE_PIT2, 0x4040AE77),
    (abi.KVM_GET_MSRS, 0xC008AE88),
    (abi.KVM_GET_VCPU_EVENTS, 0x8040AE9F),
    (abi.KVM_CREATE_VM, 0xAE01),
    (abi.KVM_GET_API_VERSION, 0xAE00),
    # the ones kvmtrace names, from a C program over the 6.1 headers
    (abi.KVM_GET_SREGS2, 0x8140AECC),
    (abi.KVM_SET_SREGS2, 0x4140AECD),
    (abi.KVM_ENABLE_CAP, 0x4068AEA3),
    (abi.KVM_SET_GSI_ROUTING, 0x4008AE6A),
    (abi.KVM_GET_MSR_INDEX_LIST, 0xC004AE02),
    (abi.KVM_GET_MSR_FEATURE_INDEX_LIST, 0xC004AE0A),
    (abi.KVM_GET_DEVICE_ATTR, 0x4018AEE2),
    (abi.KVM_SET_DEVICE_ATTR, 0x4018AEE1),
    (abi.KVM_HAS_DEVICE_ATTR, 0x4018AEE3),
    (abi.KVM_GET_XCRS, 0x8188AEA6),
    (abi.KVM_SET_XCRS, 0x4188AEA7),
    (abi.KVM_GET_XSAVE, 0x9000AEA4),
    (abi.KVM_SET_XSAVE, 0x5000AEA5),
    (abi.KVM_GET_XSAVE2, 0x9000AECF),
    (abi.KVM_GET_DEBUGREGS, 0x8080AEA1),
    (abi.KVM_SET_DEBUGREGS, 0x4080AEA2),
    (abi.KVM_SET_CLOCK, 0x4030AE7B),
    (abi.KVM_GET_CLOCK, 0x8030AE7C),
    (abi.KVM_SET_VAPIC_ADDR, 0x4008AE93),
    (abi.KVM_TPR_ACCESS_REPORTING, 0xC028AE92),
    (abi.KVM_X86_SET_MSR_FILTER, 0x4188AEC6),
    (abi.KVM_X86_SETUP_MCE, 0x4008AE9C),
    (abi.KVM_X86_GET_MCE_CAP_SUPPORTED, 0x8008AE9D),
    (abi.KVM_SET_TSC_KHZ, 0xAEA2),
    (abi.KVM_KVMCLOCK_CTRL, 0xAEAD),
    (abi.KVM_SET_SIGNAL_MASK, 0x4004AE8B),
    (abi.KVM_IRQ_LINE_STATUS, 0xC008AE67),
    (abi.KVM_SIGNAL_MSI, 0x4020AEA5),
    (abi.KVM_REGISTER_COALESCED_MMIO, 0x4010AE67),
    (abi.KVM_UNREGISTER_COALESCED_MMIO, 0x4010AE68),
    (abi.KVM_CREATE_DEVICE, 0xC00CAEE0),
    (abi.KVM_GET_EMULATED_CPUID, 0xC008AE09),
    (abi.KVM_GET_STATS_FD, 0xAECE),
    (abi.KVM_SET_BOOT_CPU_ID, 0xAE78),
    (abi.KVM_GET_DIRTY_LOG, 0x4010AE42),
    (abi.KVM_NMI, 0xAE9A),
    (abi.KVM_INTERRUPT, 0x4004AE86),
    (abi.KVM_GET_SUPPORTED_HV_CPUID, 0xC008AEC1),
    (abi.KVM_GET_IRQCHIP, 0xC208AE62),
    (abi.KVM_SET_IRQCHIP, 0x8208AE63),
    (abi.KVM_GET_PIT2, 0x8070AE9F),
    (abi.KVM_SET_PIT2, 0x4070AEA0),
    (abi.KVM_SET_GUEST_DEBUG, 0x4048AE9B),
    (abi.KVM_CHECK_EXTENSION, 0xAE03),
    (abi.KVM_GET_CPUID2, 0xC008AE91),
    (abi.KVM_GET_NR_MMU_PAGES, 0xAE45),
])
def test_ioctl_numbers_match_kernel(value, expected):
    assert value == expected


def test_ioc_helpers():
    assert _IO(KVMIO, 0x80) == 0xAE80
    assert _IOR(KVMIO, 1, 4) == 0x8004AE01
    assert _IOW(KVMIO, 1, 4) == 0x4004AE01
    assert _IOWR(KVMIO, 1, 4) == 0xC004AE01
    with pytest.raises(ValueError):
        _IOW(KVMIO, 1, 1 << 14)


def test_guest_debug_flags_are_the_headers():
    # <linux/kvm.h> (generic) and arch/x86/include/uapi/asm/kvm.h (x86) as of Linux 6.1.
    assert (abi.KVM_GUESTDBG_ENABLE, abi.KVM_GUESTDBG_SINGLESTEP) == (0x1, 0x2)
    assert (abi.KVM_GUESTDBG_USE_SW_BP, abi.KVM_GUESTDBG_USE_HW_BP, abi.KVM_GUESTDBG_INJECT_DB,
            abi.KVM_GUESTDBG_INJECT_BP, abi.KVM_GUESTDBG_BLOCKIRQ) == (0x10000, 0x20000, 0x40000, 0x80000, 0x100000)
    assert (abi.KvmCap.SET_GUEST_DEBUG, abi.KvmCap.SET_GUEST_DEBUG2) == (23, 195)
    assert abi.KVM_SET_GUEST_DEBUG == 0x4048AE9B
