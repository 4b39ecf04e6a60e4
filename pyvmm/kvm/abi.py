"""The KVM ABI: ctypes mirrors of <linux/kvm.h> and <asm/kvm.h> structs, constants and ioctl numbers."""

from __future__ import annotations

import ctypes
from ctypes import c_char, c_int32, c_uint8, c_uint16, c_uint32, c_uint64
from enum import IntEnum

from .ioctl import _IO, _IOR, _IOW, _IOWR, KVMIO

KVM_API_VERSION = 12


# ---- arch/x86/include/uapi/asm/kvm.h ---------------------------------------------------------


class kvm_regs(ctypes.Structure):
    _fields_ = [(n, c_uint64) for n in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
    )]


class kvm_segment(ctypes.Structure):
    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    ]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(ctypes.Structure):
    _fields_ = [
        ("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment), ("fs", kvm_segment),
        ("gs", kvm_segment), ("ss", kvm_segment), ("tr", kvm_segment), ("ldt", kvm_segment),
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", c_uint64), ("cr2", c_uint64), ("cr3", c_uint64), ("cr4", c_uint64),
        ("cr8", c_uint64), ("efer", c_uint64), ("apic_base", c_uint64),
        ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_fpu(ctypes.Structure):
    _fields_ = [
        ("fpr", (c_uint8 * 16) * 8),
        ("fcw", c_uint16),
        ("fsw", c_uint16),
        ("ftwx", c_uint8),
        ("pad1", c_uint8),
        ("last_opcode", c_uint16),
        ("last_ip", c_uint64),
        ("last_dp", c_uint64),
        ("xmm", (c_uint8 * 16) * 16),
        ("mxcsr", c_uint32),
        ("pad2", c_uint32),
    ]


class kvm_msr_entry(ctypes.Structure):
    _fields_ = [("index", c_uint32), ("reserved", c_uint32), ("data", c_uint64)]


class kvm_msrs(ctypes.Structure):
    """Header only: the entries follow (see msrs_type)."""

    _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32), ("entries", kvm_msr_entry * 0)]


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [
        ("function", c_uint32), ("index", c_uint32), ("flags", c_uint32),
        ("eax", c_uint32), ("ebx", c_uint32), ("ecx", c_uint32), ("edx", c_uint32),
        ("padding", c_uint32 * 3),
    ]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0


class kvm_cpuid2(ctypes.Structure):
    """Header only: the entries follow (see cpuid2_type)."""

    _fields_ = [("nent", c_uint32), ("padding", c_uint32), ("entries", kvm_cpuid_entry2 * 0)]


def cpuid2_type(n: int) -> type[ctypes.Structure]:
    """A kvm_cpuid2 with room for n entries (the C flexible array member)."""
    return type(f"kvm_cpuid2_{n}", (ctypes.Structure,), {
        "_fields_": [("nent", c_uint32), ("padding", c_uint32), ("entries", kvm_cpuid_entry2 * n)]
    })


def msrs_type(n: int) -> type[ctypes.Structure]:
    """A kvm_msrs with room for n entries."""
    return type(f"kvm_msrs_{n}", (ctypes.Structure,), {
        "_fields_": [("nmsrs", c_uint32), ("pad", c_uint32), ("entries", kvm_msr_entry * n)]
    })


class kvm_lapic_state(ctypes.Structure):
    _fields_ = [("regs", c_char * 1024)]


class kvm_pit_config(ctypes.Structure):
    _fields_ = [("flags", c_uint32), ("pad", c_uint32 * 15)]


KVM_PIT_SPEAKER_DUMMY = 1


class kvm_guest_debug_arch(ctypes.Structure):
    _fields_ = [("debugreg", c_uint64 * 8)]


class kvm_guest_debug(ctypes.Structure):
    _fields_ = [("control", c_uint32), ("pad", c_uint32), ("arch", kvm_guest_debug_arch)]


# kvm_guest_debug.control: the generic bits (<linux/kvm.h>) and x86's (<asm/kvm.h>).
KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW_BP = 0x00020000
KVM_GUESTDBG_INJECT_DB = 0x00040000
KVM_GUESTDBG_INJECT_BP = 0x00080000
KVM_GUESTDBG_BLOCKIRQ = 0x00100000


