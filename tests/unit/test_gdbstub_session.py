"""The gdbstub's protocol against a fake machine: every packet gdb sends, and the malformed ones it should not."""

import xml.etree.ElementTree as ET

import pytest

from pyvmm.config import VmConfig
from pyvmm.debug import rsp, x86
from pyvmm.debug.gdbstub import MAX_MEMORY, parse_gdb_address
from pyvmm.debug.stop import StopEvent
from pyvmm.errors import ConfigError
from tests.support.fake_debug import Wire


@pytest.fixture
def w():
    return Wire()


def test_each_packet_is_acknowledged_then_answered(w):
    events = w.send(b"qAttached")
    assert events == [rsp.Ack(), rsp.Packet(b"1")]


def test_qsupported_offers_what_gdb_needs(w):
    reply = w.ask(b"qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;xmlRegisters=i386")
    features = dict(f.split(b"=") if b"=" in f else (f, b"") for f in reply.split(b";"))
    assert int(features[b"PacketSize"], 16) == rsp.MAX_PACKET
    for name in (b"qXfer:features:read+", b"swbreak+", b"hwbreak+", b"vContSupported+", b"QStartNoAckMode+"):
        assert name in features, reply


def read_target_xml(w, chunk=0x100) -> str:
    out, offset = b"", 0
    while True:
        reply = w.ask(b"qXfer:features:read:target.xml:%x,%x" % (offset, chunk))
        assert reply[:1] in (b"m", b"l")
        data = rsp.unescape_binary(reply[1:])
        out += data
        offset += len(data)
        if reply[:1] == b"l":
            return out.decode()


def test_the_target_description_is_what_the_registers_are(w):
    text = read_target_xml(w)
    assert text == x86.TARGET_XML
    root = ET.fromstring(text.split("\n", 2)[2])     # past the XML declaration and DOCTYPE
    assert root.findtext("architecture") == "i386:x86-64"
    features = [f.get("name") for f in root.iter("feature")]
    assert features[:3] == ["org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.segments"]
    regs = [(r.get("name"), int(r.get("bitsize")), int(r.get("regnum"))) for r in root.iter("reg")]
    assert [(r.name, r.bits, i) for i, r in enumerate(x86.REGISTERS)] == regs
    names = [n for n, _, _ in regs]
    for required in ("rax", "rip", "eflags", "cs", "gs", "st0", "fop", "xmm15", "mxcsr", "fs_base", "gs_base",
                     "cr0", "cr3", "cr4", "efer"):
        assert required in names


def test_an_unknown_annex_and_object(w):
    assert w.ask(b"qXfer:features:read:other.xml:0,100").startswith(b"E")
    assert w.ask(b"qXfer:auxv:read::0,100") == b""


def test_stop_reason_names_the_thread(w):
    assert w.ask(b"?") == b"T05thread:1;"
    w.target.stop = StopEvent(1, "swbreak")
    assert w.ask(b"?") == b"T05swbreak:;thread:2;"
    w.target.stop = StopEvent(0, "watch", address=0x1234)
    assert w.ask(b"?") == b"T05watch:1234;thread:1;"


def test_registers_round_trip(w):
    w.target.states[0].regs.rip = 0x100630
    w.target.states[0].sregs.cr0 = 0x80000011
    g = rsp.from_hex(w.ask(b"g"))
    assert len(g) == x86.G_PACKET_SIZE
    assert int.from_bytes(g[16 * 8 : 17 * 8], "little") == 0x100630
    assert w.ask(b"p%x" % x86.NUMBER["cr0"]) == rsp.to_hex((0x80000011).to_bytes(8, "little"))
    assert w.ask(b"P0=" + rsp.to_hex((0xDEAD).to_bytes(8, "little"))) == b"OK"
    assert w.target.states[0].regs.rax == 0xDEAD
    g2 = bytearray(g)
    g2[8:16] = (0xBEEF).to_bytes(8, "little")          # rbx
    assert w.ask(b"G" + rsp.to_hex(bytes(g2))) == b"OK"
    assert w.target.states[0].regs.rbx == 0xBEEF
    assert ("write_registers", 0, frozenset({"regs"})) in w.target.calls


def test_register_errors(w):
    assert w.ask(b"p%x" % len(x86.REGISTERS)) == b"E22"
    assert w.ask(b"pzz") == b"E22"
    assert w.ask(b"P0=12") == b"E22"                        # one byte for a 64-bit register
    assert w.ask(b"G" + b"00" * (x86.G_PACKET_SIZE + 1)) == b"E22"
    assert w.ask(b"G0") == b"E22"


