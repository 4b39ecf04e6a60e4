"""kvmtrace's decoding and report without a tracee: structures laid out in a bytearray, kvm_run built
byte by byte, the seccomp filter run on seccomp_data, the ptrace ABI pinned to the kernel's sizes."""

from __future__ import annotations

import ctypes
import io
import json
import struct
import sys

import pytest

from pyvmm.kvm import abi
from pyvmm.kvm.runlayout import EXIT_UNION_OFFSET
from pyvmm.tools import kvmdecode as d
from pyvmm.tools import linux_abi as L
from pyvmm.tools.kvmreport import IoctlRecord, Report, format_line

BASE = 0x7F00_0000_0000


class Memory:
    """A tracee's memory: one bytearray at BASE; a read elsewhere fails as /proc/PID/mem does."""

    def __init__(self, size: int = 0x10000) -> None:
        self.buf = bytearray(size)

    def put(self, offset: int, obj) -> int:
        raw = bytes(obj)
        self.buf[offset:offset + len(raw)] = raw
        return BASE + offset

    def read(self, hva: int, n: int) -> bytes:
        off = hva - BASE
        if off < 0 or off + n > len(self.buf):
            raise OSError(14, "Bad address")
        return bytes(self.buf[off:off + n])


# ---- fd roles and request names --------------------------------------------------------------------


@pytest.mark.parametrize("link,role", [
    ("/dev/kvm", "system"),
    ("anon_inode:kvm-vm", "vm"),
    ("anon_inode:kvm-vcpu:0", "vcpu0"),
    ("anon_inode:kvm-vcpu:17", "vcpu17"),
    ("anon_inode:kvm-vfio", "kvm-vfio"),
])
def test_roles_from_fd_links(link, role):
    assert str(d.role_of_link(link)) == role


@pytest.mark.parametrize("link", ["/dev/null", "anon_inode:[eventfd]", "socket:[1234]", "anon_inode:kvm-vcpu-stats:0",
                                  "anon_inode:kvm-vcpu:x"])
def test_other_fds_are_not_kvm(link):
    assert d.role_of_link(link) is None


def test_request_names():
    assert d.request_name(abi.KVM_RUN) == "KVM_RUN"
    assert d.request_name(abi.KVM_SET_USER_MEMORY_REGION) == "KVM_SET_USER_MEMORY_REGION"
    assert d.request_name(0xC00CAEE0) == "KVM_CREATE_DEVICE"
    # A request pyvmm has no struct for: named by its _IOC fields.
    assert d.request_name(0xC0C0AEFF) == "KVMIO_IOWR(0xff, 192)"
    assert d.request_name(0xAEF0) == "KVMIO_IO(0xf0)"
    assert d.is_kvm_request(abi.KVM_RUN) and not d.is_kvm_request(0x5401)  # TCGETS
    assert d.reads_argument_at_exit(abi.KVM_GET_SREGS) and not d.reads_argument_at_exit(abi.KVM_SET_SREGS)


def test_every_named_request_is_unique_and_kvmio():
    assert len(d.IOCTL_NAMES) == len(set(d.IOCTL_NAMES.values()))
    assert all(d.is_kvm_request(r) for r in d.IOCTL_NAMES)
    assert all(r in d.IOCTL_NAMES for r in d.DECODERS), "a decoder for a request without a name"


# ---- arguments ---------------------------------------------------------------------------------------


def test_memory_region_as_the_issue_shows_it():
    mem = Memory()
    hva = mem.put(0, abi.kvm_userspace_memory_region(slot=0, flags=0, guest_phys_addr=0, memory_size=256 << 20,
                                                     userspace_addr=0x7F12_3456_0000))
    got = d.decode_argument(abi.KVM_SET_USER_MEMORY_REGION, hva, mem.read)
    assert got.text == ("{slot 0, flags 0, guest_phys_addr 0x0, memory_size 256 MiB, "
                        "userspace_addr 0x7f1234560000}")
    assert got.fields["memory_size"] == 256 << 20
    rom = mem.put(64, abi.kvm_userspace_memory_region(slot=1, flags=abi.KVM_MEM_READONLY,
                                                      guest_phys_addr=0xFFFF_0000, memory_size=0x1_0000))
    assert "flags READONLY" in d.decode_argument(abi.KVM_SET_USER_MEMORY_REGION, rom, mem.read).text
    gone = mem.put(128, abi.kvm_userspace_memory_region(slot=0, memory_size=0))
    assert "memory_size 0 bytes (delete)" in d.decode_argument(abi.KVM_SET_USER_MEMORY_REGION, gone, mem.read).text


