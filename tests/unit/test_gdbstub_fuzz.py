"""Hostile gdb streams against the gdbstub's session (property tests over the fuzz harness; no KVM)."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.rsp_harness import HEADS, run_one


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_streams(data):
    run_one(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(HEADS) - 1), st.binary(max_size=60)), max_size=20))
def test_known_packets_with_random_arguments(packets):
    data = b"".join(bytes([2 + 5 * head, len(args)]) + args for head, args in packets)
    run_one(data)


def test_known_hostile_inputs():
    for packet in (b"m0,ffffffffffffffffffffffff", b"Z0,,", b"G" + b"0" * 5000, b"X0,10:}", b"vCont;s:p1.ffff",
                   b"qXfer:features:read:target.xml:ffffffffffffffff,ffffffff", b"p" + b"f" * 40, b"H", b"T",
                   b"qRcmd," + b"f" * 4000, b"Qqemu.PhyMemMode:", b"vCont;c;c;s"):
        run_one(bytes([1, min(len(packet), 255)]) + packet[:255])
