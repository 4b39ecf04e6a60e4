"""The balloon's cycle with a real workload: Linux with its busybox shell, /bin/memhog dirties most of
guest RAM and frees it, then the host balloons the guest down and back; pyvmm and QEMU microvm on the
same kernel, initramfs and command line, one after the other, driven alike (keys on the serial
console, QMP for the balloon).

    python bench/linux_cycle.py [--ram 1024] [--dirty 768] [--low 256] [--repeats 1]

Each boot also probes the open defect of docs/linux.md (user processes that read zeros): the pipeline
`seq 1 1000 | sort -n -r | head -1` right after boot and again after the cycle, and after the cycle
memhog allocates RECHECK_MIB again and reads every page back (`v`), so the table says, for each VMM,
whether the crash needs the balloon's discards and whether it is pyvmm's or this host's.
`--probe-only` boots, runs the pipeline three times with no balloon activity, and stops. Every figure
is printed as it is taken, so a run stopped half-way still shows what it measured.

Not part of `make bench`: each VMM boots Linux to a shell prompt and every first touch of a page by
memhog is a guest page fault handled by emulated kernel code. On the host kernel of
results/linux_cycle.md (6.18.44-fc-v1300, idle machine) one round of both took 28.5 minutes: boot 36 s
(pyvmm) and 34 s (QEMU), `memhog a 768 f q` 609 s and 597 s, inflate to 256 MiB 84 s and 79 s,
deflate 77 s and 71 s; on an earlier, slower host kernel `memhog a 768` had not finished in the
half-hour step timeout. Either way far beyond `make bench`'s 10 minutes. Running both VMMs at once was
tried on that slower kernel, on this 2-core host, and was worse: both boots took longer and neither
guest finished the first pipeline in 30 minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import common
from common import Result, Unavailable

import linux

MIB = 1 << 20
RAM_MIB, DIRTY_MIB, LOW_MIB = 1024, 768, 256
PROMPT = "[pyvmm-linux "
BOOT_TIMEOUT = 1800.0
STEP_TIMEOUT = 1800.0
PROGRESS_TIMEOUT = 600.0   # memhog prints a line every 16 MiB; this long without one is a hung guest
POLL = 0.25
PIPELINE = "seq 1 1000 | sort -n -r | head -1"
RECHECK_MIB = 64


def shell_files() -> tuple[Path, Path]:
    from pyvmm.config import linux_cache

    cache = linux_cache()
    kernel, initrd = cache / "vmlinux", cache / "initramfs-shell.cpio"
    for f in (kernel, initrd):
        if not f.exists():
            raise Unavailable(f"{f} is not built (run `make linux-guest`)")
    return kernel, initrd


def append() -> str:
    """bench/linux.py's command line: pyvmm's Linux default, the kvm_pvm masks, acpi=off."""
    return linux.linux_append()


def pyvmm_cmd(ram_mib: int, sock: str) -> list[str]:
    kernel, initrd = shell_files()
    return [common.PYTHON, "-m", "pyvmm", "run", str(kernel), "-initrd", str(initrd), "-m", f"{ram_mib}M",
            "-no-acpi", "-append", append(), "-device", "virtio-balloon-device", "-serial", "stdio",
            "-qmp", f"unix:{sock},server,wait=off"]


def qemu_cmd(ram_mib: int, sock: str) -> list[str]:
    kernel, initrd = shell_files()
    return [common.QEMU, "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "qemu64,+xsaveerptr",
            "-m", f"{ram_mib}M", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-device", "virtio-balloon-device,id=balloon0", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", append(), "-qmp", f"unix:{sock},server=on,wait=off"]


class Guest:
    """One VMM in a pty (pexpect), its shell, and a QMP client."""

    def __init__(self, cmd: list[str], sock: str) -> None:
        import pexpect

        self.t0 = time.monotonic()
        self.child = pexpect.spawn(cmd[0], cmd[1:], cwd=str(common.ROOT), encoding="utf-8",
                                   codec_errors="replace", timeout=60, dimensions=(50, 200),
                                   env=dict(os.environ, PYTHONPATH=str(common.ROOT), TERM="dumb"))
        self.q = common.qmp_connect(sock, timeout=60)

    def type(self, text: str) -> None:
        for i in range(0, len(text), 8):      # the 16550 receive FIFO holds 16 bytes
            self.child.send(text[i:i + 8])
            time.sleep(0.02)

    def command(self, line: str, until: str, timeout: float = STEP_TIMEOUT) -> float:
        t = time.monotonic()
        self.type(line + "\r")
        self.child.expect(until, timeout=timeout)
        self.child.expect_exact(PROMPT, timeout=60)
        return time.monotonic() - t

    def dirty(self, mib: int, say) -> float:
        """`memhog a MIB f q`, to its end however long that takes (ten minutes for 768 MiB here, more
        on a slower host kernel: every first touch of a page is a guest page fault, handled by emulated
        kernel code), as long as a
        progress line comes every PROGRESS_TIMEOUT; says how far it is every 128 MiB."""
        t = time.monotonic()
        self.type(f"memhog a {mib} f q\r")
        while self.child.expect([r"memhog: touched (\d+)/", r"memhog: bye"], timeout=PROGRESS_TIMEOUT) == 0:
            done = int(self.child.match.group(1))
            if done % 128 == 0:
                say(f"touched {done}/{mib} MiB at {time.monotonic() - t:.0f} s")
        self.child.expect_exact(PROMPT, timeout=60)
        return time.monotonic() - t

    def output(self, line: str, timeout: float = STEP_TIMEOUT) -> tuple[list[str], int]:
        """The lines a shell command printed (the echoed command left out) and its exit status."""
        self.type(f"{line}; echo cycle-rc=$?\r")
        self.child.expect(r"cycle-rc=(\d+)\r", timeout=timeout)
        rc = int(self.child.match.group(1))
        lines = [ln.strip() for ln in self.child.before.splitlines()]
        self.child.expect_exact(PROMPT, timeout=60)
        return [ln for ln in lines if ln and "cycle-rc" not in ln and line not in ln], rc

    def pipeline_ok(self) -> float:
        """1 if the probe pipeline printed 1000 and exited 0, else 0 (a stage crashed)."""
        lines, rc = self.output(PIPELINE)
        return float(rc == 0 and "1000" in lines)

    def actual_mib(self) -> float:
        return self.q.cmd_obj({"execute": "query-balloon"})["return"]["actual"] / MIB

    def ram_rss_mib(self) -> float:
        return common.smaps_rss(self.child.pid)["ram_rss"] / MIB

    def balloon(self, mib: int) -> float:
        t = time.monotonic()
        self.q.cmd_obj({"execute": "balloon", "arguments": {"value": mib * MIB}})
        while self.actual_mib() != mib:
            if time.monotonic() - t > STEP_TIMEOUT:
                raise TimeoutError(f"actual {self.actual_mib():.0f} MiB never reached {mib} MiB")
            time.sleep(POLL)
        return time.monotonic() - t

    def close(self) -> None:
        common.qmp_quit(self.q)
        with contextlib.suppress(Exception):
            self.child.close(force=True)


def cycle(cmd_for, ram_mib: int, dirty_mib: int, low_mib: int, probe_only: bool = False) -> dict:
    sock = common.qmp_socket_path(f"cycle-{cmd_for.__name__}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(sock)
    g = Guest(cmd_for(ram_mib, sock), sock)
    out: dict = {}

    def step(**got: float) -> None:
        # Each figure as it is taken, so a run stopped half-way still leaves what it measured.
        out.update(got)
        shown = ", ".join(f"{k} {v:.1f}" for k, v in got.items())
        say(shown)

    def say(text: str) -> None:
        print(f"  {cmd_for.__name__} {time.monotonic() - g.t0:7.0f} s: {text}", file=sys.stderr, flush=True)

    try:
        g.child.expect_exact(PROMPT, timeout=BOOT_TIMEOUT)
        step(boot=time.monotonic() - g.t0)
        time.sleep(2)
        step(rss_boot=g.ram_rss_mib(), actual_boot=g.actual_mib(), pipe_boot=g.pipeline_ok())
        if probe_only:    # the pipeline twice more, no balloon activity at all
            step(pipe_boot_2=g.pipeline_ok())
            step(pipe_boot_3=g.pipeline_ok())
            return out
        step(dirty=g.dirty(dirty_mib, say))
        step(rss_dirty=g.ram_rss_mib(), actual_dirty=g.actual_mib())
        step(inflate=g.balloon(low_mib))
        step(rss_low=g.ram_rss_mib(), actual_low=g.actual_mib())
        step(deflate=g.balloon(ram_mib))
        step(rss_back=g.ram_rss_mib(), actual_back=g.actual_mib())
        step(pipe_after=g.pipeline_ok())
        lines, _ = g.output(f"memhog a {RECHECK_MIB} v f q")
        wrong = [ln for ln in lines if "pages wrong" in ln]
        step(wrong_after=float(wrong[0].split(": ")[2].split()[0]) if wrong else float("nan"))
        g.command("echo alive-$((6*7))", r"alive-42")
        return out
    finally:
        g.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)


def run(repeats: int = 1, ram_mib: int = RAM_MIB, dirty_mib: int = DIRTY_MIB, low_mib: int = LOW_MIB,
        probe_only: bool = False) -> Result:
    if not 0 < low_mib < ram_mib or not 0 < dirty_mib < ram_mib:
        raise ValueError(f"need 0 < --low {low_mib} < --ram {ram_mib} and 0 < --dirty {dirty_mib} < --ram")
    common.need_kvm()
    shell_files()
    common.need_qmp()
    res = Result("linux_cycle", f"Linux with a shell: memhog dirties {dirty_mib} MiB and frees it, balloon "
                 f"{ram_mib} -> {low_mib} -> {ram_mib} MiB")
    qemu_missing = common.have(common.need_qemu)
    runners, failures = common.reference_runners(res, lambda: cycle(pyvmm_cmd, ram_mib, dirty_mib, low_mib, probe_only),
                                                 lambda: cycle(qemu_cmd, ram_mib, dirty_mib, low_mib, probe_only),
                                                 qemu_missing)
    got = common.interleave(runners, repeats, f"linux cycle {ram_mib}/{dirty_mib}/{low_mib}")
    rows = (("boot", "boot to the shell prompt", "s"), ("dirty", f"memhog a {dirty_mib} f q", "s"),
            ("inflate", f"balloon {ram_mib} -> {low_mib} MiB, time to `actual`", "s"),
            ("deflate", f"balloon {low_mib} -> {ram_mib} MiB, time to `actual`", "s"),
            ("rss_boot", "guest-RAM RSS at the prompt", "MiB"), ("rss_dirty", "... after memhog", "MiB"),
            ("rss_low", f"... ballooned to {low_mib} MiB", "MiB"), ("rss_back", f"... back at {ram_mib} MiB", "MiB"),
            ("actual_boot", "`actual` at the prompt", "MiB"), ("actual_dirty", "... after memhog", "MiB"),
            ("actual_low", "... after the inflate", "MiB"), ("actual_back", "... after the deflate", "MiB"),
            ("pipe_boot", "the probe pipeline (seq 1 1000, sort -n -r, head -1) right after boot: 1 = prints 1000",
             "ok"),
            ("pipe_boot_2", "... again (--probe-only)", "ok"), ("pipe_boot_3", "... a third time (--probe-only)", "ok"),
            ("pipe_after", "... the same after the cycle", "ok"),
            ("wrong_after", f"memhog a {RECHECK_MIB} after the cycle: pages not reading back what it wrote", "pages"))
    for engine in runners:
        for key, what, unit in rows:
            values = [r[key] for r in got.get(engine, []) if r and key in r]
            if values:
                res.add(f"{engine} {what}", unit, values)
    if "QEMU" in runners:
        for key in ("boot", "dirty", "inflate", "deflate"):
            pairs = [(a[key], b[key]) for a, b in zip(got.get("pyvmm", []), got.get("QEMU", []), strict=False)
                     if a and b and key in a and key in b]
            res.ratio(f"pyvmm / QEMU, {key}", [a for a, _ in pairs], [b for _, b in pairs])
    for name, why in failures.items():
        res.notes.append(f"{name}: some runs failed ({why})")
    res.notes.append(f"Both: `{append()}`, {ram_mib} MiB not preallocated, 1 vCPU, ACPI off, "
                     "virtio-balloon-device with QEMU's default properties (no deflate-on-oom, no reporting); "
                     "guest-RAM RSS from /proc/PID/smaps (the largest anonymous mapping) for both.")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--ram", type=int, default=RAM_MIB)
    p.add_argument("--dirty", type=int, default=DIRTY_MIB)
    p.add_argument("--low", type=int, default=LOW_MIB)
    p.add_argument("--probe-only", action="store_true",
                   help="boot, run the probe pipeline three times with no balloon activity, stop")
    a = p.parse_args(argv)
    t0 = time.monotonic()
    try:
        result = run(a.repeats, a.ram, a.dirty, a.low, a.probe_only)
    except Unavailable as e:
        print(f"benchmark not run: {e}")
        return 0
    except ValueError as e:
        print(f"linux_cycle: error: {e}")
        return 2
    result.seconds = time.monotonic() - t0
    common.print_result(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
