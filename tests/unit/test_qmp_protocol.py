"""QMP wire protocol of pyvmm's server over raw sockets: shapes, negotiation, every bad input, robustness."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from pyvmm.errors import ConfigError, PyvmmError
from pyvmm.monitor.qmp import MAX_REQUEST, JsonStream, QmpServer, parse_address
from tests.support.fake_machine import FakeMachine, MiB

NEVER = (1 << 64) - 1


class Raw:
    """A raw QMP connection that reads whole JSON values, whatever the line breaks."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.stream = JsonStream()
        self.pending: list = []

    def recv(self) -> dict:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            for value, err in self.stream.feed(data):
                assert err is None, err
                self.pending.append(value)
        return self.pending.pop(0)

    def reply(self) -> dict:
        """The next non-event message."""
        while True:
            msg = self.recv()
            if "event" not in msg:
                return msg

    def send(self, data: bytes | str | dict) -> None:
        if isinstance(data, dict):
            data = json.dumps(data)
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def cmd(self, name: str, args: dict | None = None, **extra) -> dict:
        msg = {"execute": name, **extra}
        if args is not None:
            msg["arguments"] = args
        self.send(msg)
        return self.reply()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def machine():
    m = FakeMachine()
    yield m
    m.close()


@pytest.fixture
def server(machine, tmp_path):
    s = QmpServer(machine, f"unix:{tmp_path}/qmp.sock,server,wait=off")
    s.start()
    yield s
    s.close()


@pytest.fixture
def client(server):
    c = Raw(server.address.path)
    greeting = c.recv()
    assert "QMP" in greeting
    assert c.cmd("qmp_capabilities") == {"return": {}}
    yield c
    c.close()


# --- greeting and negotiation ---------------------------------------------------------------------------


def test_greeting_has_qemu_shape(server):
    c = Raw(server.address.path)
    g = c.recv()
    assert set(g) == {"QMP"}
    assert set(g["QMP"]["version"]["qemu"]) == {"micro", "minor", "major"}
    assert g["QMP"]["version"]["package"].startswith("pyvmm ")
    assert g["QMP"]["capabilities"] == []
    c.close()


