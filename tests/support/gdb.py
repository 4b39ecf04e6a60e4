"""Real gdb against `pyvmm run -gdb ... -S`: start the VM as a user would, run gdb in batch mode, read both."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.guest import GUEST, ROOT, ensure_built

LISTENING = re.compile(r"gdbstub listening on tcp:\[?([0-9a-fA-F.:]+?)\]?:(\d+) ")


def gdb_path() -> str:
    gdb = shutil.which("gdb")
    if gdb is None:
        raise AssertionError("gdb is not installed: `make test` installs Debian's gdb (apt-get install gdb)")
    return gdb


def symbol(name: str) -> int:
    """A symbol's address in the tiny guest's ELF."""
    from elftools.elf.elffile import ELFFile

    with open(GUEST, "rb") as f:
        for sym in ELFFile(f).get_section_by_name(".symtab").iter_symbols():
            if sym.name == name:
                return sym["st_value"]
    raise KeyError(name)


class GdbVm:
    """`pyvmm run` with a gdbstub, as a subprocess; stderr is collected, the port read from its line."""

    def __init__(self, append: str, *args: str, memory: str = "128M", gdb: str = "tcp:127.0.0.1:0",
                 paused: bool = True) -> None:
        ensure_built()
        cmd = [sys.executable, "-m", "pyvmm", "run", str(GUEST), "-m", memory, "--append", append, *args]
        if gdb == "-s":
            cmd.append("-s")
        else:
            cmd += ["-gdb", gdb]
        if paused:
            cmd.append("-S")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.stderr_lines: list[str] = []
        self.stdout = ""
        line = self.proc.stderr.readline() if self.proc.stderr else ""
        self.stderr_lines.append(line)
        m = LISTENING.search(line)
        if not m:
            self.proc.kill()
            rest = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"no gdbstub line from pyvmm: {line!r} {rest}")
        self.host, self.port = m.group(1), int(m.group(2))
        self._readers = [threading.Thread(target=self._read, args=(self.proc.stderr, True), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stdout, False), daemon=True)]
        for t in self._readers:
            t.start()

    def _read(self, stream, is_err: bool) -> None:
        for line in stream:
            if is_err:
                self.stderr_lines.append(line)
            else:
                self.stdout += line

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def wait_for_output(self, pattern: str, timeout: float = 30) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.stdout)
            if m:
                return m
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the guest's output: {self.stdout[-2000:]}")

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        for t in self._readers:
            t.join(5)
        return code

    def running(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> GdbVm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gdb_batch(port: int, commands: list[str], *, timeout: float = 120, elf: Path = GUEST,
              host: str = "127.0.0.1") -> str:
    """gdb -batch: load the ELF's symbols, connect, run the commands; its whole output."""
    script = ["set pagination off", "set confirm off", "set style enabled off", f"file {elf}",
              f"target remote {host}:{port}", *commands]
    res = subprocess.run([gdb_path(), "-nx", "-batch", *sum((["-ex", c] for c in script), [])],
                         capture_output=True, text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL)
    return res.stdout + res.stderr
