"""The same QMP requests sent to QEMU 7.2 and to pyvmm: replies must have the same shape, class and text."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from pyvmm.monitor.qmp import JsonStream, QmpServer
from tests.support.fake_machine import FakeMachine, MiB

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = [pytest.mark.qemu, pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")]

BALLOON = "/machine/peripheral/balloon0"


def _qom(cmd: str, prop: str, *value: object, path: str = BALLOON) -> str:
    args: dict = {"path": path, "property": prop}
    if value:
        args["value"] = value[0]
    return json.dumps({"execute": cmd, "arguments": args})


# (request, how to compare): "exact" = identical reply; "shape" = same keys, same error class.
REQUESTS: list[tuple[str, str]] = [
    ('{"execute": "nope", "id": 1}', "exact"),
    ('{"execute": "balloon"}', "exact"),
    ('{"execute": "balloon", "arguments": {"value": "x"}}', "exact"),
    ('{"execute": "balloon", "arguments": {"value": 1.5}}', "exact"),
    ('{"execute": "balloon", "arguments": {"value": 18446744073709551616}}', "exact"),
    ('{"execute": "balloon", "arguments": {"value": 100000000, "z": 1}}', "exact"),
    ('{"execute": "balloon", "arguments": {"value": 0}}', "exact"),
    ('{"execute": "balloon", "arguments": {"value": -5}}', "exact"),
    ('{"execute": "query-status", "arguments": {"a": 1}}', "exact"),
    ('{"execute": "query-status", "arguments": []}', "exact"),
    ('{"execute": 1}', "exact"),
    ('{"foo": 1}', "exact"),
    ("[1, 2]", "exact"),
    ('"abc"', "exact"),
    ("}", "exact"),
    ('{"execute": "qmp_capabilities"}', "exact"),
    ('{"execute": "query-status", "id": [1, {"a": 2}]}', "shape"),
    ('{"execute": "query-version"}', "shape"),
    ('{"execute": "query-balloon"}', "exact"),
    (_qom("qom-get", "guest-stats-polling-interval"), "exact"),
    (_qom("qom-set", "guest-stats-polling-interval", 2), "exact"),
    (_qom("qom-get", "guest-stats-polling-interval"), "exact"),
    (_qom("qom-get", "guest-stats", path="/machine/peripheral/balloonX"), "exact"),
    (_qom("qom-get", "nope"), "exact"),
    (_qom("qom-set", "guest-stats", 0), "exact"),
    (_qom("qom-set", "guest-stats-polling-interval", "a"), "exact"),
    ('{"execute": "qom-get", "arguments": {"path": "/machine/peripheral/balloon0"}}', "exact"),
    ('{"execute": "human-monitor-command", "arguments": {"command-line": "bogus"}}', "exact"),
    ('{"execute": "human-monitor-command"}', "exact"),
    ('{"execute": "balloon", "arguments": {"value": 100663296}}', "exact"),
]


class Conn:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.stream = JsonStream()
        self.pending: list = []

    def recv(self):
        while not self.pending:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.pending += [v for v, err in self.stream.feed(data) if err is None]
        return self.pending.pop(0)

    def ask(self, text: str):
        self.sock.sendall(text.encode())
        while True:
            msg = self.recv()
            if "event" not in msg:
                return msg


def _shape(msg):
    if isinstance(msg, dict):
        if "error" in msg:
            return {"error": msg["error"]["class"], **{k: v for k, v in msg.items() if k == "id"}}
        return {k: _shape(v) for k, v in msg.items()}
    return type(msg).__name__


@pytest.fixture(scope="module")
def qemu(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("qemu") / "q.sock")
    proc = subprocess.Popen(
        [QEMU, "-M", "microvm,acpi=off", "-accel", "tcg", "-m", "128M", "-nodefaults", "-nographic", "-S",
         "-device", "virtio-balloon-device,id=balloon0", "-qmp", f"unix:{path},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        yield path
    finally:
        proc.kill()
        proc.wait()


def _session(path: str) -> tuple[dict, list[dict], dict]:
    c = Conn(path)
    greeting = c.recv()
    before = c.ask('{"execute": "query-status", "id": 0}')
    replies = [c.ask('{"execute": "qmp_capabilities"}')] + [c.ask(text) for text, _ in REQUESTS]
    stats = c.ask(_qom("qom-get", "guest-stats"))
    c.sock.close()
    return greeting, [before] + replies, stats


def test_pyvmm_replies_like_qemu(qemu, tmp_path):
    q_greeting, q_replies, q_stats = _session(qemu)
    m = FakeMachine(ram_size=128 * MiB, driver=False)
    with QmpServer(m, f"unix:{tmp_path}/p.sock,server,wait=off") as server:
        p_greeting, p_replies, p_stats = _session(server.address.path)
    m.close()

    assert _shape(p_greeting) == _shape(q_greeting)
    assert p_replies[:2] == q_replies[:2]           # refused before negotiation; negotiation itself
    for (text, how), q, p in zip(REQUESTS, q_replies[2:], p_replies[2:], strict=False):
        if how == "exact":
            assert p == q, f"{text}: pyvmm {json.dumps(p)} != QEMU {json.dumps(q)}"
        else:
            assert _shape(p) == _shape(q), text
    # guest-stats with no driver: every stat is QEMU's (uint64)-1 and last-update 0, in both
    assert q_stats == {"return": {"stats": {k: (1 << 64) - 1 for k in q_stats["return"]["stats"]},
                                  "last-update": 0}}
    assert p_stats["return"]["last-update"] == 0
    assert p_stats["return"]["stats"] == q_stats["return"]["stats"]


def test_human_monitor_info_balloon_first_line_matches_qemu(qemu, tmp_path):
    q = Conn(qemu)
    q.recv()
    q.ask('{"execute": "qmp_capabilities"}')
    q.ask('{"execute": "balloon", "arguments": {"value": 134217728}}')
    hmp = '{"execute": "human-monitor-command", "arguments": {"command-line": "info balloon"}}'
    q_text = q.ask(hmp)["return"]
    m = FakeMachine(ram_size=128 * MiB, driver=False)
    with QmpServer(m, f"unix:{tmp_path}/h.sock") as server:
        p = Conn(server.address.path)
        p.recv()
        p.ask('{"execute": "qmp_capabilities"}')
        p_text = p.ask(hmp)["return"]
    m.close()
    assert q_text == "balloon: actual=128\r\n"
    assert p_text.split("\r\n")[0] == q_text.split("\r\n")[0]
    assert os.linesep == "\n" and p_text.endswith("\r\n")
