"""Decoding of kvm_run after KVM_RUN returns: typed exits, and the byte layouts the hot loop reads."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .abi import KvmExit, KvmInternalError, KvmSystemEvent, kvm_run
from .runlayout import EXIT_REASON, EXIT_REASON_OFFSET, EXIT_UNION_OFFSET, IO, MMIO, MMIO_DATA_OFFSET  # noqa: F401 - re-exported: the byte layouts belong with the decoder


@dataclass(frozen=True, slots=True)
class IoExit:
    port: int
    size: int
    count: int
    is_write: bool
    data_offset: int


@dataclass(frozen=True, slots=True)
class MmioExit:
    gpa: int
    length: int
    is_write: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class HltExit:
    pass


@dataclass(frozen=True, slots=True)
class ShutdownExit:
    """The guest triple-faulted (or otherwise requested a shutdown the CPU cannot survive)."""


@dataclass(frozen=True, slots=True)
class FailEntryExit:
    hardware_entry_failure_reason: int
    cpu: int


@dataclass(frozen=True, slots=True)
class InternalErrorExit:
    suberror: int
    data: tuple[int, ...]

    @property
    def suberror_name(self) -> str:
        try:
            return KvmInternalError(self.suberror).name
        except ValueError:
            return str(self.suberror)

    @property
    def insn_bytes(self) -> bytes:
        """For an emulation failure that carries the instruction (KVM_INTERNAL_ERROR_EMULATION with
        KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES): <linux/kvm.h>'s emulation_failure
        overlay puts flags in data[0], then insn_size (one byte) and up to 15 instruction bytes."""
        if self.suberror != KvmInternalError.EMULATION or len(self.data) < 3 or not (self.data[0] & 1):
            return b""
        raw = struct.pack("<QQ", self.data[1], self.data[2])
        return raw[1 : 1 + min(raw[0], 15)]


@dataclass(frozen=True, slots=True)
class SystemEventExit:
    type: int
    data: tuple[int, ...]

    @property
    def type_name(self) -> str:
        try:
            return KvmSystemEvent(self.type).name
        except ValueError:
            return str(self.type)


@dataclass(frozen=True, slots=True)
class DebugExit:
    exception: int
    pc: int
    dr6: int
    dr7: int


@dataclass(frozen=True, slots=True)
class OtherExit:
    reason: int

    @property
    def reason_name(self) -> str:
        try:
            return KvmExit(self.reason).name
        except ValueError:
            return f"exit {self.reason}"


__all__ = ["EXIT_REASON", "EXIT_REASON_OFFSET", "EXIT_UNION_OFFSET", "IO", "MMIO", "MMIO_DATA_OFFSET",
           "IoExit", "MmioExit", "HltExit", "ShutdownExit", "FailEntryExit", "InternalErrorExit",
           "SystemEventExit", "DebugExit", "OtherExit", "Exit", "decode"]

Exit = (IoExit | MmioExit | HltExit | ShutdownExit | FailEntryExit | InternalErrorExit
        | SystemEventExit | DebugExit | OtherExit)


def decode(run: kvm_run) -> Exit:
    """The exit KVM reported in ``run``, as one typed value."""
    reason = run.exit_reason
    match reason:
        case KvmExit.IO:
            io = run.io
            return IoExit(io.port, io.size, io.count, bool(io.direction), io.data_offset)
        case KvmExit.MMIO:
            m = run.mmio
            return MmioExit(m.phys_addr, m.len, bool(m.is_write), bytes(m.data)[: m.len])
        case KvmExit.HLT:
            return HltExit()
        case KvmExit.SHUTDOWN:
            return ShutdownExit()
        case KvmExit.FAIL_ENTRY:
            f = run.fail_entry
            return FailEntryExit(f.hardware_entry_failure_reason, f.cpu)
        case KvmExit.INTERNAL_ERROR:
            i = run.internal
            n = min(i.ndata, 16)
            return InternalErrorExit(i.suberror, tuple(i.data[:n]))
        case KvmExit.SYSTEM_EVENT:
            s = run.system_event
            n = min(s.ndata, 16)
            return SystemEventExit(s.type, tuple(s.data[:n]))
        case KvmExit.DEBUG:
            d = run.debug
            return DebugExit(d.exception, d.pc, d.dr6, d.dr7)
        case _:
            return OtherExit(reason)