def _cpuid(mem: Memory, entries: list[tuple[int, int, int, int, int, int]]) -> int:
    buf = abi.cpuid2_type(len(entries))()
    buf.nent = len(entries)
    for i, (fn, idx, a, b, c, dd) in enumerate(entries):
        buf.entries[i] = abi.kvm_cpuid_entry2(function=fn, index=idx, eax=a, ebx=b, ecx=c, edx=dd)
    return mem.put(0x100, buf)


def test_cpuid2_names_vendor_and_hypervisor_and_lists_entries_when_verbose():
    mem = Memory()
    vendor = struct.unpack("<3I", b"AuthenticAMD")     # ebx, edx, ecx order: "Auth" "enti" "cAMD"
    kvm = struct.unpack("<3I", b"KVMKVMKVM\0\0\0")
    hva = _cpuid(mem, [(0, 0, 0xD, vendor[0], vendor[2], vendor[1]), (1, 0, 0x00A10F11, 0, 1 << 31, 0),
                       (0x4000_0000, 0, 0x4000_0001, *kvm)])
    got = d.decode_argument(abi.KVM_SET_CPUID2, hva, mem.read)
    assert got.fields["nent"] == 3 and len(got.fields["entries"]) == 3
    assert "vendor 'AuthenticAMD'" in got.text and "hypervisor 'KVMKVMKVM'" in got.text
    assert "family/model 0x19/0x11" in got.text and "hypervisor bit on" in got.text
    assert got.verbose[1].startswith("  0x00000001.0  eax=00a10f11")


def test_cpuid2_with_a_huge_nent_reads_a_bounded_amount():
    mem = Memory(0x40000)
    hva = mem.put(0, struct.pack("<II", 0xFFFF_FFFF, 0))
    got = d.decode_argument(abi.KVM_SET_CPUID2, hva, mem.read)
    assert got.fields["nent"] == 0xFFFF_FFFF and len(got.fields["entries"]) == 1024


def test_sregs_names_control_register_bits_and_the_mode():
    mem = Memory()
    s = abi.kvm_sregs()
    s.cr0 = 0x8000_0011          # PE|ET|PG
    s.cr4 = 0x20                 # PAE
    s.efer = 0x500               # LME|LMA
    s.cs.l = 1
    s.cs.selector = 0x10
    hva = mem.put(0, s)
    got = d.decode_argument(abi.KVM_SET_SREGS, hva, mem.read)
    assert "mode 64-bit long mode" in got.text
    assert "cr0 0x80000011 PE|ET|PG" in got.text and "cr4 0x20 PAE" in got.text
    assert "efer 0x500 LME|LMA" in got.text
    assert got.fields["cr0_flags"] == ["PE", "ET", "PG"] and got.fields["cs"]["selector"] == 0x10
    s2 = abi.kvm_sregs2()
    s2.cr0 = 0x6000_0010         # the reset value: ET|NW|CD, real mode
    got2 = d.decode_argument(abi.KVM_SET_SREGS2, mem.put(0x400, s2), mem.read)
    assert "mode real mode" in got2.text and "cr0 0x60000010 ET|NW|CD" in got2.text and "cr4 0," in got2.text


def test_msrs_by_name():
    mem = Memory()
    buf = abi.msrs_type(2)()
    buf.nmsrs = 2
    buf.entries[0] = abi.kvm_msr_entry(index=0xC000_0080, data=0x500)
    buf.entries[1] = abi.kvm_msr_entry(index=0x1234, data=7)
    got = d.decode_argument(abi.KVM_SET_MSRS, mem.put(0, buf), mem.read)
    assert got.text == "{nmsrs 2: IA32_EFER=0x500, 0x1234=0x7}"