class kvm_debug_exit_arch(ctypes.Structure):
    _fields_ = [("exception", c_uint32), ("pad", c_uint32), ("pc", c_uint64), ("dr6", c_uint64),
                ("dr7", c_uint64)]


class _kvm_vcpu_events_exception(ctypes.Structure):
    _fields_ = [("injected", c_uint8), ("nr", c_uint8), ("has_error_code", c_uint8),
                ("pending", c_uint8), ("error_code", c_uint32)]


class _kvm_vcpu_events_interrupt(ctypes.Structure):
    _fields_ = [("injected", c_uint8), ("nr", c_uint8), ("soft", c_uint8), ("shadow", c_uint8)]


class _kvm_vcpu_events_nmi(ctypes.Structure):
    _fields_ = [("injected", c_uint8), ("pending", c_uint8), ("masked", c_uint8), ("pad", c_uint8)]


class _kvm_vcpu_events_smi(ctypes.Structure):
    _fields_ = [("smm", c_uint8), ("pending", c_uint8), ("smm_inside_nmi", c_uint8),
                ("latched_init", c_uint8)]


class kvm_vcpu_events(ctypes.Structure):
    _fields_ = [
        ("exception", _kvm_vcpu_events_exception),
        ("interrupt", _kvm_vcpu_events_interrupt),
        ("nmi", _kvm_vcpu_events_nmi),
        ("sipi_vector", c_uint32),
        ("flags", c_uint32),
        ("smi", _kvm_vcpu_events_smi),
        ("triple_fault_pending", c_uint8),
        ("reserved", c_uint8 * 26),
        ("exception_has_payload", c_uint8),
        ("exception_payload", c_uint64),
    ]


class kvm_sregs2(ctypes.Structure):
    """KVM_GET/SET_SREGS2 (KVM_CAP_SREGS2): kvm_sregs without the interrupt bitmap, with the PAE PDPTRs."""

    _fields_ = [
        ("cs", kvm_segment), ("ds", kvm_segment), ("es", kvm_segment), ("fs", kvm_segment),
        ("gs", kvm_segment), ("ss", kvm_segment), ("tr", kvm_segment), ("ldt", kvm_segment),
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        ("cr0", c_uint64), ("cr2", c_uint64), ("cr3", c_uint64), ("cr4", c_uint64),
        ("cr8", c_uint64), ("efer", c_uint64), ("apic_base", c_uint64),
        ("flags", c_uint64), ("pdptrs", c_uint64 * 4),
    ]


KVM_SREGS2_FLAGS_PDPTRS_VALID = 1


class kvm_xsave(ctypes.Structure):
    _fields_ = [("region", c_uint32 * 1024)]


KVM_MAX_XCRS = 16


class kvm_xcr(ctypes.Structure):
    _fields_ = [("xcr", c_uint32), ("reserved", c_uint32), ("value", c_uint64)]


class kvm_xcrs(ctypes.Structure):
    _fields_ = [("nr_xcrs", c_uint32), ("flags", c_uint32), ("xcrs", kvm_xcr * KVM_MAX_XCRS),
                ("padding", c_uint64 * 16)]


class kvm_debugregs(ctypes.Structure):
    _fields_ = [("db", c_uint64 * 4), ("dr6", c_uint64), ("dr7", c_uint64), ("flags", c_uint64),
                ("reserved", c_uint64 * 9)]


class kvm_msr_list(ctypes.Structure):
    """Header only: nmsrs __u32 indices follow."""

    _fields_ = [("nmsrs", c_uint32)]


class kvm_msr_filter_range(ctypes.Structure):
    _fields_ = [("flags", c_uint32), ("nmsrs", c_uint32), ("base", c_uint32), ("bitmap", c_uint64)]


KVM_MSR_FILTER_MAX_RANGES = 16
KVM_MSR_FILTER_READ = 1 << 0
KVM_MSR_FILTER_WRITE = 1 << 1
KVM_MSR_FILTER_DEFAULT_DENY = 1 << 0


