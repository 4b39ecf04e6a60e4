"""Real gdb (Debian's, unchanged, in batch mode) against `pyvmm run -gdb ... -S` with the tiny guest."""

import re
import socket
import time

import pytest

from pyvmm.debug import rsp
from tests.support.gdb import GdbVm, gdb_batch, gdb_path, symbol
from tests.support.guest import GUEST, pyvmm_cli, tmp_socket

pytestmark = pytest.mark.kvm


def lines_with(out: str, pattern: str) -> list[str]:
    return [line for line in out.splitlines() if re.search(pattern, line)]


def register(out: str, name: str) -> list[int]:
    """Every value `info registers NAME` printed."""
    return [int(m.group(1), 16) for m in re.finditer(rf"^{name}\s+0x([0-9a-f]+)", out, re.M)]


def test_break_step_memory_watch_and_exit():
    """The tiny guest's verify scenario under gdb: a breakpoint in the balloon driver, registers, the
    call stack, a step, guest memory against the monitor's xp, a watchpoint, `monitor`, and the exit."""
    fill = symbol("balloon_fill")
    balloon = symbol("balloon")
    with GdbVm("scenario=verify dirty=1M") as vm:
        out = gdb_batch(vm.port, [
            "info threads",
            "x/2xw 0x100000",                                       # physical before paging: the PVH entry
            "monitor xp/2xw 0x100000",
            "monitor balloon 127",
            "break balloon_fill",
            "continue",
            "info registers rip",
            "bt",
            "stepi",
            "info registers rip",
            "nexti",
            "info registers rip",
            "x/4xw &balloon",
            f"monitor xp/4xw {balloon:#x}",
            "info registers cs ss cr0 cr3 cr4 efer fs_base gs_base eflags",
            "delete",
            "watch balloon.num_pages",
            "continue",
            "delete",
            "break verify_done if balloon.num_pages > 0 && !balloon.work_pending",
            "continue",
            "monitor info balloon",
            "delete",
            "monitor balloon 128",
            "continue",
        ])
        code = vm.wait(60)
    assert "Thread 1 (vCPU 0, real mode)" in out, out              # -S: held at the reset vector
    entry = re.search(r"^0x100000 <pvh_entry>:\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)", out, re.M).groups()
    assert [int(w, 16) for w in entry] == [int(w, 16) for w in
                                           re.search(r"^0000000000100000: (0x\w+) (0x\w+)", out, re.M).groups()]
    assert re.search(r"Breakpoint 1, balloon_fill \(n=", out), out
    rips = register(out, "rip")
    assert rips[0] == fill                                          # info registers rip = the symbol
    assert fill < rips[1] < rips[2]                                 # stepi and nexti move RIP
    frames = re.findall(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\w+)", out, re.M)
    assert frames[:5] == ["balloon_fill", "balloon_poll", "follow_target", "scenario_verify", "kmain"], out
    gdb_words = re.search(r"<balloon>:\s+((?:0x[0-9a-f]+\s*){4})", out).group(1).split()
    xp_words = re.search(rf"{balloon:016x}: ((?:0x[0-9a-f]+\s*){{4}})", out).group(1).split()
    assert [int(w, 16) for w in gdb_words] == [int(w, 16) for w in xp_words], out
    assert register(out, "cr0")[0] & 0x80000001 == 0x80000001      # long mode: PE and PG
    assert register(out, "efer")[0] & 0x500 == 0x500
    assert register(out, "cs") == [0x8]
    assert re.search(r"Hardware watchpoint 2: balloon.num_pages\s+Old value = 0\s+New value = 256", out), out
    assert "balloon: actual=127" in out                             # `monitor info balloon` in gdb
    assert "[Inferior 1 (Remote target) exited normally]" in out, out
    assert code == 0
    assert "verify: PASS" in vm.stdout


