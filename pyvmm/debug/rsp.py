"""The GDB remote serial protocol's framing: packets, checksums, acknowledgments, escapes and Ctrl-C.

GDB's manual, "Overview" of "Remote Protocol": a packet is ``$payload#cs`` with ``cs`` the two hex
digits of the payload's byte sum modulo 256; the receiver answers ``+`` (good) or ``-`` (resend) until
both sides agree to stop acknowledging (QStartNoAckMode); a lone 0x03 byte between packets is an
interrupt request.  Binary data (``X`` packets, ``qXfer`` replies) escapes ``$ # } *`` as ``}`` and the
byte XOR 0x20.  Nothing here knows what a packet means: see gdbstub.py.
"""

from __future__ import annotations

from dataclasses import dataclass

# The largest packet pyvmm accepts or sends (qSupported's PacketSize): a full register file (1216 hex
# digits) and memory transfers of up to 8 KiB fit.  Anything longer is dropped with a NAK.
MAX_PACKET = 0x4000
INTERRUPT = 0x03
_ESCAPED = frozenset(b"$#}*")


@dataclass(frozen=True, slots=True)
class Packet:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    pass


@dataclass(frozen=True, slots=True)
class Nak:
    pass


@dataclass(frozen=True, slots=True)
class Interrupt:
    pass


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame that cannot be used: a bad checksum, an overlong packet, a packet cut by another '$'."""

    reason: str


Event = Packet | Ack | Nak | Interrupt | Malformed

_IDLE, _BODY, _SUM1, _SUM2, _SKIP = range(5)


class PacketReader:
    """Bytes from the peer in, protocol events out; never raises and never buffers more than max_packet."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self.max_packet = max_packet
        self._state = _IDLE
        self._body = bytearray()
        self._sum = 0
        self._hi = 0

    @property
    def idle(self) -> bool:
        """Between packets: the next '$' starts one."""
        return self._state == _IDLE

    def feed(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        for b in data:
            state = self._state
            if state == _BODY:
                if b == 0x23:                            # '#'
                    self._state = _SUM1
                elif b == 0x24:                          # '$' inside a packet: the old one is lost
                    out.append(Malformed("a packet started inside another"))
                    self._start()
                elif len(self._body) >= self.max_packet:
                    out.append(Malformed(f"packet longer than {self.max_packet} bytes"))
                    self._state = _SKIP
                    self._body = bytearray()
                else:
                    self._body.append(b)
                    self._sum += b
            elif state == _SUM1:
                self._hi = _hexval(b)
                self._state = _SUM2
            elif state == _SUM2:
                lo = _hexval(b)
                self._state = _IDLE
                body, self._body = bytes(self._body), bytearray()
                if self._hi < 0 or lo < 0:
                    out.append(Malformed("checksum is not two hex digits"))
                elif (self._hi << 4 | lo) != self._sum & 0xFF:
                    out.append(Malformed(f"bad checksum {self._hi << 4 | lo:02x}, expected {self._sum & 0xFF:02x}"))
                else:
                    out.append(Packet(body))
            elif b == 0x24:                              # '$' (also ends the skipping of an overlong packet)
                self._start()
            elif state == _IDLE:
                if b == 0x2B:
                    out.append(Ack())
                elif b == 0x2D:
                    out.append(Nak())
                elif b == INTERRUPT:
                    out.append(Interrupt())
                # anything else between packets is noise and is ignored, as gdbserver does
        return out

    def _start(self) -> None:
        self._state = _BODY
        self._body = bytearray()
        self._sum = 0


def _hexval(b: int) -> int:
    if 0x30 <= b <= 0x39:
        return b - 0x30
    if 0x61 <= b <= 0x66:
        return b - 0x57
    if 0x41 <= b <= 0x46:
        return b - 0x37
    return -1


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def frame(payload: bytes) -> bytes:
    """``$payload#cs``; the payload must already be escaped where the packet carries binary data."""
    return b"$" + payload + b"#" + b"%02x" % checksum(payload)


def escape_binary(data: bytes) -> bytes:
    """Binary data for a packet: ``$ # } *`` become ``}`` and the byte XOR 0x20."""
    if not any(b in _ESCAPED for b in data):
        return data
    out = bytearray()
    for b in data:
        if b in _ESCAPED:
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape_binary(data: bytes) -> bytes:
    """The inverse of escape_binary; ValueError for a ``}`` with nothing after it."""
    if 0x7D not in data:
        return data
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                raise ValueError("binary data ends in an escape character")
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def to_hex(data: bytes) -> bytes:
    return data.hex().encode()


_HEX = frozenset(b"0123456789abcdefABCDEF")


def from_hex(text: bytes) -> bytes:
    """Hex digits to bytes; ValueError for odd length or anything but a hex digit (spaces too)."""
    if len(text) % 2 or not _HEX.issuperset(text):
        raise ValueError(f"not an even number of hex digits: {text[:40]!r}")
    return bytes.fromhex(text.decode("ascii"))


def parse_hex(text: bytes) -> int:
    """One hex number as gdb sends addresses and lengths; ValueError if empty or not hex."""
    if not text or not _HEX.issuperset(text) or len(text) > 32:
        raise ValueError(f"not a hex number: {text[:40]!r}")
    return int(text, 16)
