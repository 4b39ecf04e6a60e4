"""Shared benchmark plumbing: paths, prerequisites, interleaved runs, statistics, reference VMMs, machine facts."""

from __future__ import annotations

import contextlib
import cProfile
import dataclasses
import io
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
GUEST_ELF = Path(os.environ.get("PYVMM_BENCH_GUEST", ROOT / "guest" / "build" / "guest.elf"))
FIRMWARE_ELF = ROOT / "firmware" / "build" / "firmware.elf"
KVM_FLOOR = BENCH / "build" / "kvm_floor"
QEMU = "qemu-system-x86_64"
PYTHON = sys.executable
RUN_TIMEOUT = 120.0   # seconds any single VM run may take before it is killed and reported as failed

if str(ROOT) not in sys.path:  # the in-process benchmarks import pyvmm from this tree
    sys.path.insert(0, str(ROOT))

# A user's pyvmm runs from cached bytecode; an environment with PYTHONDONTWRITEBYTECODE would make every
# timed child recompile all of pyvmm (tens of ms per start). Children keep their .pyc files under
# bench/build/ (ignored by git), and each benchmark's warm-up round fills that cache.
PYCACHE = BENCH / "build" / "pycache"
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ["PYTHONPYCACHEPREFIX"] = str(PYCACHE)


class Unavailable(Exception):
    """A piece a benchmark needs is missing; the message says which and how to get it (no traceback)."""


# --- prerequisites ----------------------------------------------------------------------------

def need_kvm() -> None:
    if not os.path.exists("/dev/kvm"):
        raise Unavailable("/dev/kvm does not exist (load kvm_intel/kvm_amd, or run on a host with KVM)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise Unavailable("/dev/kvm is not readable and writable by this user (add yourself to group kvm)")


def need_guest() -> Path:
    if not GUEST_ELF.exists():
        where = GUEST_ELF.relative_to(ROOT) if GUEST_ELF.is_relative_to(ROOT) else GUEST_ELF
        raise Unavailable(f"the tiny guest {where} is not built (run `make -C guest`)")
    return GUEST_ELF


def need_firmware() -> Path:
    if not FIRMWARE_ELF.exists():
        raise Unavailable("the boot ROM firmware/build/firmware.elf is not built (run `make -C firmware`)")
    return FIRMWARE_ELF


def need_qemu() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise Unavailable(f"{QEMU} is not installed (run `make host-deps`, or apt-get install qemu-system-x86)")
    return path


def need_qmp() -> None:
    try:
        import qemu.qmp.legacy  # noqa: F401
    except ImportError as e:
        raise Unavailable(f"the qemu.qmp package is missing ({e}); install pyvmm's test extra") from None


def need_floor() -> Path:
    if not os.access(KVM_FLOOR, os.X_OK):
        raise Unavailable("bench/build/kvm_floor is not built (run `make -C bench`)")
    return KVM_FLOOR


def need_pyvmm(*modules: str) -> None:
    """pyvmm and the named submodules (e.g. 'pyvmm.virtio.balloon') must import."""
    import importlib

    for name in ("pyvmm.vm", *modules):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise Unavailable(f"{name} cannot be imported ({e}); that part of pyvmm is not there yet") from None


def have(check: Callable[[], object]) -> str | None:
    """None when the check passes, else the reason it does not."""
    try:
        check()
    except Unavailable as e:
        return str(e)
    return None


# --- statistics and results -------------------------------------------------------------------

def summarize(values: Iterable[float]) -> dict:
    v = [float(x) for x in values]
    if not v:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {"n": len(v), "median": statistics.median(v), "min": min(v), "max": max(v)}


@dataclasses.dataclass
class Row:
    """One measured quantity over repeated runs; a ratio row holds the per-round pyvmm/reference ratios."""

    name: str
    unit: str
    values: list[float]
    kind: str = "measure"          # "measure" or "ratio"
    goal: str = ""                 # e.g. "<= 1.3" for a ratio with a stated goal
    note: str = ""

    def to_json(self) -> dict:
        d = {"name": self.name, "unit": self.unit, "kind": self.kind, "values": self.values,
             **summarize(self.values)}
        if self.goal:
            d["goal"] = self.goal
            d["goal_met"] = goal_met(self.goal, d["median"])
        if self.note:
            d["note"] = self.note
        return d


def goal_met(goal: str, value: float | None) -> bool | None:
    m = re.fullmatch(r"\s*(<=|<|>=|>)\s*([0-9.]+)\s*", goal)
    if value is None or not m:
        return None
    op, bound = m.group(1), float(m.group(2))
    return {"<=": value <= bound, "<": value < bound, ">=": value >= bound, ">": value > bound}[op]


@dataclasses.dataclass
class Result:
    """What one benchmark produced: rows, free-text notes, and the reasons for anything it skipped."""

    name: str
    title: str
    rows: list[Row] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def add(self, name: str, unit: str, values: list[float], **kw) -> Row | None:
        if not values:
            return None
        row = Row(name, unit, list(values), **kw)
        self.rows.append(row)
        return row

    def ratio(self, name: str, num: list[float], den: list[float], **kw) -> Row | None:
        """Per-round ratios num[i]/den[i] of runs made in the same round (interleaved)."""
        pairs = [a / b for a, b in zip(num, den, strict=False) if a is not None and b]
        if not pairs:
            return None
        return self.add(name, "x", pairs, kind="ratio", **kw)

    def to_json(self) -> dict:
        return {"name": self.name, "title": self.title, "seconds": round(self.seconds, 1),
                "rows": [r.to_json() for r in self.rows], "notes": self.notes, "skipped": self.skipped}


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}"
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if a >= 1 else f"{value:.3f}"


