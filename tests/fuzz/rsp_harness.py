"""The gdbstub fuzz harness: bytes in, a hostile gdb's stream out, against a session on a fake machine.

``run_one(data)`` raises when the stub misbehaves: an exception out of the session, a frame on the
wire that gdb could not read, a reply larger than a packet, or a packet left unanswered.  Shared by
the coverage-guided fuzzer (``python -m tests.fuzz.fuzz rsp``) and the hypothesis tests.
"""

from __future__ import annotations

from pyvmm.debug import rsp
from pyvmm.debug.stop import StopEvent
from tests.fuzz.harness import Bytes
from tests.support.fake_debug import FakeTarget, Wire

# Packet heads that reach every handler; the fuzzer supplies the rest.
HEADS = (b"?", b"g", b"G", b"p", b"P", b"m", b"M", b"X", b"Z", b"z", b"c", b"C", b"s", b"S", b"H", b"T",
         b"qSupported", b"qXfer:features:read:target.xml:", b"qXfer:", b"qRcmd,", b"qThreadExtraInfo,",
         b"qfThreadInfo", b"qC", b"qqemu.PhyMemMode", b"Qqemu.PhyMemMode:", b"QStartNoAckMode", b"vCont;",
         b"vCont?", b"vKill", b"qAttached", b"D", b"k", b"qSymbol:")
MAX_FRAME = 2 * rsp.MAX_PACKET + 4


def run_one(data: bytes) -> None:
    src = Bytes(data)
    target = FakeTarget()
    wire = Wire(target)
    s = wire.session
    while src.left() > 0 and not s.closed:
        op = src.u8()
        n = src.u8()
        chunk = src.take(min(n, src.left()))
        kind = op % 5
        idle = s.reader.idle                 # a frame cut off before this one may swallow its start
        payload = b""
        if kind == 0:
            events = wire.raw(chunk)
        elif kind == 1:
            payload = chunk
            events = wire.send(payload)
        elif kind == 2:
            payload = HEADS[op // 5 % len(HEADS)] + chunk
            events = wire.send(payload)
        elif kind == 3:
            events = wire.send(chunk, checksum=op)            # most likely a bad checksum
        else:
            if s.running:                                      # the machine stops, or gdb presses Ctrl-C
                target.stopped = True
                wire.out.clear()
                s.report_stop(StopEvent(op % 3, ("step", "swbreak", "vbreak")[op % 3], text=chunk.hex()))
                events = wire.replies()
            else:
                events = wire.raw(b"\x03")
        for ev in events:                                      # replies() already rejected malformed frames
            if isinstance(ev, rsp.Packet):
                assert len(ev.payload) + 4 <= MAX_FRAME, f"reply of {len(ev.payload)} bytes"
        framed = idle and kind in (1, 2) and not (b"$" in payload or b"#" in payload)   # else maybe a NAK
        if framed and not s.running and not s.closed and not s.no_ack:
            # A packet gdb sent while the machine is stopped gets its ack and a reply (maybe empty).
            assert events and isinstance(events[0], rsp.Ack), events
    # The fake machine's memory is what the stub may touch; it must still be its size.
    assert len(target.ram) == 64 * 1024
