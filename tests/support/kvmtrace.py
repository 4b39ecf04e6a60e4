"""Reading kvmtrace's JSON lines in tests: records, the ioctls of one name, what crossed the UART."""

from __future__ import annotations

import json
from pathlib import Path


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def ioctls(recs: list[dict], name: str) -> list[dict]:
    return [r for r in recs if r["type"] == "ioctl" and r["request"] == name]


def serial_bytes(recs: list[dict], port: int = 0x3F8) -> bytes:
    """What the guest wrote to the UART's transmit register, from the IO exits alone (after the divisor
    latch is closed again: with LCR.DLAB set the same port is the divisor's low byte)."""
    out = bytearray()
    dlab = False
    for r in ioctls(recs, "KVM_RUN"):
        ex = r.get("exit") or {}
        if ex.get("reason") != "IO" or ex["direction"] != "out":
            continue
        if ex["port"] == port + 3:
            dlab = bool(int(ex["data"], 16) & 0x80)
        elif ex["port"] == port and not dlab:
            out += bytes.fromhex(ex["data"])
    return bytes(out)