def markdown(result: Result) -> str:
    """The benchmark's rows as a Markdown table, then its notes and skips."""
    out = []
    if result.rows:
        out.append("| measure | unit | runs | median | min | max | goal |")
        out.append("|---|---|---:|---:|---:|---:|---|")
        for r in result.rows:
            s = summarize(r.values)
            goal = ""
            if r.goal:
                met = goal_met(r.goal, s["median"])
                goal = f"{r.goal} ({'met' if met else 'not met'})"
            name = f"**{r.name}**" if r.kind == "ratio" else r.name
            out.append(f"| {name} | {r.unit} | {s['n']} | {fmt(s['median'], r.unit)} | {fmt(s['min'], r.unit)} "
                       f"| {fmt(s['max'], r.unit)} | {goal} |")
    items = [f"- {n}" for n in result.notes] + [f"- skipped: {s}" for s in result.skipped]
    if items:
        out += ([""] if out else []) + items
    return "\n".join(out)


def print_result(result: Result) -> None:
    print(f"\n## {result.title}\n")
    print(markdown(result))
    sys.stdout.flush()


def standalone(run: Callable[..., Result], argv: list[str] | None = None) -> int:
    """main() of a single benchmark: `python bench/NAME.py [--repeats N]` prints its table."""
    import argparse

    p = argparse.ArgumentParser(description=run.__doc__)
    p.add_argument("--repeats", type=int, default=None, help="rounds of interleaved runs")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    try:
        result = run(repeats=args.repeats) if args.repeats else run()
    except Unavailable as e:
        print(f"benchmark not run: {e}")
        return 0
    result.seconds = time.monotonic() - t0
    print_result(result)
    return 0


# --- running VMs ------------------------------------------------------------------------------

@dataclasses.dataclass
class RunOutcome:
    wall: float                     # seconds from just before fork/exec to reaping the process
    code: int | None                # exit status (None: killed after the timeout)
    stdout: str
    stderr: str
    launched: float                 # time.monotonic() just before the launch

    def tail(self, lines: int = 3) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return " | ".join(text[-lines:]) if text else "(no output)"


def timed_run(cmd: list[str], timeout: float = RUN_TIMEOUT, env: dict | None = None,
              cwd: Path = ROOT) -> RunOutcome:
    """Run a command with stdin closed and output captured; the wall time includes fork, exec and exit."""
    full_env = dict(os.environ, **(env or {}))
    launched = time.monotonic()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=cwd, env=full_env)
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        code = None
    wall = time.perf_counter() - t0
    return RunOutcome(wall, code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), launched)


def pyvmm_cmd(kernel: Path, append: str, *, memory: str = "256M", firmware: bool = True,
              ioeventfd: bool = True, balloon: str = "on", extra: Iterable[str] = ()) -> list[str]:
    cmd = [PYTHON, "-m", "pyvmm", "run", str(kernel), "-m", memory, "--append", append, "--balloon", balloon]
    if not firmware:
        cmd.append("--no-firmware")
    if not ioeventfd:
        cmd.append("--no-ioeventfd")
    return cmd + list(extra)


