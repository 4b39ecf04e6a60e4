"""The ptrace(2) and seccomp(2) ABI kvmtrace needs beyond python-ptrace: ctypes mirrors named as in
<linux/ptrace.h>, <linux/filter.h> and <linux/seccomp.h>, and the BPF filter that traps KVM ioctls."""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_int64, c_uint8, c_uint16, c_uint32, c_uint64

from ..kvm.ioctl import _IOC_TYPESHIFT, KVMIO

# ---- <linux/ptrace.h> -------------------------------------------------------------------------
# python-ptrace (0.9.9) knows PTRACE_ATTACH, not PTRACE_SEIZE and what came with it (Linux 3.4 and 5.3).
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_GET_SYSCALL_INFO = 0x420E

PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEFORK = 0x2
PTRACE_O_TRACEVFORK = 0x4
PTRACE_O_TRACECLONE = 0x8
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEEXIT = 0x40
PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 0x100000

PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128

PTRACE_SYSCALL_INFO_NONE = 0
PTRACE_SYSCALL_INFO_ENTRY = 1
PTRACE_SYSCALL_INFO_EXIT = 2
PTRACE_SYSCALL_INFO_SECCOMP = 3


class _ptrace_syscall_info_entry(ctypes.Structure):
    _fields_ = [("nr", c_uint64), ("args", c_uint64 * 6)]


class _ptrace_syscall_info_exit(ctypes.Structure):
    _fields_ = [("rval", c_int64), ("is_error", c_uint8)]


class _ptrace_syscall_info_seccomp(ctypes.Structure):
    _fields_ = [("nr", c_uint64), ("args", c_uint64 * 6), ("ret_data", c_uint32)]


class _ptrace_syscall_info_u(ctypes.Union):
    _fields_ = [("entry", _ptrace_syscall_info_entry), ("exit", _ptrace_syscall_info_exit),
                ("seccomp", _ptrace_syscall_info_seccomp)]


class ptrace_syscall_info(ctypes.Structure):
    """What PTRACE_GET_SYSCALL_INFO reports at a syscall or seccomp stop: which stop, and its numbers."""

    _anonymous_ = ("u",)
    _fields_ = [("op", c_uint8), ("pad", c_uint8 * 3), ("arch", c_uint32),
                ("instruction_pointer", c_uint64), ("stack_pointer", c_uint64), ("u", _ptrace_syscall_info_u)]


# ---- <linux/filter.h>, <linux/bpf_common.h> ---------------------------------------------------------


class sock_filter(ctypes.Structure):
    _fields_ = [("code", c_uint16), ("jt", c_uint8), ("jf", c_uint8), ("k", c_uint32)]


class sock_fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(sock_filter))]


BPF_LD, BPF_ALU, BPF_JMP, BPF_RET = 0x00, 0x04, 0x05, 0x06
BPF_W, BPF_ABS = 0x00, 0x20
BPF_AND, BPF_JEQ, BPF_K = 0x50, 0x10, 0x00

# ---- <linux/seccomp.h>, <linux/audit.h>, <linux/prctl.h> ---------------------------------------------


class seccomp_data(ctypes.Structure):
    _fields_ = [("nr", c_int32), ("arch", c_uint32), ("instruction_pointer", c_uint64), ("args", c_uint64 * 6)]


SECCOMP_MODE_FILTER = 2
SECCOMP_RET_TRACE = 0x7FF0_0000
SECCOMP_RET_ALLOW = 0x7FFF_0000
AUDIT_ARCH_X86_64 = 0xC000_003E      # EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22

NR_ioctl = 16                         # x86-64 system call number (a unit test checks python-ptrace's table)


def kvm_ioctl_filter() -> list[tuple[int, int, int, int]]:
    """A seccomp filter, as (code, jt, jf, k), that sends the tracer every x86-64 ioctl whose request's
    type byte is KVMIO (a PTRACE_EVENT_SECCOMP stop) and lets every other system call through untouched:
    the traced VMM then stops only where kvmtrace has something to show (strace --seccomp-bpf does the
    same for its system call filters).  Jump offsets count from the next instruction."""
    args1_low = seccomp_data.args.offset + 8          # args[1] (the request), low 32 bits (little-endian)
    return [
        (BPF_LD | BPF_W | BPF_ABS, 0, 0, seccomp_data.arch.offset),
        (BPF_JMP | BPF_JEQ | BPF_K, 0, 5, AUDIT_ARCH_X86_64),           # another ABI: allow
        (BPF_LD | BPF_W | BPF_ABS, 0, 0, seccomp_data.nr.offset),
        (BPF_JMP | BPF_JEQ | BPF_K, 0, 3, NR_ioctl),                    # not ioctl: allow
        (BPF_LD | BPF_W | BPF_ABS, 0, 0, args1_low),
        (BPF_ALU | BPF_AND | BPF_K, 0, 0, 0xFF << _IOC_TYPESHIFT),
        (BPF_JMP | BPF_JEQ | BPF_K, 1, 0, KVMIO << _IOC_TYPESHIFT),     # KVMIO: trace
        (BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW),
        (BPF_RET | BPF_K, 0, 0, SECCOMP_RET_TRACE),
    ]


def bpf_program(insns: list[tuple[int, int, int, int]]) -> tuple[sock_fprog, ctypes.Array]:
    """A sock_fprog over insns; the array is returned too, since the program only points at it."""
    array = (sock_filter * len(insns))(*(sock_filter(*i) for i in insns))
    return sock_fprog(len(insns), ctypes.cast(array, ctypes.POINTER(sock_filter))), array


def run_filter(insns: list[tuple[int, int, int, int]], data: seccomp_data) -> int:
    """What the kernel's classic-BPF interpreter returns for data: enough of it (the instructions above)
    for unit tests to check the filter without installing it."""
    raw = bytes(data)
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == BPF_LD | BPF_W | BPF_ABS:
            acc = int.from_bytes(raw[k:k + 4], "little")
        elif code == BPF_ALU | BPF_AND | BPF_K:
            acc &= k
        elif code == BPF_JMP | BPF_JEQ | BPF_K:
            pc += jt if acc == k else jf
        elif code == BPF_RET | BPF_K:
            return k
        else:
            raise ValueError(f"instruction {code:#x} is not one the filter uses")
        pc += 1


def install_kvm_ioctl_filter() -> None:
    """Install the filter on the calling process (the child, between fork and exec); raises OSError.

    Without CAP_SYS_ADMIN the kernel asks for no_new_privs first (seccomp(2)); root keeps the right to
    run set-user-ID programs."""
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong)
    if os.geteuid() != 0 and prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    prog, _keep = bpf_program(kvm_ioctl_filter())
    if prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