def test_two_vcpus_are_two_threads_and_int3_beyond_the_debug_registers():
    with GdbVm("scenario=selftest", "--smp", "2") as vm:
        out = gdb_batch(vm.port, [
            "info threads",
            "break scenario_demo", "break scenario_oom", "break scenario_stats", "break scenario_verify",
            "break alloc_init",                                     # the fifth: an int3 in guest RAM
            "continue",
            "info registers rip",
            "x/1i $pc",
            "thread 2",
            "info registers rip",
            "thread 1",
            "set $r12 = 0x1234567",                                # registers and memory are writable
            "info registers r12",
            "set {int}0x200000 = 0x5a5aa5a5",
            "x/1xw 0x200000",
            "monitor xp/1xw 0x200000",
            "delete",
            "continue",
        ])
        code = vm.wait(60)
    threads = lines_with(out, r"^\*?\s+\d\s+Thread \d \(vCPU \d")
    assert len(threads) == 2 and "Thread 2 (vCPU 1, real mode)" in out, out
    assert re.search(r"Breakpoint 5, alloc_init \(\)", out), out
    assert register(out, "rip")[0] == symbol("alloc_init")
    assert re.search(r"<alloc_init>:\s+push\s+%rbp", out), out      # the planted int3 is not shown
    assert "Switching to thread 2" in out and register(out, "rip")[1] == 0xFFF0   # the AP waits for SIPI
    assert register(out, "r12") == [0x1234567]
    assert "0x200000:\t0x5a5aa5a5" in out and "0000000000200000: 0x5a5aa5a5" in out
    assert "exited normally" in out and code == 0


def test_virtio_breakpoint_seen_from_gdb():
    """`monitor vbreak QueueNotify inflateq`: gdb reports SIGTRAP on the vCPU that notified, prints the
    decoded access and the buffer, and `bt` is the driver's call stack."""
    with GdbVm("scenario=demo dirty=1M") as vm:
        out = gdb_batch(vm.port, [
            "monitor vbreak QueueNotify inflateq",
            "monitor balloon 127",
            "continue",
            "bt 4",
            "x/4xw balloon.pfns",
            "monitor info status",
            "monitor vdelete all",
            "kill",
        ])
        assert vm.wait(30) == 0, out
    assert "QueueNotify now exits to the vCPU thread" in out       # ioeventfd deassigned meanwhile
    assert "vbreak 1: balloon0 QueueNotify <- 0 (inflateq)" in out
    assert "Program received signal SIGTRAP" in out
    frames = re.findall(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\w+)", out, re.M)
    assert frames[:3] == ["vq_kick", "tell_host", "balloon_fill"], out
    run = re.search(r"256 PFNs \(le32\): 0x([0-9a-f]+)-0x([0-9a-f]+)", out)
    words = re.search(r"<balloon\+\d+>:\s+((?:0x[0-9a-f]+\s*){4})", out).group(1).split()
    first = int(run.group(1), 16)
    assert [int(w, 16) for w in words] == [first, first + 1, first + 2, first + 3], out
    assert "VM status: paused (debug)" in out


def test_ctrl_c_detach_kill_and_a_new_gdb():
    import pexpect

    sock = tmp_socket("gdb-qmp.sock")
    with GdbVm("scenario=demo dirty=1M", "--qmp", f"unix:{sock}", paused=False) as vm:
        def gdb():
            g = pexpect.spawn(gdb_path(), ["-nx", "-q", str(GUEST)], encoding="utf-8", timeout=30,
                              env={"TERM": "dumb", "PATH": "/usr/bin:/bin"})
            for cmd in ("set pagination off", "set confirm off", "set style enabled off",
                        f"target remote 127.0.0.1:{vm.port}"):
                g.expect_exact("(gdb) ")
                g.sendline(cmd)
            g.expect_exact("(gdb) ")
            return g

        g = gdb()
        g.sendline("continue")
        g.expect_exact("Continuing.")
        time.sleep(1)
        g.sendintr()                                             # Ctrl-C stops the running guest
        g.expect("received signal SIGINT")
        g.expect_exact("(gdb) ")
        g.sendline("info registers rip")
        g.expect(r"rip\s+0x[0-9a-f]+")
        g.expect_exact("(gdb) ")
        for bp in ("break balloon_fill", "break balloon_leak", "break tell_host", "hbreak vq_kick",
                   "break balloon_update_actual"):                # the fifth is an int3 in guest RAM
            g.sendline(bp)
            g.expect_exact("(gdb) ")
        g.sendline("continue")                                   # gdb inserts them while the guest runs
        g.expect_exact("Continuing.")
        time.sleep(0.5)
        g.kill(9)                                                # gdb dies: pyvmm detaches it, runs on
        time.sleep(1)
        assert vm.running()
        # With nobody attached, a 1 MiB inflate runs through every function that had a breakpoint:
        # none is left behind (a stop now would hold the guest with no gdb to continue it).
        assert pyvmm_cli("balloon", "--qmp", sock, "127M").returncode == 0
        vm.wait_for_output(r"balloon: target=256 actual=256")
        g = gdb()                                                # a new gdb attaches
        g.sendline("info threads")
        g.expect(r"Thread 1 \(vCPU 0, 64-bit long mode\)")
        g.expect_exact("(gdb) ")
        g.sendline("monitor balloon 126")
        g.expect_exact("(gdb) ")
        g.sendline("detach")                                     # detach lets it run on
        g.expect(r"Inferior 1 \(Remote target\) detached")
        g.expect_exact("(gdb) ")
        vm.wait_for_output(r"balloon: target=512 actual=512")   # it inflated after the detach
        g.sendline("quit")
        g.expect(pexpect.EOF)
        g = gdb()
        g.sendline("kill")                                       # gdb's kill ends the VM
        g.expect(r"Inferior 1 \(Remote target\) killed")
        assert vm.wait(20) == 0
    assert "killed by gdb" in vm.stderr