def qemu_cmd(kernel: Path, append: str, *, memory: str = "256M", balloon: bool = True,
             extra: Iterable[str] = ()) -> list[str]:
    """QEMU microvm running the same ELF as pyvmm, with the same exit device and a virtio-balloon."""
    cmd = [QEMU, "-M", "microvm,acpi=off", "-enable-kvm", "-m", memory, "-nodefaults", "-no-user-config",
           "-nographic", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
    if balloon:
        cmd += ["-device", "virtio-balloon-device"]
    return cmd + ["-kernel", str(kernel), "-append", append] + list(extra)


def guest_passed(outcome: RunOutcome, scenario: str, engine: str) -> bool:
    """The guest's verdict: its PASS line, and the exit status its engine maps code 0 to."""
    ok_code = 1 if engine == "qemu" else 0     # isa-debug-exit: (code << 1) | 1
    return outcome.code == ok_code and f"scenario {scenario}: PASS" in outcome.stdout


def interleave(runners: dict[str, Callable[[], object]], rounds: int,
               progress: str = "", warmup: bool = False) -> dict[str, list[object]]:
    """Run each runner once per round, in the same order every round (A B A B ...), so slow drift of
    a shared machine lands on every runner alike; returns each runner's results in round order.
    With warmup, one uncounted round first (bytecode and page caches filled, binaries paged in)."""
    out: dict[str, list[object]] = {name: [] for name in runners}
    if warmup:
        if progress:
            print(f"  {progress}: warm-up round", file=sys.stderr, flush=True)
        for fn in runners.values():
            fn()
    for i in range(rounds):
        if progress:
            print(f"  {progress}: round {i + 1}/{rounds}", file=sys.stderr, flush=True)
        for name, fn in runners.items():
            out[name].append(fn())
    return out


# --- host memory of another process -----------------------------------------------------------

def smaps_rss(pid: int) -> dict:
    """From /proc/PID/smaps: total Rss, anonymous Rss, and the Rss and size of the largest anonymous
    mapping (guest RAM in both pyvmm and QEMU), all in bytes."""
    total = anon_total = 0
    best_size = best_rss = 0
    size = rss = 0
    anonymous = False
    header = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")

    def close_mapping() -> None:
        nonlocal best_size, best_rss
        if anonymous and size > best_size:
            best_size, best_rss = size, rss

    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if header.match(line):
                close_mapping()
                fields = line.split()
                anonymous = len(fields) < 6 or fields[5] == ""   # no path: an anonymous mapping
                size = rss = 0
            elif line.startswith("Size:"):
                size = int(line.split()[1]) * 1024
            elif line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
                total += rss
            elif line.startswith("Anonymous:"):
                anon_total += int(line.split()[1]) * 1024
    close_mapping()
    return {"rss": total, "anon": anon_total, "ram_rss": best_rss, "ram_size": best_size}


# --- facts about the machine ------------------------------------------------------------------

def _first(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return out.strip().splitlines()[0] if out.strip() else "unavailable"


def kvm_module() -> str:
    mods = [m for m in ("kvm_pvm", "kvm_intel", "kvm_amd") if os.path.isdir(f"/sys/module/{m}")]
    return ", ".join(mods) if mods else ("kvm (vendor module unknown)" if os.path.isdir("/sys/module/kvm")
                                         else "none")


def tsc_khz() -> tuple[float, str]:
    """The guest's TSC frequency in kHz (KVM_GET_TSC_KHZ on a scratch vCPU), or the host's cpu MHz."""
    try:
        from pyvmm.kvm.system import Kvm

        kvm = Kvm()
        try:
            vm = kvm.create_vm()
            try:
                vcpu = vm.create_vcpu(0)
                try:
                    return float(vcpu.get_tsc_khz()), "KVM_GET_TSC_KHZ"
                finally:
                    vcpu.close()
            finally:
                vm.close()
        finally:
            kvm.close()
    except Exception:  # noqa: BLE001, S110 - any failure here means: fall back to /proc/cpuinfo
        pass
    for line in _lines("/proc/cpuinfo"):
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1]) * 1000, "/proc/cpuinfo cpu MHz"
    raise Unavailable("cannot learn the TSC frequency (no KVM_GET_TSC_KHZ, no cpu MHz in /proc/cpuinfo)")


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return f.readlines()
    except OSError:
        return []


def loadavg() -> str:
    return " ".join("".join(_lines("/proc/loadavg")).split()[:3])


