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
