"""pyvmm's QMP driven by the QEMU project's own client library, qemu.qmp, as any existing tool would."""

from __future__ import annotations

import asyncio

import pytest
from qemu.qmp import EventListener, ExecuteError, QMPClient

from pyvmm.monitor.qmp import QmpServer
from tests.support.fake_machine import FakeMachine, MiB

GUEST_STAT_NAMES = {
    "stat-swap-in", "stat-swap-out", "stat-major-faults", "stat-minor-faults", "stat-free-memory",
    "stat-total-memory", "stat-available-memory", "stat-disk-caches", "stat-htlb-pgalloc", "stat-htlb-pgfail",
}


def _connect_arg(address: str) -> str | tuple[str, int]:
    if address.startswith("tcp:"):
        host, port = address[4:].split(",")[0].rsplit(":", 1)
        return host, int(port)
    return address.split(",")[0].removeprefix("unix:")


async def balloon_scenario(address: str, target: int, timeout: float = 60.0) -> dict:
    """Connect, negotiate, balloon to target, wait for BALLOON_CHANGE, query-balloon, qom-get
    guest-stats, quit.  Written against QMP only, so it runs unchanged against QEMU itself (the
    integration tests give it a QEMU socket running the tiny guest).  Returns what it saw."""
    qmp = QMPClient("balloon-scenario")
    await qmp.connect(_connect_arg(address))       # reads the greeting, sends qmp_capabilities
    seen: dict = {"greeting": qmp.greeting._raw if qmp.greeting else None}
    status = await qmp.execute("query-status")
    assert status["status"] in ("running", "paused", "prelaunch")
    with qmp.listener("BALLOON_CHANGE") as listener:
        assert await qmp.execute("balloon", {"value": target}) == {}

        async def reached() -> dict:
            async for event in listener:
                if event["data"]["actual"] == target:
                    return event
            raise AssertionError("event stream ended")

        seen["event"] = await asyncio.wait_for(reached(), timeout)
    seen["query-balloon"] = await qmp.execute("query-balloon")
    assert seen["query-balloon"] == {"actual": target}
    stats = await qmp.execute("qom-get", {"path": "/machine/peripheral/balloon0", "property": "guest-stats"})
    assert set(stats) == {"stats", "last-update"}
    assert set(stats["stats"]) == GUEST_STAT_NAMES
    assert all(isinstance(v, int) for v in stats["stats"].values())
    seen["guest-stats"] = stats
    with qmp.listener("SHUTDOWN") as shutdown:
        await qmp.execute("quit")
        try:
            seen["shutdown"] = await asyncio.wait_for(shutdown.get(), timeout)
        except TimeoutError:
            seen["shutdown"] = None
    await qmp.disconnect()
    return seen


@pytest.fixture
def machine():
    m = FakeMachine()
    yield m
    m.close()


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_balloon_scenario_with_qemu_qmp(machine, tmp_path, kind):
    address = f"unix:{tmp_path}/qmp.sock,server,wait=off" if kind == "unix" else "tcp:127.0.0.1:0"
    with QmpServer(machine, address) as server:
        seen = asyncio.run(balloon_scenario(str(server.address), 40 * MiB))
    assert seen["event"]["event"] == "BALLOON_CHANGE"
    assert seen["event"]["data"] == {"actual": 40 * MiB}
    assert seen["query-balloon"] == {"actual": 40 * MiB}
    assert seen["guest-stats"]["stats"]["stat-total-memory"] == 64 * MiB
    assert seen["shutdown"]["data"]["reason"] == "host-qmp-quit"
    assert machine.status() == "shutdown" and machine.quits == 1
    assert machine.balloon.info().ballooned_pages == 24 * MiB // 4096


def test_errors_reach_qemu_qmp_as_execute_errors(machine, tmp_path):
    async def go(path: str) -> list[tuple[str, str]]:
        qmp = QMPClient("errors")
        await qmp.connect(path)
        out = []
        for cmd, args in (("no-such-command", None), ("balloon", {"value": "64M"}), ("balloon", None)):
            try:
                await qmp.execute(cmd, args)
            except ExecuteError as e:
                out.append((e.error.error.class_, e.error.error.desc))
        # the connection is still good after every error
        out.append(("ok", str((await qmp.execute("query-balloon"))["actual"])))
        await qmp.disconnect()
        return out

    with QmpServer(machine, f"unix:{tmp_path}/e.sock") as server:
        got = asyncio.run(go(server.address.path))
    assert got == [
        ("CommandNotFound", "The command no-such-command has not been found"),
        ("GenericError", "Invalid parameter type for 'value', expected: integer"),
        ("GenericError", "Parameter 'value' is missing"),
        ("ok", str(64 * MiB)),
    ]


def test_several_qemu_qmp_clients_all_get_events(machine, tmp_path):
    async def go(path: str) -> list[dict]:
        clients = [QMPClient(f"c{i}") for i in range(5)]
        listeners = [EventListener("STOP") for _ in clients]
        for c, listener in zip(clients, listeners, strict=False):
            await c.connect(path)
            c.register_listener(listener)
        await clients[0].execute("stop")
        events = [await asyncio.wait_for(listener.get(), 10) for listener in listeners]
        for c, listener in zip(clients, listeners, strict=False):
            c.remove_listener(listener)
            await c.disconnect()
        return events

    with QmpServer(machine, f"unix:{tmp_path}/m.sock") as server:
        events = asyncio.run(go(server.address.path))
    assert [e["event"] for e in events] == ["STOP"] * 5
