"""Byte layouts of the kvm_run members that the vCPU loop reads on every exit (no classes, no allocation).

The typed decoding of every exit is kvm/exits.py; the loop reads the frequent exits (port I/O, MMIO)
straight from the shared page with these precompiled structs, and only the rare exits go through
exits.decode().  Kept apart so that starting a VM does not pay for the decoder's dataclasses.
"""

from __future__ import annotations

import struct

from .abi import kvm_run

EXIT_REASON = struct.Struct("<I")
EXIT_REASON_OFFSET = kvm_run.exit_reason.offset
EXIT_UNION_OFFSET = kvm_run.u.offset
IO = struct.Struct("<BBHIQ")        # direction, size, port, count, data_offset
MMIO = struct.Struct("<Q8sIB")      # phys_addr, data[8], len, is_write
MMIO_DATA_OFFSET = EXIT_UNION_OFFSET + 8