def test_ioeventfd_and_irqfd_and_caps():
    mem = Memory()
    e = abi.kvm_ioeventfd(datamatch=1, addr=0xD000_0050, len=4, fd=9, flags=abi.KVM_IOEVENTFD_FLAG_DATAMATCH)
    assert d.decode_argument(abi.KVM_IOEVENTFD, mem.put(0, e), mem.read).text == \
        "{at mmio 0xd0000050, len 4, fd 9, flags DATAMATCH, datamatch 0x1}"
    q = abi.kvm_irqfd(fd=5, gsi=5, flags=abi.KVM_IRQFD_FLAG_RESAMPLE, resamplefd=6)
    assert d.decode_argument(abi.KVM_IRQFD, mem.put(0x100, q), mem.read).text == \
        "{fd 5, gsi 5, flags RESAMPLE, resamplefd 6}"
    assert d.decode_argument(abi.KVM_CHECK_EXTENSION, int(abi.KvmCap.IRQFD), mem.read).text == "KVM_CAP_IRQFD"
    assert d.decode_argument(abi.KVM_CHECK_EXTENSION, 9999, mem.read).text == "9999"


def test_an_unreadable_argument_is_a_note_not_an_error():
    mem = Memory()
    got = d.decode_argument(abi.KVM_SET_REGS, 0x10, mem.read)
    assert "cannot read" in got.text and got.fields == {"unreadable": 0x10}


# ---- exits -----------------------------------------------------------------------------------------------


def _run(reason: int) -> bytearray:
    buf = bytearray(ctypes.sizeof(abi.kvm_run))
    struct.pack_into("<I", buf, abi.kvm_run.exit_reason.offset, reason)
    return buf


def test_io_out_exit_with_its_data():
    run = _run(abi.KvmExit.IO)
    struct.pack_into("<BBHIQ", run, EXIT_UNION_OFFSET, abi.KVM_EXIT_IO_OUT, 1, 0x3F8, 1, 4096)
    page = bytes(run) + bytes(4096 - len(run)) + b"p"
    ex = d.decode_exit(bytes(run[:d.RUN_HEAD]), lambda off, n: page[off:off + n])
    assert (ex.reason, ex.key, ex.fields["data"], ex.pending_reply) == ("IO", "0x3f8 out", "70", None)
    assert ex.text() == "IO out 0x3f8 (COM1 RBR/THR) size 1: 70 'p'"


def test_io_in_and_mmio_read_wait_for_the_vmms_reply():
    run = _run(abi.KvmExit.IO)
    struct.pack_into("<BBHIQ", run, EXIT_UNION_OFFSET, abi.KVM_EXIT_IO_IN, 1, 0x3FD, 1, 4096)
    ex = d.decode_exit(bytes(run[:d.RUN_HEAD]), lambda off, n: b"")
    assert ex.pending_reply == (4096, 1) and "data" not in ex.fields
    ex.fields["data"] = "60"
    assert ex.text() == "IO in 0x3fd (COM1 LSR) size 1 -> 60 '`'"
    m = _run(abi.KvmExit.MMIO)
    struct.pack_into("<Q8sIB", m, EXIT_UNION_OFFSET, 0xD000_0070, bytes(8), 4, 0)
    ex = d.decode_exit(bytes(m[:d.RUN_HEAD]), lambda off, n: b"")
    assert ex.pending_reply == (EXIT_UNION_OFFSET + 8, 4) and ex.key == "0xd0000000 read"
    ex.fields["data"] = "0f000000"
    assert ex.text() == "MMIO read 0xd0000070 len 4 -> 0xf"