def machine_info() -> dict:
    cpu = next((x.split(":", 1)[1].strip() for x in _lines("/proc/cpuinfo") if x.startswith("model name")),
               "unknown")
    mem = next((f"{int(x.split()[1]) >> 10} MiB" for x in _lines("/proc/meminfo") if x.startswith("MemTotal")),
               "unknown")
    qemu = _first([QEMU, "--version"]) if shutil.which(QEMU) else "not installed"
    commit = _first(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(),
        "kvm_module": kvm_module(), "python": platform.python_version(),
        "python_impl": platform.python_implementation(), "qemu": qemu, "pyvmm_commit": commit,
        "loadavg_start": loadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# --- profiling every thread of an in-process run ----------------------------------------------

@contextlib.contextmanager
def profile_threads(out: list[cProfile.Profile]):
    """cProfile every thread started inside the block (vCPUs, event loop) and the calling thread.

    cProfile (3.11) hooks one thread; pyvmm's exit path runs on vCPU threads, so each new thread gets
    its own profiler and the caller merges them with pstats afterwards.
    """
    original = threading.Thread.run

    def run(self) -> None:
        prof = cProfile.Profile()
        out.append(prof)
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()

    main = cProfile.Profile()
    out.append(main)
    threading.Thread.run = run
    main.enable()
    try:
        yield
    finally:
        main.disable()
        threading.Thread.run = original


def write_profile(profiles: list[cProfile.Profile], path_txt: Path, title: str, top: int = 25) -> None:
    """Merge per-thread profiles; write the top entries by cumulative and by own time, and a .prof."""
    stats = None
    for p in profiles:
        try:
            p.create_stats()
        except Exception:  # noqa: BLE001, S112 - a thread's profiler that cannot stop adds nothing
            continue
        if not p.stats:
            continue
        if stats is None:
            stats = pstats.Stats(p)
        else:
            stats.add(p)
    path_txt.parent.mkdir(parents=True, exist_ok=True)
    if stats is None:
        path_txt.write_text(f"{title}\n(no profile data)\n")
        return
    stats.dump_stats(str(path_txt.with_suffix(".prof")))
    buf = io.StringIO()
    stats.stream = buf
    buf.write(f"{title}\n{'=' * len(title)}\nAll threads merged (vCPU, event loop, main). cProfile slows the "
              "Python side several-fold, so read proportions, not absolute times. Time in KVM_RUN (fcntl.ioctl) "
              "is the guest running; time.sleep, "
              "epoll and lock acquire are threads waiting, not work.\n\n")
    buf.write(f"--- top {top} by cumulative time ---\n")
    stats.sort_stats("cumulative").print_stats(top)
    buf.write(f"\n--- top {top} by own time (tottime) ---\n")
    stats.sort_stats("tottime").print_stats(top)
    text = buf.getvalue().replace(str(ROOT) + "/", "")
    path_txt.write_text(text)


class Background:
    """A VM process left running while the benchmark talks to it; its stdout is collected by a thread."""

    def __init__(self, cmd: list[str]) -> None:
        self.launched = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=ROOT)
        self._out = bytearray()
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            chunk = self.proc.stdout.read1(65536)
            with self._cond:
                if not chunk:
                    self._cond.notify_all()
                    return
                self._out += chunk
                self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return self._out.decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float = RUN_TIMEOUT) -> re.Match:
        """Wait until the console matches; Unavailable-free RuntimeError with the console tail otherwise."""
        rx = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self._out.decode("utf-8", "replace"))
                if m:
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    tail = " | ".join(self._out.decode("utf-8", "replace").strip().splitlines()[-3:])
                    raise RuntimeError(f"never printed /{pattern}/ (exit status {self.proc.poll()}): {tail}")
                self._cond.wait(min(left, 0.1))

    def stop(self, timeout: float = 5.0) -> None:
        """End the process we started: SIGTERM, then SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(2)
        for f in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(Exception):
                f.close()


def qmp_socket_path(tag: str) -> str:
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"pyvmm-bench-{tag}-{os.getpid()}.sock")


def qmp_connect(path: str, timeout: float = 10.0):
    """A connected synchronous QMP client (qemu.qmp's legacy API) once the socket exists."""
    try:
        from qemu.qmp.legacy import QEMUMonitorProtocol
    except ImportError as e:
        raise Unavailable(f"the qemu.qmp package is missing ({e}); pip install qemu.qmp") from None
    deadline = time.monotonic() + timeout
    while True:
        try:
            q = QEMUMonitorProtocol(path)
            q.connect(negotiate=True)
            return q
        except (OSError, Exception):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def reference_runners(res: Result, pyvmm_cycle, qemu_cycle, qemu_missing: str | None, *args):
    """The {engine: runner} pair for interleave(): each cycle called with args; a cycle that fails is
    recorded in the returned failures (shown in the table) instead of ending the benchmark, and a
    missing QEMU becomes a skipped note."""
    failures: dict[str, str] = {}

    def guarded(name: str, fn):
        def go():
            try:
                return fn(*args)
            except Unavailable:
                raise
            except Exception as e:  # noqa: BLE001 - a failed run is reported in the table, not raised
                failures.setdefault(name, f"{type(e).__name__}: {e}")
                return None
        return go

    runners = {"pyvmm": guarded("pyvmm", pyvmm_cycle)}
    if qemu_missing:
        res.skipped.append(f"QEMU reference: {qemu_missing}")
    else:
        runners["QEMU"] = guarded("QEMU", qemu_cycle)
    return runners, failures


def qmp_quit(q) -> None:
    """Ask a VMM to quit over a legacy QMP client and close it; the VMM closes the socket as it quits,
    which the client reports as EOF: expected here, so nothing is raised."""
    if q is None:
        return
    with contextlib.suppress(Exception):
        q.cmd_obj({"execute": "quit"})
    with contextlib.suppress(Exception):
        q.close()