class kvm_msr_filter(ctypes.Structure):
    _fields_ = [("flags", c_uint32), ("ranges", kvm_msr_filter_range * KVM_MSR_FILTER_MAX_RANGES)]


class kvm_pit_state2(ctypes.Structure):
    # struct kvm_pit_channel_state channels[3] (24 bytes each), kept as bytes: nothing reads a channel.
    _fields_ = [("channels", c_uint8 * 72), ("flags", c_uint32), ("reserved", c_uint32 * 9)]


# ---- include/uapi/linux/kvm.h -------------------------------------------------------------------


class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    ]


KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1


class kvm_irq_level(ctypes.Structure):
    # union { __u32 irq; __s32 status; }; __u32 level;
    _fields_ = [("irq", c_uint32), ("level", c_uint32)]


class kvm_irqfd(ctypes.Structure):
    _fields_ = [("fd", c_uint32), ("gsi", c_uint32), ("flags", c_uint32), ("resamplefd", c_uint32),
                ("pad", c_uint8 * 16)]


KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1


class kvm_ioeventfd(ctypes.Structure):
    _fields_ = [("datamatch", c_uint64), ("addr", c_uint64), ("len", c_uint32), ("fd", c_int32),
                ("flags", c_uint32), ("pad", c_uint8 * 36)]


KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2


class kvm_mp_state(ctypes.Structure):
    _fields_ = [("mp_state", c_uint32)]


class KvmMpState(IntEnum):
    """KVM_MP_STATE_* (<linux/kvm.h>): where a vCPU is in the INIT/SIPI protocol."""

    RUNNABLE = 0
    UNINITIALIZED = 1
    INIT_RECEIVED = 2
    HALTED = 3
    SIPI_RECEIVED = 4
    STOPPED = 5
    CHECK_STOP = 6
    OPERATING = 7
    LOAD = 8
    AP_RESET_HOLD = 9
    SUSPENDED = 10


class kvm_enable_cap(ctypes.Structure):
    _fields_ = [("cap", c_uint32), ("flags", c_uint32), ("args", c_uint64 * 4), ("pad", c_uint8 * 64)]


class kvm_irq_routing_irqchip(ctypes.Structure):
    _fields_ = [("irqchip", c_uint32), ("pin", c_uint32)]


class kvm_irq_routing_msi(ctypes.Structure):
    # __u32 address_lo, address_hi, data; union { __u32 pad; __u32 devid; };
    _fields_ = [("address_lo", c_uint32), ("address_hi", c_uint32), ("data", c_uint32), ("devid", c_uint32)]


class _kvm_irq_routing_entry_u(ctypes.Union):
    _fields_ = [("irqchip", kvm_irq_routing_irqchip), ("msi", kvm_irq_routing_msi), ("pad", c_uint32 * 8)]


class kvm_irq_routing_entry(ctypes.Structure):
    _fields_ = [("gsi", c_uint32), ("type", c_uint32), ("flags", c_uint32), ("pad", c_uint32),
                ("u", _kvm_irq_routing_entry_u)]


KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2


class kvm_irq_routing(ctypes.Structure):
    """Header only: nr kvm_irq_routing_entry follow."""

    _fields_ = [("nr", c_uint32), ("flags", c_uint32)]


class kvm_device_attr(ctypes.Structure):
    _fields_ = [("flags", c_uint32), ("group", c_uint32), ("attr", c_uint64), ("addr", c_uint64)]


class kvm_create_device(ctypes.Structure):
    _fields_ = [("type", c_uint32), ("fd", c_uint32), ("flags", c_uint32)]


class kvm_clock_data(ctypes.Structure):
    _fields_ = [("clock", c_uint64), ("flags", c_uint32), ("pad0", c_uint32), ("realtime", c_uint64),
                ("host_tsc", c_uint64), ("pad", c_uint32 * 4)]


KVM_CLOCK_TSC_STABLE = 1 << 1
KVM_CLOCK_REALTIME = 1 << 2
KVM_CLOCK_HOST_TSC = 1 << 3