def test_mmio_write_system_event_and_emulation_failure():
    m = _run(abi.KvmExit.MMIO)
    struct.pack_into("<Q8sIB", m, EXIT_UNION_OFFSET, 0xD000_0104, (0x4000).to_bytes(8, "little"), 4, 1)
    ex = d.decode_exit(bytes(m[:d.RUN_HEAD]), lambda off, n: b"")
    assert ex.text() == "MMIO write 0xd0000104 len 4: 0x4000"
    s = _run(abi.KvmExit.SYSTEM_EVENT)
    struct.pack_into("<II", s, EXIT_UNION_OFFSET, abi.KvmSystemEvent.RESET, 0)
    assert d.decode_exit(bytes(s[:d.RUN_HEAD]), lambda off, n: b"").text() == "SYSTEM_EVENT RESET"
    e = _run(abi.KvmExit.INTERNAL_ERROR)
    # suberror EMULATION, ndata 3, data[0] = flags (instruction bytes valid), then insn_size and the bytes
    insn = bytes([2, 0xCC, 0x90]) + bytes(13)
    struct.pack_into("<IIQ16s", e, EXIT_UNION_OFFSET, abi.KvmInternalError.EMULATION, 3, 1, insn)
    ex = d.decode_exit(bytes(e[:d.RUN_HEAD]), lambda off, n: b"")
    assert ex.reason == "INTERNAL_ERROR" and ex.fields["insn"] == "cc90" and "EMULATION insn cc90" in ex.text()


def test_virtio_windows_are_learnt_from_the_magic_value():
    w = d.VirtioWindows()
    assert w.name(0xFEB0_0E70) == ""
    w.learn(0xFEB0_0E00, False, 0x7472_6976)
    w.learn(0xFEB0_0E04, False, 2)
    assert w.name(0xFEB0_0E70) == "virtio-mmio@0xfeb00e00 Status"
    assert w.name(0xFEB0_0F04) == "virtio-mmio@0xfeb00e00 config+0x4"
    assert w.window(0xFEB0_1000) is None and w.bases == {0xFEB0_0E00: 2}


# ---- the report ------------------------------------------------------------------------------------------


def _rec(t: float, name: str = "KVM_RUN", exit_=None, ret: int | None = 0) -> IoctlRecord:
    return IoctlRecord(t, 100, 101, 12, d.Role("vcpu", 0), d.REQUESTS[name], name, ret=ret, duration_ns=8000,
                       exit=exit_)


def _io_exit(port: int, data: str) -> d.ExitRecord:
    return d.ExitRecord("IO", {"port": port, "size": 1, "count": 1, "direction": "out", "data": data},
                        f"{port:#x} out")


def test_text_line_and_json_record():
    rec = _rec(0.5, exit_=_io_exit(0x3F8, "70"))
    assert format_line(rec) == ("  0.500000 101     vcpu0   KVM_RUN = 0 <8.0 us> "
                                "IO out 0x3f8 (COM1 RBR/THR) size 1: 70 'p'")
    j = rec.as_json()
    assert j["request"] == "KVM_RUN" and j["vcpu"] == 0 and j["exit"] == {
        "reason": "IO", "port": 0x3F8, "size": 1, "count": 1, "direction": "out", "data": "70"}
    err = _rec(0.6, ret=None)
    err.ret, err.errno = -1, 4
    assert "= -1 EINTR" in format_line(err) and err.as_json()["errno"] == "EINTR"


def test_auto_exits_show_a_short_run_whole_then_rate_limit():
    now = [0.0]
    out = io.StringIO()
    rep = Report(out, clock=lambda: now[0])
    for i in range(Report.BURST):
        rep.record(_rec(i * 1e-5, exit_=_io_exit(0x3F8, "41")))
    assert out.getvalue().count("\n") == Report.BURST          # every line of a short run
    for i in range(5000):                                     # then a flood within 2 seconds
        now[0] = 2.0 * i / 5000
        rep.record(_rec(1 + i * 1e-5, exit_=_io_exit(0x80, "01")))
    text = out.getvalue()
    shown = text.count(" KVM_RUN ") - Report.BURST
    assert 0 < shown <= 2.0 * Report.RATE + 1                   # the budget's refill, no more
    assert "exits not shown" in text and "vcpu0 IO 0x80 out" in text
    assert rep.summary.exits["IO"] == Report.BURST + 5000       # the summary counts everything