def test_memory_reads_writes_and_binary_writes(w):
    w.target.ram[0x100:0x104] = b"\x01\x02\x03\x04"
    assert w.ask(b"m100,4") == b"01020304"
    assert w.ask(b"M200,2:abcd") == b"OK"
    assert w.target.ram[0x200:0x202] == b"\xab\xcd"
    assert w.ask(b"X300,3:" + rsp.escape_binary(b"$#}")) == b"OK"
    assert w.target.ram[0x300:0x303] == b"$#}"
    assert w.ask(b"X0,0:") == b"OK"                          # gdb's probe for binary downloads


def test_memory_outside_ram_and_huge_lengths(w):
    assert w.ask(b"m10000000,4") == b"E14"
    assert w.ask(b"mffffffffffffffff,1") == b"E14"
    assert w.ask(b"m10000000000000000,1") == b"E22"          # beyond 64 bits
    assert w.ask(b"M10000000,1:00") == b"E14"
    reply = w.ask(b"m0,ffffffffffffffff")                   # clamped: gdb takes a short read
    assert len(reply) == 2 * MAX_MEMORY
    assert w.ask(b"M0,4:00") == b"E22"                       # length and data disagree
    assert w.ask(b"m100") == b"E22"
    assert w.ask(b"M100,1") == b"E22"
    assert w.ask(b"X100,2:}") == b"E22"


def test_breakpoints_by_kind(w):
    assert w.ask(b"Z0,1000,1") == b"OK"
    assert ("sw", 0x1000, 1) in w.target.breakpoints
    assert w.ask(b"Z1,1004,1") == b"OK"
    assert w.ask(b"Z2,2000,4") == b"OK"
    assert w.ask(b"Z4,2000,8") == b"OK"
    assert w.ask(b"Z3,2000,4") == b""                         # read watchpoints: not supported
    assert w.ask(b"Z5,2000,4") == b""
    assert w.ask(b"Z0,99999999,1") == b"E01"                   # the target could not
    assert w.ask(b"z0,1000,1") == b"OK"
    assert ("sw", 0x1000, 1) not in w.target.breakpoints
    assert w.ask(b"Z0,1000") == b"E22"
    assert w.ask(b"Z0,1000,1;X1,0f") == b"OK"                  # conditions are not offered; ignored


def test_threads(w):
    assert w.ask(b"qfThreadInfo") == b"m1,2"
    assert w.ask(b"qsThreadInfo") == b"l"
    assert w.ask(b"qC") == b"QC1"
    assert w.ask(b"T2") == b"OK"
    assert w.ask(b"T3") == b"E22"
    assert w.ask(b"Hg2") == b"OK"
    assert w.ask(b"qC") == b"QC2"
    w.ask(b"m0,1")
    assert w.target.calls[-1][:2] == ("read_memory", 1)
    assert w.ask(b"Hg0") == b"OK"
    assert w.ask(b"Hc-1") == b"OK"
    assert w.ask(b"Hg9") == b"E22"
    assert w.ask(b"Hx1") == b"E22"
    assert rsp.from_hex(w.ask(b"qThreadExtraInfo,2")) == b"vCPU 1"


def test_vcont(w):
    assert w.ask(b"vCont?") == b"vCont;c;C;s;S"
    assert w.packets(b"vCont;s:1;c") == []                     # no reply until the machine stops
    assert w.target.calls[-1] == ("resume", 0, None)
    assert w.session.running
    w.target.stop, w.target.stopped = StopEvent(0, "step"), True
    w.out.clear()
    w.session.report_stop(w.target.stop)
    assert [e.payload for e in w.replies() if isinstance(e, rsp.Packet)] == [b"T05thread:1;"]
    assert not w.session.running
    w.packets(b"vCont;s:2")                                   # scheduler locking: vCPU 1 alone
    assert w.target.calls[-1] == ("resume", 1, 1)
    w.session.running = False
    w.packets(b"vCont;c")
    assert w.target.calls[-1] == ("resume", None, None)
    w.session.running = False
    w.packets(b"vCont;C05:1;c")
    assert w.target.calls[-1] == ("resume", None, None)
    w.session.running = False
    assert w.ask(b"vCont;x") == b"E22"
    assert w.ask(b"vCont;c:9") == b"E22"
    assert w.ask(b"vCont;t") == b""


def test_old_style_continue_and_step(w):
    w.packets(b"s")
    assert w.target.calls[-1] == ("resume", 0, None)
    w.session.running = False
    w.packets(b"c100")                                        # continue at an address
    assert w.target.states[0].regs.rip == 0x100
    assert w.target.calls[-1] == ("resume", None, None)


def test_ctrl_c_while_running_and_the_stop_it_gets(w):
    w.packets(b"vCont;c")
    w.raw(b"\x03")
    assert w.target.calls[-1] == ("interrupt",)
    w.out.clear()
    w.session.report_stop(w.target.stop)
    assert [e.payload for e in w.replies() if isinstance(e, rsp.Packet)] == [b"T02thread:1;"]


def test_packets_while_running_are_dropped_not_answered(w):
    w.packets(b"vCont;c")
    assert w.send(b"g") == [rsp.Ack()]
    assert w.send(b"m0,4") == [rsp.Ack()]