class Client:
    """A hostile gdb on a raw socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.reader = rsp.PacketReader(max_packet=1 << 20)
        self.events: list = []

    def raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next(self):
        while not self.events:
            data = self.sock.recv(65536)
            assert data, "the stub hung up"
            self.events += self.reader.feed(data)
        return self.events.pop(0)

    def ask(self, payload: bytes, checksum: int | None = None):
        cs = rsp.checksum(payload) if checksum is None else checksum
        self.raw(b"$" + payload + b"#" + b"%02x" % cs)
        first = self.next()
        if isinstance(first, rsp.Nak):
            return first
        assert isinstance(first, rsp.Ack), first
        reply = self.next()
        assert isinstance(reply, rsp.Packet), reply
        self.raw(b"+")
        return reply.payload


def test_malformed_packets_never_crash_or_stall_the_vm():
    with GdbVm("scenario=selftest", paused=False) as vm:
        c = Client(vm.port)
        assert c.ask(b"?").startswith(b"T05thread:")
        assert isinstance(c.ask(b"g", checksum=0), rsp.Nak)       # bad checksum
        assert c.ask(b"qNoSuchThing") == b""                       # unknown: the empty reply
        assert c.ask(b"Z9,0,0") == b""
        assert c.ask(b"m1000000000,10") == b"E14"                  # outside guest RAM
        assert c.ask(b"mffffffffff000000,4") == b"E14"             # not mapped by the guest
        assert c.ask(b"md0000000,4") == b"E14"                     # a device window is not memory
        assert len(c.ask(b"m100000,ffffffffffff")) > 1000          # huge: a short read
        assert c.ask(b"m100000,") == b"E22"
        assert c.ask(b"G" + b"0" * 7) == b"E22"
        assert c.ask(b"p" + b"9" * 30) == b"E22"
        c.raw(b"$" + b"A" * 100_000 + b"#00")                       # longer than any packet
        assert isinstance(c.next(), rsp.Nak)
        c.raw(b"garbage\x00\xff between packets")
        assert c.ask(b"qAttached") == b"1"                          # still speaking
        assert c.ask(b"D") == b"OK"                                 # and the VM runs on
        assert vm.wait(60) == 0
    assert "scenario selftest: PASS" in vm.stdout


def test_a_second_gdb_is_turned_away_while_one_is_attached():
    with GdbVm("scenario=selftest") as vm:
        first = Client(vm.port)
        assert first.ask(b"qAttached") == b"1"
        second = socket.create_connection(("127.0.0.1", vm.port), timeout=5)
        assert second.recv(100) == b""                              # closed at once, as QEMU does
        assert first.ask(b"?").startswith(b"T05")
        first.ask(b"D")
        assert vm.wait(60) == 0


def test_the_gdbstub_says_where_it_listens_and_refuses_a_port_in_use():
    with GdbVm("scenario=selftest") as vm:
        assert f"gdbstub listening on tcp:127.0.0.1:{vm.port} (in gdb: target remote 127.0.0.1:{vm.port})" \
            in vm.stderr
        res = pyvmm_cli("run", "-m", "64M", "-gdb", f"tcp:127.0.0.1:{vm.port}", "--append", "scenario=selftest")
        assert res.returncode != 0
        assert res.stderr.strip().splitlines()[-1] == (
            f"pyvmm: -gdb tcp:127.0.0.1:{vm.port}: cannot listen (Address already in use); choose another port")
