"""gdb's view of the x86-64 registers: numbering, widths, and each register to and from KVM's structs."""

import pytest

from pyvmm.debug import x86


def test_the_g_packet_has_every_register_in_order():
    s = x86.empty_state()
    assert len(x86.read_all(s)) == x86.G_PACKET_SIZE == sum(r.bits for r in x86.REGISTERS) // 8
    assert [r.name for r in x86.REGISTERS[:17]] == list(x86.GPRS) + ["rip"]
    assert x86.NUMBER["eflags"] == 17 and x86.NUMBER["st0"] == 24 and x86.NUMBER["xmm0"] == 40


def test_general_and_control_registers():
    s = x86.empty_state()
    s.regs.r15, s.regs.rflags = 0x1122334455667788, 0x246
    s.sregs.cs.selector, s.sregs.cr3, s.sregs.efer = 0x10, 0x114000, 0x500
    s.sregs.fs.base = 0xFFFF888000000000
    assert x86.read_register(s, x86.NUMBER["r15"]) == (0x1122334455667788).to_bytes(8, "little")
    assert x86.read_register(s, x86.NUMBER["eflags"]) == (0x246).to_bytes(4, "little")
    assert x86.read_register(s, x86.NUMBER["cs"]) == (0x10).to_bytes(4, "little")
    assert x86.read_register(s, x86.NUMBER["cr3"]) == (0x114000).to_bytes(8, "little")
    assert x86.read_register(s, x86.NUMBER["efer"]) == (0x500).to_bytes(8, "little")
    assert x86.read_register(s, x86.NUMBER["fs_base"]) == (0xFFFF888000000000).to_bytes(8, "little")
    assert x86.read_register(s, 999) is None


def test_writes_mark_the_part_they_change():
    s = x86.empty_state()
    assert x86.write_register(s, x86.NUMBER["rip"], (0x1000).to_bytes(8, "little"))
    assert s.regs.rip == 0x1000 and s.dirty == {"regs"}
    assert x86.write_register(s, x86.NUMBER["eflags"], (0).to_bytes(4, "little"))
    assert s.regs.rflags == 2                                     # bit 1 stays set
    assert x86.write_register(s, x86.NUMBER["cr4"], (0x20).to_bytes(8, "little"))
    assert x86.write_register(s, x86.NUMBER["k_gs_base"], (0x55).to_bytes(8, "little"))
    assert x86.write_register(s, x86.NUMBER["xmm3"], bytes(range(16)))
    assert bytes(s.fpu.xmm[3]) == bytes(range(16))
    assert s.dirty == {"regs", "sregs", "msr", "fpu"}
    assert not x86.write_register(s, x86.NUMBER["rip"], b"\x00")


def test_an_unchanged_register_is_not_written_back():
    s = x86.empty_state()
    assert x86.write_all(s, x86.read_all(x86.empty_state()))
    assert s.dirty is None


def test_a_segment_selector_in_real_mode_moves_its_base():
    s = x86.empty_state()                                          # CR0.PE = 0: real mode
    x86.write_register(s, x86.NUMBER["ds"], (0x1234).to_bytes(4, "little"))
    assert s.sregs.ds.selector == 0x1234 and s.sregs.ds.base == 0x12340
    s.sregs.cr0 = 1
    s.sregs.es.base = 0
    x86.write_register(s, x86.NUMBER["es"], (0x18).to_bytes(4, "little"))
    assert s.sregs.es.base == 0                                    # protected mode: the descriptor stays


def test_x87_tag_word_from_the_abridged_one():
    s = x86.empty_state()
    assert x86.read_register(s, x86.NUMBER["ftag"]) == (0xFFFF).to_bytes(4, "little")   # all empty
    s.fpu.ftwx = 0b1                    # physical register 0 in use; TOP = 0, so it is ST(0)
    s.fpu.fpr[0][:10] = list((0x3FFF << 64 | 1 << 63).to_bytes(10, "little"))            # 1.0: valid
    assert int.from_bytes(x86.read_register(s, x86.NUMBER["ftag"]), "little") == 0xFFFC
    x86.write_register(s, x86.NUMBER["ftag"], (0xFFF0).to_bytes(4, "little"))
    assert s.fpu.ftwx == 0b11


def test_a_short_g_packet_sets_the_leading_registers():
    s = x86.empty_state()
    assert x86.write_all(s, (7).to_bytes(8, "little") + (8).to_bytes(8, "little"))
    assert (s.regs.rax, s.regs.rbx) == (7, 8)
    assert not x86.write_all(s, b"\x00" * 9)                       # not on a register boundary


@pytest.mark.parametrize("name,bits", [("rax", 64), ("eflags", 32), ("st7", 80), ("xmm15", 128), ("efer", 64)])
def test_every_register_reads_at_its_width(name, bits):
    assert len(x86.read_register(x86.empty_state(), x86.NUMBER[name])) == bits // 8