class kvm_signal_mask(ctypes.Structure):
    """Header only: len bytes of sigset follow."""

    _fields_ = [("len", c_uint32)]


class kvm_msi(ctypes.Structure):
    _fields_ = [("address_lo", c_uint32), ("address_hi", c_uint32), ("data", c_uint32), ("flags", c_uint32),
                ("devid", c_uint32), ("pad", c_uint8 * 12)]


class kvm_coalesced_mmio_zone(ctypes.Structure):
    # __u64 addr; __u32 size; union { __u32 pad; __u32 pio; };
    _fields_ = [("addr", c_uint64), ("size", c_uint32), ("pio", c_uint32)]


class kvm_dirty_log(ctypes.Structure):
    # union { void *dirty_bitmap; __u64 padding2; }
    _fields_ = [("slot", c_uint32), ("padding1", c_uint32), ("dirty_bitmap", c_uint64)]


class kvm_interrupt(ctypes.Structure):
    _fields_ = [("irq", c_uint32)]


class kvm_vapic_addr(ctypes.Structure):
    _fields_ = [("vapic_addr", c_uint64)]


class kvm_tpr_access_ctl(ctypes.Structure):
    _fields_ = [("enabled", c_uint32), ("flags", c_uint32), ("reserved", c_uint32 * 8)]


class kvm_pic_state(ctypes.Structure):
    """One 8259A of the in-kernel PIC (arch/x86/include/uapi/asm/kvm.h)."""

    _fields_ = [(n, c_uint8) for n in (
        "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select", "poll", "special_mask",
        "init_state", "auto_eoi", "rotate_on_auto_eoi", "special_fully_nested_mode", "init4", "elcr",
        "elcr_mask")]


KVM_IOAPIC_NUM_PINS = 24


class kvm_ioapic_state(ctypes.Structure):
    """The in-kernel IOAPIC; each redirection entry is the 64-bit `bits` of the header's union."""

    _fields_ = [("base_address", c_uint64), ("ioregsel", c_uint32), ("id", c_uint32), ("irr", c_uint32),
                ("pad", c_uint32), ("redirtbl", c_uint64 * KVM_IOAPIC_NUM_PINS)]


class _kvm_irqchip_chip(ctypes.Union):
    _fields_ = [("dummy", c_char * 512), ("pic", kvm_pic_state), ("ioapic", kvm_ioapic_state)]


KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2


class kvm_irqchip(ctypes.Structure):
    _fields_ = [("chip_id", c_uint32), ("pad", c_uint32), ("chip", _kvm_irqchip_chip)]


# struct kvm_run and the members of its exit union.

class _kvm_run_io(ctypes.Structure):
    _fields_ = [("direction", c_uint8), ("size", c_uint8), ("port", c_uint16), ("count", c_uint32),
                ("data_offset", c_uint64)]


KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1


class _kvm_run_mmio(ctypes.Structure):
    _fields_ = [("phys_addr", c_uint64), ("data", c_uint8 * 8), ("len", c_uint32), ("is_write", c_uint8)]


