"""A DebugTarget without KVM, and a gdb client's half of the wire, for gdbstub tests and the RSP fuzzer."""

from __future__ import annotations

from pyvmm.debug import rsp, x86
from pyvmm.debug.gdbstub import GdbSession
from pyvmm.debug.stop import StopEvent

RAM = 64 * 1024


class FakeTarget:
    """Two vCPUs and 64 KiB of RAM at address 0 (virtual = physical); every call is recorded."""

    def __init__(self, cpus: int = 2, ram: int = RAM) -> None:
        self.ram = bytearray(ram)
        self.states = [x86.empty_state() for _ in range(cpus)]
        self.breakpoints: set[tuple[str, int, int]] = set()
        self.calls: list[tuple] = []
        self.stop = StopEvent(0, "attach")
        self.stopped = True
        self.monitor_output = "balloon: actual=128\n"

    @property
    def cpu_count(self) -> int:
        return len(self.states)

    def attach(self) -> None:
        self.calls.append(("attach",))
        self.stopped = True

    def wait_stopped(self, timeout: float) -> StopEvent | None:
        return self.stop if self.stopped else None

    def read_registers(self, cpu: int) -> x86.CpuState:
        s = self.states[cpu]
        return x86.CpuState(type(s.regs).from_buffer_copy(s.regs), type(s.sregs).from_buffer_copy(s.sregs),
                            type(s.fpu).from_buffer_copy(s.fpu), s.kernel_gs_base)

    def write_registers(self, cpu: int, state: x86.CpuState) -> None:
        self.calls.append(("write_registers", cpu, frozenset(state.dirty or ())))
        state.dirty = None
        self.states[cpu] = state

    def read_memory(self, cpu: int, addr: int, length: int, physical: bool) -> bytes:
        self.calls.append(("read_memory", cpu, addr, length, physical))
        if addr >= len(self.ram):
            return b""
        return bytes(self.ram[addr : addr + length])

    def write_memory(self, cpu: int, addr: int, data: bytes, physical: bool) -> bool:
        self.calls.append(("write_memory", cpu, addr, data, physical))
        if addr + len(data) > len(self.ram):
            return False
        self.ram[addr : addr + len(data)] = data
        return True

    def insert_breakpoint(self, kind: str, addr: int, length: int) -> bool | None:
        if kind == "read":
            return None
        if addr >= len(self.ram):
            return False
        self.breakpoints.add((kind, addr, length))
        return True

    def remove_breakpoint(self, kind: str, addr: int, length: int) -> bool | None:
        if kind == "read":
            return None
        self.breakpoints.discard((kind, addr, length))
        return True

    def resume(self, step: int | None, only: int | None) -> None:
        self.calls.append(("resume", step, only))
        self.stopped = False

    def interrupt(self) -> None:
        self.calls.append(("interrupt",))
        self.stop = StopEvent(0, "interrupt", 2)
        self.stopped = True

    def monitor(self, command: str) -> str:
        self.calls.append(("monitor", command))
        return self.monitor_output

    def thread_name(self, cpu: int) -> str:
        return f"vCPU {cpu}"

    def detach(self) -> None:
        self.calls.append(("detach",))
        self.stopped = False

    def kill(self) -> None:
        self.calls.append(("kill",))


class Wire:
    """A session and what it sent, parsed back into acks and packets as gdb's remote.c reads them."""

    def __init__(self, target: FakeTarget | None = None) -> None:
        self.target = target or FakeTarget()
        self.out = bytearray()
        self.session = GdbSession(self.target, self.out.extend)

    def send(self, payload: bytes, *, checksum: int | None = None) -> list:
        """Send one packet (a wrong checksum if given); returns the events the stub sent back."""
        cs = rsp.checksum(payload) if checksum is None else checksum
        return self.raw(b"$" + payload + b"#" + b"%02x" % cs)

    def raw(self, data: bytes) -> list:
        self.out.clear()
        self.session.feed(data)
        return self.replies()

    def replies(self) -> list:
        events = rsp.PacketReader(max_packet=1 << 20).feed(bytes(self.out))
        for ev in events:
            assert not isinstance(ev, rsp.Malformed), f"the stub sent a malformed frame: {ev} in {bytes(self.out)!r}"
        return events

    def ask(self, payload: bytes) -> bytes:
        """The one packet the stub answers payload with (acks dropped)."""
        packets = [e.payload for e in self.send(payload) if isinstance(e, rsp.Packet)]
        assert len(packets) == 1, f"{payload!r} got {packets!r}"
        return packets[0]

    def packets(self, payload: bytes) -> list[bytes]:
        return [e.payload for e in self.send(payload) if isinstance(e, rsp.Packet)]
