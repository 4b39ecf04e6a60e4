"""The CLI verbs `pyvmm balloon` and `pyvmm info balloon`, talking QMP to a server over the fake machine."""

from __future__ import annotations

import json
import re
import socket
import threading

import pytest

from pyvmm.cli import main
from pyvmm.monitor.qmp import QmpServer
from tests.support.fake_machine import FakeMachine, MiB


@pytest.fixture
def vm(tmp_path):
    m = FakeMachine()
    s = QmpServer(m, f"unix:{tmp_path}/qmp.sock,server,wait=off")
    s.start()
    yield m, s.address.path
    s.close()
    m.close()


@pytest.mark.parametrize("size, expected", [("40M", 40 * MiB), ("40", 40 * MiB), ("32768K", 32 * MiB),
                                             ("0.0625G", 64 * MiB)])
def test_balloon_sizes_and_wait(vm, size, expected):
    m, path = vm
    assert main(["balloon", "--qmp", path, size, "--wait"]) == 0
    assert m.balloon.info().actual == expected


def test_balloon_accepts_unix_prefix_and_returns_at_once_without_wait(vm):
    m, path = vm
    assert main(["balloon", "--qmp", f"unix:{path}", "48M"]) == 0
    assert m.balloon.info().target == 48 * MiB


def test_info_balloon_json(vm, capsys):
    _m, path = vm
    main(["balloon", "--qmp", path, "40M", "--wait"])
    capsys.readouterr()
    assert main(["info", "balloon", "--qmp", path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["actual"] == 40 * MiB
    assert report["stats"]["stat-minor-faults"] == 1234
    assert report["stats"]["stat-htlb-pgfail"] is None      # never received
    assert report["polling-interval"] == 0 and report["last-update"] > 0
    assert report["target"] == 40 * MiB and 0 <= report["stats-age"] < 60
    assert report["ballooned-pages"] == 24 * MiB // 4096


def test_info_balloon_table_for_people(vm, capsys):
    _m, path = vm
    assert main(["info", "balloon", "--qmp", path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["target", "64.0", "MiB"] and out[1].split() == ["actual", "64.0", "MiB"]
    assert any(re.fullmatch(r"host RSS of guest RAM +\d+\.\d MiB", line) for line in out)
    assert any(re.fullmatch(r"stats received +\d+\.\d s ago", line) for line in out)
    assert any(line.split() == ["stat-total-memory", "64.0", "MiB"] for line in out)
    assert any(line.split() == ["stat-htlb-pgfail", "-"] for line in out)
    assert not any(re.search(r"\d+K\b|\(\d+\)", line) for line in out)    # one unit style: MiB


@pytest.mark.parametrize("argv, msg, code", [
    (["balloon", "--qmp", "{path}", "lots"], "pyvmm: balloon size 'lots' is not a size", 2),
    (["balloon", "--qmp", "{path}", "0"], "must be above zero", 2),
    (["balloon", "--qmp", "{path}", "1M"], "pyvmm: balloon: balloon target 1.0 MiB is below the floor", 1),
    (["balloon", "--qmp", "{path}.missing", "64M"], "cannot connect to QMP at unix:", 1),
    (["info", "balloon", "--qmp", "tcp:127.0.0.1:1"], "cannot connect to QMP at tcp:127.0.0.1:1", 1),
    (["balloon", "--qmp", "ftp:x", "64M"], "cannot connect to QMP at unix:ftp:x", 1),   # a path, then
    (["balloon", "--qmp", "tcp:nohost", "64M"], "--qmp tcp:nohost: expected tcp:HOST:PORT", 2),
])
def test_one_line_errors(vm, capsys, argv, msg, code):
    _m, path = vm
    assert main([a.format(path=path) for a in argv]) == code
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_wait_gives_up_when_the_guest_does_not_follow(tmp_path, capsys):
    m = FakeMachine(driver=False)
    with QmpServer(m, f"unix:{tmp_path}/q.sock") as s:
        assert main(["balloon", "--qmp", s.address.path, "32M", "--wait", "--timeout", "0.2"]) == 1
    err = capsys.readouterr().err
    assert "the guest reached 64.0 MiB, not 32.0 MiB" in err and err.count("\n") == 1
    m.close()


def test_a_socket_that_does_not_speak_qmp(tmp_path, capsys):
    path = str(tmp_path / "other.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)

    def talk() -> None:
        conn, _ = srv.accept()
        conn.sendall(b'{"hello": "world"}\n')
        conn.close()

    threading.Thread(target=talk, daemon=True).start()
    assert main(["info", "balloon", "--qmp", path]) == 1
    assert "does not speak QMP" in capsys.readouterr().err
    srv.close()
