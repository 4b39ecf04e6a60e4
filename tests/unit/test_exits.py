"""kvm_run decoding, tested on a kvm_run laid out in a bytearray (no KVM)."""

import struct

from pyvmm.kvm import abi, exits


def _run(reason: int) -> tuple[bytearray, abi.kvm_run]:
    buf = bytearray(4096)
    run = abi.kvm_run.from_buffer(buf)
    run.exit_reason = reason
    return buf, run


def test_io_exit():
    buf, run = _run(abi.KvmExit.IO)
    run.io.direction = abi.KVM_EXIT_IO_OUT
    run.io.size = 1
    run.io.port = 0x3F8
    run.io.count = 1
    run.io.data_offset = 4000
    ex = exits.decode(run)
    assert ex == exits.IoExit(port=0x3F8, size=1, count=1, is_write=True, data_offset=4000)
    # The fast-path layout the vCPU loop reads agrees with the struct.
    assert exits.IO.unpack_from(buf, exits.EXIT_UNION_OFFSET) == (1, 1, 0x3F8, 1, 4000)


def test_mmio_exit():
    buf, run = _run(abi.KvmExit.MMIO)
    run.mmio.phys_addr = 0xD000_0070
    run.mmio.len = 4
    run.mmio.is_write = 1
    struct.pack_into("<I", buf, exits.MMIO_DATA_OFFSET, 0x0B)
    ex = exits.decode(run)
    assert ex == exits.MmioExit(gpa=0xD000_0070, length=4, is_write=True, data=b"\x0b\0\0\0")
    gpa, data, length, is_write = exits.MMIO.unpack_from(buf, exits.EXIT_UNION_OFFSET)
    assert (gpa, data[:4], length, is_write) == (0xD000_0070, b"\x0b\0\0\0", 4, 1)


def test_internal_error_with_instruction_bytes():
    _, run = _run(abi.KvmExit.INTERNAL_ERROR)
    run.internal.suberror = abi.KvmInternalError.EMULATION
    run.internal.ndata = 3
    run.internal.data[0] = 1      # KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
    raw = bytes([3]) + b"\x0f\x01\xca" + bytes(12)      # insn_size, then the bytes of clac
    run.internal.data[1] = int.from_bytes(raw[:8], "little")
    run.internal.data[2] = int.from_bytes(raw[8:], "little")
    ex = exits.decode(run)
    assert isinstance(ex, exits.InternalErrorExit)
    assert ex.suberror_name == "EMULATION"
    assert ex.insn_bytes == b"\x0f\x01\xca"


def test_simple_exits():
    for reason, cls in [(abi.KvmExit.HLT, exits.HltExit), (abi.KvmExit.SHUTDOWN, exits.ShutdownExit)]:
        _, run = _run(reason)
        assert isinstance(exits.decode(run), cls)
    _, run = _run(abi.KvmExit.SYSTEM_EVENT)
    run.system_event.type = abi.KvmSystemEvent.RESET
    ex = exits.decode(run)
    assert ex.type_name == "RESET"
    _, run = _run(abi.KvmExit.FAIL_ENTRY)
    run.fail_entry.hardware_entry_failure_reason = 0x21
    assert exits.decode(run) == exits.FailEntryExit(0x21, 0)
    _, run = _run(99)
    assert exits.decode(run).reason_name == "exit 99"