def test_json_records_every_exit_and_ends_with_the_summary():
    out = io.StringIO()
    rep = Report(out, json_lines=True)
    for i in range(3000):
        rep.record(_rec(i * 1e-3, exit_=_io_exit(0x3F8, "41")))
    rep.record(_rec(3.0, "KVM_CREATE_VM", exit_=None))
    rep.finish(3.5, "t")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sum(1 for r in lines if r["type"] == "ioctl" and "exit" in r) == 3000
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["exits"]["total"] == 3000
    assert summary["ioctls"]["KVM_RUN"]["count"] == 3000 and summary["ioctls"]["KVM_CREATE_VM"]["count"] == 1
    assert summary["exits"]["by_where"][0] == {"reason": "IO", "where": "0x3f8 out", "name": "COM1 RBR/THR",
                                               "count": 3000}


def test_summary_table_has_ioctls_and_exits():
    out = io.StringIO()
    rep = Report(out, summary_only=True)
    rep.record(_rec(0.0, exit_=_io_exit(0xF4, "00000000")))
    failed = _rec(0.1, "KVM_GET_SUPPORTED_CPUID")
    failed.errno = 7
    rep.record(failed)
    rep.finish(1.0, "kvmtrace of test")
    text = out.getvalue()
    assert "kvmtrace of test" in text and "KVM_GET_SUPPORTED_CPUID" in text and "E2BIG x1" in text
    assert "debug exit" in text and "0xf4 out" in text and " KVM_RUN =" not in text


# ---- the ptrace and seccomp ABI ------------------------------------------------------------------------


def test_ptrace_abi_sizes():
    # <linux/ptrace.h>, <linux/filter.h>, <linux/seccomp.h> (Linux 6.1, x86-64)
    assert ctypes.sizeof(L.ptrace_syscall_info) == 88
    assert L.ptrace_syscall_info.u.offset == 0x18
    assert L._ptrace_syscall_info_exit.is_error.offset == 8
    assert L._ptrace_syscall_info_seccomp.ret_data.offset == 0x38
    assert ctypes.sizeof(L.seccomp_data) == 64 and L.seccomp_data.args.offset == 16
    assert ctypes.sizeof(L.sock_filter) == 8 and ctypes.sizeof(L.sock_fprog) == 16


def test_ioctl_number_agrees_with_python_ptrace():
    # python-ptrace's table, read as a file: importing its package runs ldconfig (find_library).
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("ptrace")
    assert spec is not None and spec.origin, "python-ptrace is in the test extra"
    table: dict = {}
    exec((Path(spec.origin).parent / "syscall/linux/x86_64.py").read_text(), table)
    assert table["SYSCALL_NAMES"][L.NR_ioctl] == "ioctl"


def _data(nr: int, request: int, arch: int = L.AUDIT_ARCH_X86_64) -> L.seccomp_data:
    s = L.seccomp_data(nr=nr, arch=arch)
    s.args[0], s.args[1] = 5, request
    return s


@pytest.mark.parametrize("nr,req,arch,verdict", [
    (L.NR_ioctl, abi.KVM_RUN, L.AUDIT_ARCH_X86_64, L.SECCOMP_RET_TRACE),
    (L.NR_ioctl, abi.KVM_SET_USER_MEMORY_REGION, L.AUDIT_ARCH_X86_64, L.SECCOMP_RET_TRACE),
    (L.NR_ioctl, abi.KVM_RUN | 0xFFFF_FFFF_0000_0000, L.AUDIT_ARCH_X86_64, L.SECCOMP_RET_TRACE),  # high bits
    (L.NR_ioctl, 0x5401, L.AUDIT_ARCH_X86_64, L.SECCOMP_RET_ALLOW),          # TCGETS
    (0, abi.KVM_RUN, L.AUDIT_ARCH_X86_64, L.SECCOMP_RET_ALLOW),              # read(2)
    (L.NR_ioctl, abi.KVM_RUN, 0x4000_0003, L.SECCOMP_RET_ALLOW),             # i386: another numbering
])
def test_seccomp_filter_traps_kvm_ioctls_only(nr, req, arch, verdict):
    assert L.run_filter(L.kvm_ioctl_filter(), _data(nr, req, arch)) == verdict


def test_missing_python_ptrace_is_one_line(monkeypatch):
    from pyvmm.tools import kvmtrace

    monkeypatch.setitem(sys.modules, "ptrace", None)
    with pytest.raises(kvmtrace.TraceError, match=r"pip install 'pyvmm\[kvmtrace\]'"):
        kvmtrace._load_ptrace()
