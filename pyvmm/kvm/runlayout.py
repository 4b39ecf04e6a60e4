"""Byte layouts of the kvm_run members that the buses read on every exit (no classes, no allocation).

The typed decoding of every exit is kvm/exits.py; the buses read the frequent exits (port I/O, MMIO)
straight from the shared page with these precompiled structs, derived from kvm/abi.py's ctypes
definitions, and only the rare exits go through exits.decode().  Kept apart so that starting a VM does
not pay for the decoder's dataclasses.
"""

from __future__ import annotations

from ..cstruct import field_of, struct_of
from .abi import KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT, _kvm_run_io, _kvm_run_mmio, kvm_run

EXIT_REASON, EXIT_REASON_OFFSET = field_of(kvm_run, "exit_reason")
EXIT_UNION_OFFSET = kvm_run.u.offset
IO = struct_of(_kvm_run_io)         # direction, size, port, count, data_offset
MMIO = struct_of(_kvm_run_mmio)     # phys_addr, data[8], len, is_write (+ padding)
MMIO_DATA_OFFSET = EXIT_UNION_OFFSET + _kvm_run_mmio.data.offset

__all__ = ["EXIT_REASON", "EXIT_REASON_OFFSET", "EXIT_UNION_OFFSET", "IO", "MMIO", "MMIO_DATA_OFFSET",
           "KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT"]