def test_commands_before_negotiation_are_refused_as_qemu_does(server):
    c = Raw(server.address.path)
    c.recv()
    r = c.cmd("query-status", id=7)
    assert r == {"id": 7, "error": {"class": "CommandNotFound",
                                    "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}
    assert c.cmd("qmp_capabilities", id="x") == {"id": "x", "return": {}}
    again = c.cmd("qmp_capabilities")
    assert again["error"]["class"] == "CommandNotFound"
    assert c.cmd("query-status")["return"]["status"] == "running"
    c.close()


def test_unknown_capability_is_refused(server):
    c = Raw(server.address.path)
    c.recv()
    r = c.cmd("qmp_capabilities", {"enable": ["oob"]})
    assert r["error"] == {"class": "GenericError", "desc": "Capability 'oob' not available"}
    assert c.cmd("qmp_capabilities") == {"return": {}}
    c.close()


def test_no_events_before_negotiation(server, machine):
    c = Raw(server.address.path)
    c.recv()
    machine.pause()
    r = c.cmd("query-version")        # the STOP above must not have been queued for us
    assert r["error"]["class"] == "CommandNotFound"
    c.close()


# --- commands -----------------------------------------------------------------------------------------


def test_id_of_any_json_type_is_echoed(client):
    ident = [1, {"a": "b"}, None]
    assert client.cmd("query-status", id=ident)["id"] == ident


def test_query_status_stop_cont_and_events(client, machine):
    assert client.cmd("query-status")["return"] == {"status": "running", "singlestep": False, "running": True}
    assert client.cmd("stop") == {"return": {}}
    ev = client.recv()
    assert ev["event"] == "STOP" and "data" not in ev
    assert set(ev["timestamp"]) == {"seconds", "microseconds"}
    assert abs(ev["timestamp"]["seconds"] - time.time()) < 3600
    assert client.cmd("query-status")["return"] == {"status": "paused", "singlestep": False, "running": False}
    assert client.cmd("stop") == {"return": {}}          # already stopped: no error, as QEMU
    client.cmd("cont")
    assert client.recv()["event"] == "RESUME"
    assert machine.status() == "running"


def test_query_version_and_commands(client):
    v = client.cmd("query-version")["return"]
    assert v["qemu"] == {"micro": 0, "minor": 2, "major": 7}
    names = {c["name"] for c in client.cmd("query-commands")["return"]}
    for want in ("qmp_capabilities", "query-status", "stop", "cont", "system_reset", "quit", "balloon",
                 "query-balloon", "qom-get", "qom-set", "human-monitor-command", "query-version"):
        assert want in names


def test_balloon_query_balloon_and_balloon_change(client, machine):
    assert client.cmd("query-balloon") == {"return": {"actual": 64 * MiB}}
    assert client.cmd("balloon", {"value": 40 * MiB}) == {"return": {}}
    while True:
        ev = client.recv()
        if ev.get("event") == "BALLOON_CHANGE" and ev["data"]["actual"] == 40 * MiB:
            break
    assert client.cmd("query-balloon") == {"return": {"actual": 40 * MiB}}
    assert machine.balloon.info().ballooned_pages == 24 * MiB // 4096


def test_balloon_above_ram_is_clamped(client, machine):
    assert client.cmd("balloon", {"value": 1 << 40}) == {"return": {}}
    assert machine.balloon.info().target == 64 * MiB


BAD_VALUE = "Invalid parameter type for 'value', expected: integer"


@pytest.mark.parametrize("value", [0, -5])
def test_balloon_non_positive_is_refused_as_qemu(client, value):
    r = client.cmd("balloon", {"value": value})
    assert r["error"] == {"class": "GenericError", "desc": "Parameter 'target' expects a size"}


def test_balloon_below_floor_is_refused_with_a_message(client, machine):
    r = client.cmd("balloon", {"value": 1 * MiB})
    assert r["error"]["class"] == "GenericError"
    assert "below the floor of 16.0 MiB" in r["error"]["desc"]
    assert machine.balloon.info().target == 64 * MiB


def test_guest_stats_and_polling_interval(client, machine):
    r = client.cmd("qom-get", {"path": "/machine/peripheral/balloon0", "property": "guest-stats"})["return"]
    assert list(r["stats"]) == ["stat-swap-in", "stat-swap-out", "stat-major-faults", "stat-minor-faults",
                                "stat-free-memory", "stat-total-memory", "stat-available-memory",
                                "stat-disk-caches", "stat-htlb-pgalloc", "stat-htlb-pgfail"]
    assert r["stats"]["stat-minor-faults"] == 1234
    assert r["stats"]["stat-total-memory"] == 64 * MiB
    assert r["stats"]["stat-htlb-pgfail"] == NEVER          # never sent by this guest
    assert r["last-update"] > 0
    path = {"path": "/machine/peripheral/balloon0", "property": "guest-stats-polling-interval"}
    assert client.cmd("qom-get", path) == {"return": 0}
    assert client.cmd("qom-set", {**path, "value": 2}) == {"return": {}}
    assert machine.balloon.stats_interval == 2
    assert client.cmd("qom-get", path) == {"return": 2}
    assert client.cmd("qom-set", {**path, "value": 0}) == {"return": {}}


def test_qom_errors(client):
    base = {"path": "/machine/peripheral/balloon0"}
    r = client.cmd("qom-get", {"path": "/machine/peripheral/nope", "property": "guest-stats"})
    assert r["error"] == {"class": "DeviceNotFound", "desc": "Device '/machine/peripheral/nope' not found"}
    r = client.cmd("qom-get", {**base, "property": "nope"})
    assert r["error"] == {"class": "GenericError", "desc": "Property 'virtio-balloon-device.nope' not found"}
    r = client.cmd("qom-set", {**base, "property": "guest-stats", "value": 1})
    assert r["error"]["desc"] == "Property 'virtio-balloon-device.guest-stats' is not writable"
    r = client.cmd("qom-set", {**base, "property": "guest-stats-polling-interval", "value": "a"})
    assert r["error"]["desc"] == "Invalid parameter type for 'guest-stats-polling-interval', expected: integer"
    r = client.cmd("qom-set", {**base, "property": "guest-stats-polling-interval", "value": -1})
    assert r["error"]["class"] == "GenericError"
    r = client.cmd("qom-get", base)
    assert r["error"] == {"class": "GenericError", "desc": "Parameter 'property' is missing"}


def test_human_monitor_command_returns_text_with_crlf(client):
    r = client.cmd("human-monitor-command", {"command-line": "info balloon"})["return"]
    assert r.startswith("balloon: actual=64\r\n")
    r = client.cmd("human-monitor-command", {"command-line": "bogus"})["return"]
    assert r == "unknown command: 'bogus'\r\n"
    r = client.cmd("human-monitor-command", {"command-line": "info virtqueue balloon0 0"})["return"]
    assert "inflateq" in r and "desc table" in r
    r = client.cmd("human-monitor-command")
    assert r["error"] == {"class": "GenericError", "desc": "Parameter 'command-line' is missing"}


def test_system_reset_and_unsupported_reset(tmp_path):
    m = FakeMachine(can_reset=False, driver=False)
    with QmpServer(m, f"unix:{tmp_path}/r.sock") as s:
        c = Raw(s.address.path)
        c.recv()
        c.cmd("qmp_capabilities")
        r = c.cmd("system_reset")
        assert r["error"] == {"class": "GenericError", "desc": "system_reset is not supported by this machine"}
        assert c.cmd("query-status")["return"]["running"] is True
        c.close()
    m.close()


def test_system_reset_emits_reset(client, machine):
    assert client.cmd("system_reset") == {"return": {}}
    ev = client.recv()
    assert ev["event"] == "RESET" and machine.resets == 1


def test_quit_replies_then_shutdown_event(client, machine):
    client.send({"execute": "quit", "id": 5})
    msgs = [client.recv(), client.recv()]
    assert {"id": 5, "return": {}} in msgs
    shutdown = [m for m in msgs if m.get("event") == "SHUTDOWN"]
    assert shutdown and shutdown[0]["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert machine.quits == 1


def test_no_balloon_gives_device_not_active(tmp_path):
    m = FakeMachine(balloon=False)
    with QmpServer(m, "tcp:127.0.0.1:0,server,wait=off") as s:
        sock = socket.create_connection((s.address.host, s.address.port), timeout=10)
        c = Raw.__new__(Raw)
        c.sock, c.stream, c.pending = sock, JsonStream(), []
        c.recv()
        c.cmd("qmp_capabilities")
        for cmd, args in (("balloon", {"value": 64 * MiB}), ("query-balloon", None)):
            r = c.cmd(cmd, args)
            assert r["error"] == {"class": "DeviceNotActive", "desc": "No balloon device has been activated"}
        r = c.cmd("qom-get", {"path": "/machine/peripheral/balloon0", "property": "guest-stats"})
        assert r["error"]["class"] == "DeviceNotFound"
        r = c.cmd("human-monitor-command", {"command-line": "info balloon"})
        assert r["return"] == "Error: No balloon device has been activated\r\n"
        c.close()


# --- bad input --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_text, desc",
    [
        ('{"execute": "nope"}', "The command nope has not been found"),
        ('{"execute": "balloon"}', "Parameter 'value' is missing"),
        ('{"execute": "balloon", "arguments": {"value": "x"}}', BAD_VALUE),
        ('{"execute": "balloon", "arguments": {"value": 1.5}}', BAD_VALUE),
        ('{"execute": "balloon", "arguments": {"value": true}}', BAD_VALUE),
        ('{"execute": "balloon", "arguments": {"value": 18446744073709551616}}',
         "Invalid parameter type for 'value', expected: integer"),
        ('{"execute": "balloon", "arguments": {"value": 100000000, "z": 1}}', "Parameter 'z' is unexpected"),
        ('{"execute": "query-status", "arguments": {"a": 1}}', "Parameter 'a' is unexpected"),
        ('{"execute": "query-status", "arguments": []}', "QMP input member 'arguments' must be an object"),
        ('{"execute": 1}', "QMP input member 'execute' must be a string"),
        ('{"foo": 1}', "QMP input member 'foo' is unexpected"),
        ('{"arguments": {}}', "QMP input lacks member 'execute'"),
        ("[1, 2]", "QMP input must be a JSON object"),
        ('"abc"', "QMP input must be a JSON object"),
        ("}", "JSON parse error, expecting value"),
        ('{"execute": "query-status",}', None),
        ("{'execute': 'query-status'}", None),
        ('{"execute": NaN}', None),
        (b'{"execute": "\xff"}', None),
    ],
)
def test_bad_requests_get_errors_and_the_connection_stays_usable(client, request_text, desc):
    client.send(request_text)
    r = client.reply()
    cls = "CommandNotFound" if desc and desc.startswith("The command") else "GenericError"
    assert r["error"]["class"] == cls
    if desc is None:
        assert r["error"]["desc"].startswith("JSON parse error")
    else:
        assert r["error"]["desc"] == desc
    assert client.cmd("query-status")["return"]["status"] == "running"


def test_bare_garbage_token_is_an_error_once_delimited(client):
    client.send("garbage")
    client.send(' {"execute": "query-status"}')
    assert client.reply()["error"]["desc"].startswith("JSON parse error")
    assert client.reply()["return"]["running"] is True


def test_stream_without_newlines_split_and_batched(client):
    # qemu.qmp sends no newline; requests may arrive in pieces or several in one read.
    msg = '{"execute": "query-balloon", "id": "a\\"}{"}'
    for ch in msg:
        client.send(ch)
    assert client.reply() == {"id": 'a"}{', "return": {"actual": 64 * MiB}}
    client.send('{"execute":"query-status","id":1}{"execute":"query-balloon","id":2}\n\t{"execute":"stop","id":3}')
    assert [client.reply()["id"] for _ in range(3)] == [1, 2, 3]


def test_oversized_request_is_refused_and_dropped(server):
    other = Raw(server.address.path)
    other.recv()
    other.cmd("qmp_capabilities")
    c = Raw(server.address.path)
    c.recv()
    c.cmd("qmp_capabilities")
    chunk = b'{"execute": "balloon", "arguments": {"value": "' + b"x" * 65536
    sent = 0
    try:
        while sent <= MAX_REQUEST + 65536:
            c.sock.sendall(chunk if sent == 0 else b"x" * 65536)
            sent += 65536
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = c.reply()
    assert r["error"]["class"] == "GenericError" and "exceeds" in r["error"]["desc"]
    with pytest.raises((EOFError, ConnectionResetError)):
        c.recv()
    assert other.cmd("query-status")["return"]["running"] is True
    other.close()


def test_too_deep_nesting_is_refused(server):
    c = Raw(server.address.path)
    c.recv()
    try:
        c.send("[" * 5000)
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = c.reply()
    assert "nesting" in r["error"]["desc"]


def test_hundred_clients_and_garbage_do_not_disturb_another(server, machine):
    good = Raw(server.address.path)
    good.recv()
    good.cmd("qmp_capabilities")
    idle = []
    for _ in range(100):
        s = socket.socket(socket.AF_UNIX)
        s.connect(server.address.path)
        idle.append(s)          # never read: their greetings sit in their buffers
    noisy = socket.socket(socket.AF_UNIX)
    noisy.connect(server.address.path)
    noisy.settimeout(10)
    garbage = os.urandom(1 << 20)
    try:
        for _ in range(10):     # 10 MB of garbage, and it never reads its error replies
            noisy.sendall(garbage)
    except (BrokenPipeError, ConnectionResetError):
        pass                    # dropped by the server: exactly what should happen
    assert good.cmd("query-balloon")["return"]["actual"] == 64 * MiB
    good.cmd("balloon", {"value": 48 * MiB})
    while True:
        ev = good.recv()
        if ev.get("event") == "BALLOON_CHANGE" and ev["data"]["actual"] == 48 * MiB:
            break
    for s in idle:
        s.close()
    noisy.close()
    good.close()


def test_client_that_never_reads_is_dropped_and_events_go_on(tmp_path):
    m = FakeMachine(driver=False)
    s = QmpServer(m, f"unix:{tmp_path}/s.sock", max_output=64 * 1024)
    s.start()
    slow = Raw(s.address.path)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.recv()
    slow.cmd("qmp_capabilities")          # negotiated, so it gets events; from now on it reads nothing
    good = Raw(s.address.path)
    good.recv()
    good.cmd("qmp_capabilities")
    seen: list[dict] = []
    stops = threading.Semaphore(0)

    def read_all() -> None:
        try:
            while True:
                msg = good.recv()
                seen.append(msg)
                if msg.get("event") == "STOP":
                    stops.release()
        except (EOFError, OSError):
            pass

    threading.Thread(target=read_all, daemon=True).start()
    rounds = 0
    while s.client_count == 2 and rounds < 100_000:
        m.pause()                         # events come from this thread and never wait on a client
        m.resume()
        rounds += 1
        assert stops.acquire(timeout=10)  # the good client keeps up; the slow one falls behind
    assert s.client_count == 1            # the one that does not read was dropped
    slow.sock.settimeout(10)
    with pytest.raises(EOFError):
        while True:
            slow.recv()
    good.sock.sendall(b'{"execute": "query-status", "id": "last"}')
    deadline = time.monotonic() + 10
    while not any(msg.get("id") == "last" for msg in list(seen)) and time.monotonic() < deadline:
        time.sleep(0.01)
    last = [msg for msg in seen if msg.get("id") == "last"]
    assert last and last[0]["return"]["running"] is True
    assert sum(1 for msg in seen if msg.get("event") == "STOP") == rounds
    good.close()
    slow.close()
    s.close()
    m.close()


# --- addresses and start-up errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, kind, where",
    [
        ("unix:/tmp/x.sock", "unix", "/tmp/x.sock"),
        ("unix:/tmp/x.sock,server,wait=off", "unix", "/tmp/x.sock"),
        ("unix:/tmp/x.sock,server=on,wait=off", "unix", "/tmp/x.sock"),
        ("unix:/tmp/x.sock,server,nowait", "unix", "/tmp/x.sock"),
        ("tcp:127.0.0.1:4444", "tcp", ("127.0.0.1", 4444)),
        ("tcp:127.0.0.1:4444,server,wait=off", "tcp", ("127.0.0.1", 4444)),
        ("tcp:[::1]:4444", "tcp", ("::1", 4444)),
        ("tcp::4444", "tcp", ("127.0.0.1", 4444)),
    ],
)
def test_parse_address(text, kind, where):
    a = parse_address(text)
    assert a.kind == kind
    assert (a.path if kind == "unix" else (a.host, a.port)) == where


@pytest.mark.parametrize(
    "text", ["stdio", "unix:", "tcp:127.0.0.1", "tcp:127.0.0.1:99999", "unix:/x,wait=on", "unix:/x,server=off",
             "unix:/x,bogus", "telnet:127.0.0.1:4444", "/tmp/x.sock"],
)
def test_parse_address_rejects(text):
    with pytest.raises(ConfigError) as e:
        parse_address(text)
    assert "\n" not in str(e.value)


def test_existing_socket_path_is_a_one_line_error(tmp_path, machine):
    path = tmp_path / "taken"
    path.write_text("")
    with pytest.raises(PyvmmError) as e:
        QmpServer(machine, f"unix:{path}").start()
    assert "already exists" in str(e.value) and "\n" not in str(e.value)
    assert path.read_text() == ""       # not removed


def test_uncreatable_socket_path_is_a_one_line_error(tmp_path, machine):
    with pytest.raises(PyvmmError) as e:
        QmpServer(machine, f"unix:{tmp_path}/no/such/dir/q.sock").start()
    assert "cannot create QMP socket" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(PyvmmError) as e:
        QmpServer(machine, f"unix:{tmp_path}/{'x' * 200}.sock").start()
    assert "too long" in str(e.value)


def test_port_in_use_is_a_one_line_error(machine):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    with pytest.raises(PyvmmError) as e:
        QmpServer(machine, f"tcp:127.0.0.1:{port}").start()
    assert "already in use" in str(e.value) and "\n" not in str(e.value)
    busy.close()


def test_close_removes_the_socket_and_flushes_pending_events(tmp_path, machine):
    s = QmpServer(machine, f"unix:{tmp_path}/c.sock")
    s.start()
    c = Raw(s.address.path)
    c.recv()
    c.cmd("qmp_capabilities")
    machine.quit()          # SHUTDOWN queued from this thread, then the server closes at once
    s.close()
    assert c.recv()["event"] == "SHUTDOWN"
    with pytest.raises(EOFError):
        c.recv()
    assert not os.path.exists(f"{tmp_path}/c.sock")
