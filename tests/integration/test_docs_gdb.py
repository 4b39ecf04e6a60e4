"""docs/gdb.md's walk-through, run as written: its pyvmm command, its gdb commands, its output."""

import re
import shlex
import subprocess
import sys
import threading
import time

import pytest

from tests.support.gdb import gdb_path
from tests.support.guest import ROOT, ensure_built

pytestmark = pytest.mark.kvm

DOC = ROOT / "docs" / "gdb.md"


def walkthrough() -> tuple[list[str], list[str], list[str]]:
    """(pyvmm argv, gdb commands, output lines) of the section "Walk-through"."""
    text = DOC.read_text()
    section = text.split("## Walk-through", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.S)
    run = next(body for lang, body in blocks if body.startswith("pyvmm run"))
    commands, output = [], []
    for lang, body in blocks:
        if lang != "gdb":
            continue
        for line in body.splitlines():
            if line.startswith("(gdb) "):
                commands.append(line[len("(gdb) "):])
            elif line.strip() and line.strip() != "Continuing.":   # gdb -batch does not print it
                output.append(line)
    return shlex.split(run.strip()), commands, output


def normalize(line: str) -> str:
    """Addresses and line numbers may move when the guest is rebuilt; the rest is the doc's word."""
    line = re.sub(r"0x[0-9a-f]+", "0x?", line.rstrip())
    return re.sub(r"\.c:\d+", ".c:?", line)


def test_the_walkthrough_runs_as_documented():
    ensure_built()
    argv, commands, expected = walkthrough()
    assert argv[:2] == ["pyvmm", "run"] and "-s" in argv and "-S" in argv
    assert commands[0] == "target remote :1234" and commands[-1] == "detach"
    vm = subprocess.Popen([sys.executable, "-m", "pyvmm", *argv[1:]], cwd=ROOT, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = vm.stderr.readline()
        assert line.startswith("pyvmm: gdbstub listening on tcp:127.0.0.1:1234 "), line
        script = ["set pagination off", "set confirm off", "set style enabled off", "file guest/build/guest.elf",
                  *commands]
        res = subprocess.run([gdb_path(), "-nx", "-batch", *sum((["-ex", c] for c in script), [])], cwd=ROOT,
                             capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        out = res.stdout + res.stderr
        got = {normalize(x) for x in out.splitlines()}
        missing = [x for x in expected if normalize(x) not in got]
        assert not missing, f"docs/gdb.md shows lines gdb did not print: {missing}\n--- gdb printed:\n{out}"
        assert out.count("Program received signal SIGTRAP") == 3
        # After the detach the guest runs on: the inflate completes.
        console: list[str] = []
        threading.Thread(target=lambda: console.extend(vm.stdout), daemon=True).start()
        deadline = time.monotonic() + 60
        while not any("balloon: target=256 actual=256" in c for c in console) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any("balloon: target=256 actual=256" in c for c in console), "".join(console)
        assert vm.poll() is None
    finally:
        vm.terminate()
        vm.wait(10)
