#!/usr/bin/env python3
"""Run the tiny guest under QEMU microvm against QEMU's virtio-balloon and drive it through QMP steps."""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

GUEST = Path(__file__).resolve().parent.parent / "build" / "guest.elf"


class Qmp:
    """A minimal synchronous QMP client: enough for balloon, query-balloon and qom-get/set."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile("rw")
        self.events: list[dict] = []
        json.loads(self.file.readline())  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, **args: object) -> object:
        self.file.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.file.flush()
        while True:
            msg = json.loads(self.file.readline())
            if "event" in msg:
                self.events.append(msg)
                continue
            if "error" in msg:
                raise RuntimeError(f"{name}: {msg['error']}")
            return msg["return"]


def size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("scenario")
    ap.add_argument("--mem", default="256M")
    ap.add_argument("--append", default="", help="extra guest command-line parameters")
    ap.add_argument("--modern", action="store_true", help="virtio-mmio version 2 (force-legacy=false)")
    ap.add_argument("--no-deflate-on-oom", action="store_true")
    ap.add_argument("--kernel", default=str(GUEST))
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument(
        "--step", action="append", default=[],
        help="wait=REGEX | balloon=SIZE | poll=SECONDS (stats polling) | stats (qom-get guest-stats) | "
             "query (query-balloon) | sleep=SECONDS",
    )
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    qmp_path = os.path.join(tmp, "qmp.sock")
    argv = [
        "qemu-system-x86_64", "-M", "microvm,acpi=off", "-enable-kvm", "-m", a.mem, "-nodefaults",
        "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
        "-device", f"virtio-balloon-device,id=balloon0,deflate-on-oom={'off' if a.no_deflate_on_oom else 'on'}",
        "-kernel", a.kernel, "-append", f"scenario={a.scenario} {a.append}".strip(),
        "-qmp", f"unix:{qmp_path},server,wait=off",
    ]
    if a.modern:
        argv[1:1] = ["-global", "virtio-mmio.force-legacy=false"]
    print("+", " ".join(argv), flush=True)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            errors="replace")
    lines: queue.Queue[str] = queue.Queue()

    started = time.monotonic()

    def reader() -> None:
        assert proc.stdout
        for line in proc.stdout:
            line = line.rstrip("\r\n")
            print(f"guest| {time.monotonic() - started:7.2f} {line}", flush=True)
            lines.put(line)

    threading.Thread(target=reader, daemon=True).start()
    qmp = Qmp(qmp_path)
    deadline = time.monotonic() + a.timeout
    try:
        for step in a.step:
            key, _, val = step.partition("=")
            if key == "wait":
                rx = re.compile(val)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        print(f"qemu_run: timeout waiting for {val!r}")
                        return 124
                    try:
                        if rx.search(lines.get(timeout=left)):
                            break
                    except queue.Empty:
                        continue
            elif key == "balloon":
                qmp.cmd("balloon", value=size(val))
            elif key == "poll":
                qmp.cmd("qom-set", path="/machine/peripheral/balloon0",
                        property="guest-stats-polling-interval", value=int(val))
            elif key == "stats":
                print("qmp| guest-stats", qmp.cmd("qom-get", path="/machine/peripheral/balloon0",
                                                  property="guest-stats"), flush=True)
            elif key == "query":
                print("qmp| query-balloon", qmp.cmd("query-balloon"), flush=True)
            elif key == "sleep":
                time.sleep(float(val))
            elif key == "quit":
                qmp.cmd("quit")
            else:
                print(f"qemu_run: unknown step {step!r}")
                return 2
        status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        print("qemu_run: guest did not exit in time")
        return 124
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # isa-debug-exit: status = (code << 1) | 1.
    if status == 0 and "quit" in a.step:
        print("qemu_run: stopped through QMP quit", flush=True)
        return 0
    code = status >> 1 if status & 1 else -1
    print(f"qemu_run: qemu status {status}, guest exit code {code}", flush=True)
    return code if code >= 0 else 125


if __name__ == "__main__":
    sys.exit(main())
