"""The RSP framing: checksums, acks, Ctrl-C, escapes, and what happens to frames that are not packets."""

import pytest

from pyvmm.debug import rsp


def feed(data: bytes, **kw) -> list:
    return rsp.PacketReader(**kw).feed(data)


def test_a_packet_and_its_checksum():
    assert rsp.frame(b"OK") == b"$OK#9a"
    assert feed(b"$OK#9a") == [rsp.Packet(b"OK")]
    assert feed(b"$qSupported:swbreak+#8b") == [rsp.Packet(b"qSupported:swbreak+")]


def test_acks_naks_and_ctrl_c_between_packets():
    assert feed(b"+-\x03") == [rsp.Ack(), rsp.Nak(), rsp.Interrupt()]


def test_byte_by_byte_is_the_same_as_all_at_once():
    reader = rsp.PacketReader()
    data = b"+$m100,4#" + b"%02x" % rsp.checksum(b"m100,4") + b"\x03$g#67"
    events = [e for b in data for e in reader.feed(bytes([b]))]
    assert events == [rsp.Ack(), rsp.Packet(b"m100,4"), rsp.Interrupt(), rsp.Packet(b"g")]


@pytest.mark.parametrize("frame,why", [
    (b"$OK#00", "bad checksum"),
    (b"$OK#zz", "not two hex digits"),
    (b"$O$OK#9a", "inside another"),
])
def test_frames_that_are_not_packets(frame, why):
    events = feed(frame)
    assert any(isinstance(e, rsp.Malformed) and why in e.reason for e in events), events


def test_a_new_packet_inside_another_is_still_read():
    assert feed(b"$garbage$OK#9a")[-1] == rsp.Packet(b"OK")


def test_an_overlong_packet_is_dropped_and_the_next_one_read():
    reader = rsp.PacketReader(max_packet=16)
    events = reader.feed(b"$" + b"x" * 1000 + b"#00$OK#9a")
    assert isinstance(events[0], rsp.Malformed) and "longer than 16" in events[0].reason
    assert events[1:] == [rsp.Packet(b"OK")]
    assert len(reader._body) <= 16


def test_noise_between_packets_is_ignored():
    assert feed(b"hello\n\x00\xff$OK#9a") == [rsp.Packet(b"OK")]


def test_binary_escapes_round_trip():
    data = bytes(range(256))
    escaped = rsp.escape_binary(data)
    assert not set(b"$#*") & set(escaped.replace(b"}", b""))
    assert rsp.unescape_binary(escaped) == data
    assert rsp.escape_binary(b"}") == b"}]"
    with pytest.raises(ValueError):
        rsp.unescape_binary(b"abc}")


def test_hex_is_strict():
    assert rsp.from_hex(b"0aFf") == b"\x0a\xff"
    assert rsp.parse_hex(b"ffffffff81000000") == 0xFFFFFFFF81000000
    for bad in (b"0", b"0g", b"0a 0b", b"\xff\xfe"):
        with pytest.raises(ValueError):
            rsp.from_hex(bad)
    for bad in (b"", b"-1", b"1x", b"1" * 33):
        with pytest.raises(ValueError):
            rsp.parse_hex(bad)