def test_a_stop_with_a_message_shows_it_as_console_output(w):
    w.packets(b"vCont;c")
    w.out.clear()
    w.session.report_stop(StopEvent(0, "vbreak", text="vbreak 1: balloon0 QueueNotify <- 0 (inflateq)"))
    packets = [e.payload for e in w.replies() if isinstance(e, rsp.Packet)]
    assert packets[0][:1] == b"O" and b"QueueNotify" in rsp.from_hex(packets[0][1:])
    assert packets[-1] == b"T05thread:1;"


def test_a_stop_nobody_waits_for_is_not_sent(w):
    w.session.report_stop(StopEvent(0, "vbreak"))
    assert w.replies() == []


def test_monitor_commands_print_through_o_packets(w):
    packets = w.packets(b"qRcmd," + rsp.to_hex(b"info balloon"))
    assert w.target.calls[-1] == ("monitor", "info balloon")
    assert rsp.from_hex(packets[0][1:]) == b"balloon: actual=128\n"
    assert packets[-1] == b"OK"
    assert w.ask(b"qRcmd,zz") == b"E22"


def test_physical_memory_mode_as_qemu_spells_it(w):
    assert w.ask(b"qqemu.PhyMemMode") == b"0"
    assert w.ask(b"Qqemu.PhyMemMode:1") == b"OK"
    w.ask(b"m100,1")
    assert w.target.calls[-1] == ("read_memory", 0, 0x100, 1, True)
    assert w.ask(b"Qqemu.PhyMemMode:2") == b"E22"


def test_unknown_packets_get_the_empty_reply(w):
    for p in (b"vMustReplyEmpty", b"qTStatus", b"qOffsets", b"!", b"R00", b"bc", b"vFile:open:", b"qXYZ", b"~"):
        assert w.ask(p) == b"", p
    assert w.ask(b"qSymbol::") == b"OK"


def test_bad_checksums_get_a_nak_and_nothing_else(w):
    assert w.send(b"g", checksum=0) == [rsp.Nak()]
    assert w.target.calls == []


def test_a_nak_resends_the_last_reply(w):
    w.ask(b"qAttached")
    assert w.raw(b"-") == [rsp.Packet(b"1")]


def test_no_ack_mode(w):
    assert w.send(b"QStartNoAckMode") == [rsp.Ack(), rsp.Packet(b"OK")]
    assert w.send(b"qAttached") == [rsp.Packet(b"1")]
    assert w.send(b"g", checksum=0) == []                     # nothing to resend without acks
    assert w.raw(b"-") == []


def test_detach_and_kill_end_the_session(w):
    assert w.packets(b"D") == [b"OK"]
    assert w.session.closed and w.target.calls[-1] == ("detach",)
    w2 = Wire()
    assert w2.packets(b"k") == []
    assert w2.session.closed and w2.target.calls[-1] == ("kill",)
    w3 = Wire()
    assert w3.packets(b"vKill;1") == [b"OK"] and w3.target.calls[-1] == ("kill",)


def test_exit_is_reported_with_its_code(w):
    w.packets(b"vCont;c")
    w.out.clear()
    w.session.report_exit(3)
    assert [e.payload for e in w.replies() if isinstance(e, rsp.Packet)] == [b"W03"]
    assert w.session.closed
    idle = Wire()                                             # gdb not waiting (`monitor quit`): no W
    idle.session.report_exit(0)
    assert idle.replies() == [] and idle.session.closed


def test_gdb_addresses_as_qemu_spells_them():
    assert parse_gdb_address("tcp::1234") == ("127.0.0.1", 1234)
    assert parse_gdb_address("tcp:0.0.0.0:4321") == ("0.0.0.0", 4321)
    assert parse_gdb_address("tcp:[::1]:1234") == ("::1", 1234)
    assert parse_gdb_address(":1234") == ("127.0.0.1", 1234)
    assert parse_gdb_address("tcp::1234,server,nowait") == ("127.0.0.1", 1234)
    for bad in ("unix:/tmp/x", "tcp::port", "tcp::70000", "nonsense"):
        with pytest.raises(ConfigError, match="-gdb"):
            parse_gdb_address(bad)
    with pytest.raises(ConfigError, match="-gdb"):
        VmConfig(gdb="tcp::x").validate()


def test_the_cli_spells_s_gdb_and_capital_s_as_qemu():
    from pyvmm.cli import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["run", "-s", "-S"]))
    assert cfg.gdb == "tcp::1234" and cfg.start_paused
    cfg = config_from_args(build_parser().parse_args(["run", "-gdb", "tcp:127.0.0.1:4444"]))
    assert cfg.gdb == "tcp:127.0.0.1:4444" and not cfg.start_paused
    assert config_from_args(build_parser().parse_args(["run", "-smp", "2"])).smp == 2