class _kvm_run_fail_entry(ctypes.Structure):
    _fields_ = [("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32)]


class _kvm_run_internal(ctypes.Structure):
    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class _kvm_run_system_event(ctypes.Structure):
    # __u32 type; __u32 ndata; union { __u64 flags; __u64 data[16]; };
    _fields_ = [("type", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class _kvm_run_hw(ctypes.Structure):
    _fields_ = [("hardware_exit_reason", c_uint64)]


class _kvm_run_ex(ctypes.Structure):
    _fields_ = [("exception", c_uint32), ("error_code", c_uint32)]


class _kvm_run_exit(ctypes.Union):
    _fields_ = [
        ("hw", _kvm_run_hw),
        ("fail_entry", _kvm_run_fail_entry),
        ("ex", _kvm_run_ex),
        ("io", _kvm_run_io),
        ("debug", kvm_debug_exit_arch),
        ("mmio", _kvm_run_mmio),
        ("internal", _kvm_run_internal),
        ("system_event", _kvm_run_system_event),
        ("padding", c_char * 256),
    ]


class kvm_run(ctypes.Structure):
    _anonymous_ = ("u",)
    _fields_ = [
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("u", _kvm_run_exit),
        ("kvm_valid_regs", c_uint64),
        ("kvm_dirty_regs", c_uint64),
        ("s", c_char * 2048),
    ]


class KvmExit(IntEnum):
    """KVM_EXIT_* reasons (<linux/kvm.h>)."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    NMI = 16
    INTERNAL_ERROR = 17
    SYSTEM_EVENT = 24
    IOAPIC_EOI = 26
    X86_RDMSR = 29
    X86_WRMSR = 30
    X86_BUS_LOCK = 33
    NOTIFY = 37


class KvmInternalError(IntEnum):
    """KVM_INTERNAL_ERROR_* suberrors."""

    EMULATION = 1
    SIMUL_EX = 2
    DELIVERY_EV = 3
    UNEXPECTED_EXIT_REASON = 4


class KvmSystemEvent(IntEnum):
    SHUTDOWN = 1
    RESET = 2
    CRASH = 3
    WAKEUP = 4
    SUSPEND = 5
    SEV_TERM = 6


class KvmCap(IntEnum):
    """KVM_CAP_* numbers of <linux/kvm.h> (Linux 6.1), the generic and x86 ones: those pyvmm checks and
    those a VMM asks about, which kvmtrace names."""

    IRQCHIP = 0
    HLT = 1
    MMU_SHADOW_CACHE_CONTROL = 2
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    VAPIC = 6
    EXT_CPUID = 7
    CLOCKSOURCE = 8
    NR_VCPUS = 9
    NR_MEMSLOTS = 10
    PIT = 11
    NOP_IO_DELAY = 12
    PV_MMU = 13
    MP_STATE = 14
    COALESCED_MMIO = 15
    SYNC_MMU = 16
    IOMMU = 18
    DESTROY_MEMORY_REGION_WORKS = 21
    USER_NMI = 22
    SET_GUEST_DEBUG = 23
    REINJECT_CONTROL = 24
    IRQ_ROUTING = 25
    IRQ_INJECT_STATUS = 26
    ASSIGN_DEV_IRQ = 29
    JOIN_MEMORY_REGIONS_WORKS = 30
    MCE = 31
    IRQFD = 32
    PIT2 = 33
    SET_BOOT_CPU_ID = 34
    PIT_STATE2 = 35
    IOEVENTFD = 36
    SET_IDENTITY_MAP_ADDR = 37
    XEN_HVM = 38
    ADJUST_CLOCK = 39
    INTERNAL_ERROR_DATA = 40
    VCPU_EVENTS = 41
    HYPERV = 44
    HYPERV_VAPIC = 45
    HYPERV_SPIN = 46
    PCI_SEGMENT = 47
    INTR_SHADOW = 49
    DEBUGREGS = 50
    X86_ROBUST_SINGLESTEP = 51
    ENABLE_CAP = 54
    XSAVE = 55
    XCRS = 56
    ASYNC_PF = 59
    TSC_CONTROL = 60
    GET_TSC_KHZ = 61
    MAX_VCPUS = 66
    SW_TLB = 69
    ONE_REG = 70
    TSC_DEADLINE_TIMER = 72
    SYNC_REGS = 74
    PCI_2_3 = 75
    KVMCLOCK_CTRL = 76
    SIGNAL_MSI = 77
    READONLY_MEM = 81
    IRQFD_RESAMPLE = 82
    DEVICE_CTRL = 89
    EXT_EMUL_CPUID = 95
    HYPERV_TIME = 96
    IOAPIC_POLARITY_IGNORED = 97
    ENABLE_CAP_VM = 98
    IOEVENTFD_NO_LENGTH = 100
    VM_ATTRIBUTES = 101
    CHECK_EXTENSION_VM = 105
    DISABLE_QUIRKS = 116
    X86_SMM = 117
    MULTI_ADDRESS_SPACE = 118
    GUEST_DEBUG_HW_BPS = 119
    GUEST_DEBUG_HW_WPS = 120
    SPLIT_IRQCHIP = 121
    IOEVENTFD_ANY_LENGTH = 122
    HYPERV_SYNIC = 123
    VCPU_ATTRIBUTES = 127
    MAX_VCPU_ID = 128
    X2APIC_API = 129
    MSI_DEVID = 131
    IMMEDIATE_EXIT = 136
    X86_DISABLE_EXITS = 143
    HYPERV_SYNIC2 = 148
    HYPERV_VP_INDEX = 149
    GET_MSR_FEATURES = 153
    HYPERV_EVENTFD = 154
    HYPERV_TLBFLUSH = 155
    NESTED_STATE = 157
    MSR_PLATFORM_INFO = 159
    HYPERV_SEND_IPI = 161
    COALESCED_PIO = 162
    HYPERV_ENLIGHTENED_VMCS = 163
    EXCEPTION_PAYLOAD = 164
    MANUAL_DIRTY_LOG_PROTECT = 166
    HYPERV_CPUID = 167
    MANUAL_DIRTY_LOG_PROTECT2 = 168
    PMU_EVENT_FILTER = 173
    HYPERV_DIRECT_TLBFLUSH = 175
    HALT_POLL = 182
    ASYNC_PF_INT = 183
    LAST_CPU = 184
    SMALLER_MAXPHYADDR = 185
    STEAL_TIME = 187
    X86_USER_SPACE_MSR = 188
    X86_MSR_FILTER = 189
    ENFORCE_PV_FEATURE_CPUID = 190
    SYS_HYPERV_CPUID = 191
    DIRTY_LOG_RING = 192
    X86_BUS_LOCK_EXIT = 193
    SET_GUEST_DEBUG2 = 195
    SGX_ATTRIBUTE = 196
    VM_COPY_ENC_CONTEXT_FROM = 197
    PTP_KVM = 198
    HYPERV_ENFORCE_CPUID = 199
    SREGS2 = 200
    EXIT_HYPERCALL = 201
    BINARY_STATS_FD = 203
    EXIT_ON_EMULATION_FAILURE = 204
    VM_MOVE_ENC_CONTEXT_FROM = 206
    VM_GPA_BITS = 207
    XSAVE2 = 208
    SYS_ATTRIBUTES = 209
    PMU_CAPABILITY = 212
    DISABLE_QUIRKS2 = 213
    VM_TSC_CONTROL = 214
    SYSTEM_EVENT_DATA = 215
    X86_TRIPLE_FAULT_EVENT = 218
    X86_NOTIFY_VMEXIT = 219
    VM_DISABLE_NX_HUGE_PAGES = 220
    DIRTY_LOG_RING_ACQ_REL = 223


# ---- ioctl numbers ------------------------------------------------------------------------------
# system fd
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, kvm_msr_list)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, kvm_cpuid2)
KVM_GET_EMULATED_CPUID = _IOWR(KVMIO, 0x09, kvm_cpuid2)
KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(KVMIO, 0x0A, kvm_msr_list)
# VM fd
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, kvm_dirty_log)
KVM_SET_NR_MMU_PAGES = _IO(KVMIO, 0x44)
KVM_GET_NR_MMU_PAGES = _IO(KVMIO, 0x45)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, c_uint64)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, kvm_irq_level)
KVM_GET_IRQCHIP = _IOWR(KVMIO, 0x62, kvm_irqchip)
KVM_SET_IRQCHIP = _IOR(KVMIO, 0x63, kvm_irqchip)    # (sic) _IOR in the header
KVM_REGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x67, kvm_coalesced_mmio_zone)
KVM_UNREGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x68, kvm_coalesced_mmio_zone)
KVM_IRQ_LINE_STATUS = _IOWR(KVMIO, 0x67, kvm_irq_level)
KVM_SET_GSI_ROUTING = _IOW(KVMIO, 0x6A, kvm_irq_routing)
KVM_IRQFD = _IOW(KVMIO, 0x76, kvm_irqfd)
KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, kvm_pit_config)
KVM_SET_BOOT_CPU_ID = _IO(KVMIO, 0x78)
KVM_IOEVENTFD = _IOW(KVMIO, 0x79, kvm_ioeventfd)
KVM_SET_CLOCK = _IOW(KVMIO, 0x7B, kvm_clock_data)
KVM_GET_CLOCK = _IOR(KVMIO, 0x7C, kvm_clock_data)
KVM_GET_PIT2 = _IOR(KVMIO, 0x9F, kvm_pit_state2)
KVM_SET_PIT2 = _IOW(KVMIO, 0xA0, kvm_pit_state2)
KVM_SIGNAL_MSI = _IOW(KVMIO, 0xA5, kvm_msi)
KVM_X86_SET_MSR_FILTER = _IOW(KVMIO, 0xC6, kvm_msr_filter)
KVM_CREATE_DEVICE = _IOWR(KVMIO, 0xE0, kvm_create_device)
# VM, vCPU and device fds (and /dev/kvm for system attributes)
KVM_ENABLE_CAP = _IOW(KVMIO, 0xA3, kvm_enable_cap)
KVM_SET_DEVICE_ATTR = _IOW(KVMIO, 0xE1, kvm_device_attr)
KVM_GET_DEVICE_ATTR = _IOW(KVMIO, 0xE2, kvm_device_attr)
KVM_HAS_DEVICE_ATTR = _IOW(KVMIO, 0xE3, kvm_device_attr)
KVM_GET_STATS_FD = _IO(KVMIO, 0xCE)
# vCPU fd
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_INTERRUPT = _IOW(KVMIO, 0x86, kvm_interrupt)
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, kvm_msrs)
KVM_SET_MSRS = _IOW(KVMIO, 0x89, kvm_msrs)
KVM_SET_SIGNAL_MASK = _IOW(KVMIO, 0x8B, kvm_signal_mask)
KVM_GET_FPU = _IOR(KVMIO, 0x8C, kvm_fpu)
KVM_SET_FPU = _IOW(KVMIO, 0x8D, kvm_fpu)
KVM_GET_LAPIC = _IOR(KVMIO, 0x8E, kvm_lapic_state)
KVM_SET_LAPIC = _IOW(KVMIO, 0x8F, kvm_lapic_state)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, kvm_cpuid2)
KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, kvm_cpuid2)
KVM_TPR_ACCESS_REPORTING = _IOWR(KVMIO, 0x92, kvm_tpr_access_ctl)
KVM_SET_VAPIC_ADDR = _IOW(KVMIO, 0x93, kvm_vapic_addr)
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, kvm_mp_state)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, kvm_mp_state)
KVM_NMI = _IO(KVMIO, 0x9A)
KVM_SET_GUEST_DEBUG = _IOW(KVMIO, 0x9B, kvm_guest_debug)
KVM_X86_SETUP_MCE = _IOW(KVMIO, 0x9C, c_uint64)
KVM_X86_GET_MCE_CAP_SUPPORTED = _IOR(KVMIO, 0x9D, c_uint64)
KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9F, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xA0, kvm_vcpu_events)
KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xA1, kvm_debugregs)
KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xA2, kvm_debugregs)
KVM_SET_TSC_KHZ = _IO(KVMIO, 0xA2)
KVM_GET_TSC_KHZ = _IO(KVMIO, 0xA3)
KVM_GET_XSAVE = _IOR(KVMIO, 0xA4, kvm_xsave)
KVM_SET_XSAVE = _IOW(KVMIO, 0xA5, kvm_xsave)
KVM_GET_XCRS = _IOR(KVMIO, 0xA6, kvm_xcrs)
KVM_SET_XCRS = _IOW(KVMIO, 0xA7, kvm_xcrs)
KVM_KVMCLOCK_CTRL = _IO(KVMIO, 0xAD)
KVM_GET_SUPPORTED_HV_CPUID = _IOWR(KVMIO, 0xC1, kvm_cpuid2)
KVM_GET_SREGS2 = _IOR(KVMIO, 0xCC, kvm_sregs2)
KVM_SET_SREGS2 = _IOW(KVMIO, 0xCD, kvm_sregs2)
KVM_GET_XSAVE2 = _IOR(KVMIO, 0xCF, kvm_xsave)
