"""Linux guest end to end: boot to the virtio-mmio probe and DRIVER_OK, balloon times, RSS; pyvmm vs QEMU."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import common
from common import Result, Unavailable

MIB = 1 << 20
PAGE = 4096
# Guest code runs emulated on a kvm_pvm host: boot to /init takes about half a minute and every page the
# driver balloons costs 1.5-4 ms (as measured here, with the machine shared). 512 MiB with a 32 MiB step
# (8192 pages each way) keeps one cycle near 90 s, two rounds of both VMMs about six minutes, so that
# `make bench` as a whole stays under ten; `--ram 1024 --low 256` is issue 8's full-size run.
RAM_MIB = 512
LOW_MIB = 480
ROUNDS = 2
POLL = 0.05                 # both VMMs are polled at this interval for every "until" below
BOOT_TIMEOUT = 300.0        # launch to the probe line, and again to DRIVER_OK
PROBE_LINE = r"\[\s*([0-9.]+)\] virtio-mmio: Registering device"
INIT_LINE = r"Run /init as init process"
# The first line on the console: the serial console replays the log from its first message when it registers.
FIRST_LINE = r"Linux version \d"
DRIVER_OK = 4               # device status bit (virtio spec: "Device Status Field")
QEMU_BALLOON = "/machine/peripheral/balloon0"
# Kernels of another config: NAME -> the fragment `linux/build.sh --variant NAME` adds to guest.config.
# Measured for boot only (the balloon rows are the driver's, the same code in both).
VARIANTS = {"nopci": common.BENCH / "linux-nopci.config"}
# (result key, ratio name): the boot marks every run has, then the balloon steps of a full cycle.
BOOT_MARKS = (("first", "boot to the first message"), ("probe", "boot to probe"), ("driver_ok", "boot to DRIVER_OK"),
              ("init", "boot to Run /init"))
STEP_MARKS = (("inflate", "inflate time"), ("deflate", "deflate time"))


def target_timeout(pages: int) -> float:
    """Seconds either VMM gets to move the balloon by this many pages (about 1 ms a page here, x5)."""
    return 120.0 + 0.005 * pages


def linux_files(variant: str | None = None) -> tuple[Path, Path]:
    """The minimal kernel and initramfs `make linux-guest` caches (Unavailable if not built), or a
    variant's, built here by `linux/build.sh --variant` when missing (133 s once on a 2-core machine)."""
    try:
        from pyvmm.config import linux_cache
    except ImportError as e:
        raise Unavailable(f"pyvmm.config cannot be imported ({e})") from None
    cache = linux_cache()
    if variant is not None:
        script = common.ROOT / "linux" / "build.sh"
        print(f"  linux --variant {variant}: linux/build.sh (builds once, then up to date)", file=sys.stderr,
              flush=True)
        # The script's cache root is pyvmm's (linux_cache() may follow XDG_CACHE_HOME).
        done = subprocess.run(["bash", str(script), "--variant", variant, str(VARIANTS[variant])],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYVMM_CACHE": str(cache.parent)})
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise Unavailable(f"the {variant} kernel did not build: {last}")
        cache = cache.with_name(f"{cache.name}-{variant}")
    kernel, initrd = cache / "vmlinux", cache / "initramfs.cpio.gz"
    for f in (kernel, initrd):
        if not f.exists():
            raise Unavailable(f"the minimal Linux guest {f} is not built (run `make linux-guest`, about 4 "
                              "minutes once per machine)")
    return kernel, initrd


def linux_append() -> str:
    """The command line both VMMs give Linux: pyvmm's default for Linux (with the kvm_pvm masks) and no ACPI,
    as tests/support/linux.py's linux_append('acpi=off')."""
    from pyvmm.arch.x86.cpuid import is_kvm_pvm_host
    from pyvmm.config import LINUX_DEFAULT_APPEND, LINUX_PVM_APPEND

    base = LINUX_DEFAULT_APPEND + (" " + LINUX_PVM_APPEND if is_kvm_pvm_host() else "")
    return f"{base} acpi=off"


def _until(done, timeout: float) -> float:
    """Seconds until done() holds, polling every POLL seconds; TimeoutError after timeout."""
    t0 = time.perf_counter()
    while not done():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"not reached within {timeout:.0f} s")
        time.sleep(POLL)
    return time.perf_counter() - t0


def _balloon_steps(q, ram: int, low: int, rss) -> dict:
    """The steps both VMMs share once Linux runs /init: QMP `balloon` to low, then back to ram, each
    until `query-balloon` reports it; guest-RAM RSS (bytes) before, inflated and deflated."""
    timeout = target_timeout((ram - low) // PAGE)

    def actual() -> int:
        return q.cmd_obj({"execute": "query-balloon"})["return"]["actual"]

    out = {"rss_before": rss()}
    q.cmd_obj({"execute": "balloon", "arguments": {"value": low}})
    out["inflate"] = _until(lambda: actual() == low, timeout)
    out["rss_inflated"] = rss()
    q.cmd_obj({"execute": "balloon", "arguments": {"value": ram}})
    out["deflate"] = _until(lambda: actual() == ram, timeout)
    out["rss_deflated"] = rss()
    return out


def _guest_clock(match: re.Match) -> float:
    return float(match.group(1))


def pyvmm_cycle(ram: int, low: int, files: tuple[Path, Path], steps: bool = True) -> dict:
    """One pyvmm run in this process through the Python API, balloon driven over its QMP socket (boot
    only without steps)."""
    from pyvmm.config import VmConfig
    from pyvmm.hoststat import mapping_rss
    from pyvmm.vm import Machine

    kernel, initrd = files
    sock = common.qmp_socket_path("linux-pyvmm")
    if os.path.exists(sock):
        os.unlink(sock)
    q = m = None
    try:
        t0 = time.perf_counter()
        m = Machine(VmConfig(kernel=kernel, initrd=initrd, memory=ram, append=linux_append(), acpi=False,
                             mem_prealloc=True, console="none", qmp=(f"unix:{sock},server,wait=off",)))
        m.start()
        m.wait_for_console(FIRST_LINE, BOOT_TIMEOUT)
        first = time.perf_counter() - t0
        probe = m.wait_for_console(PROBE_LINE, BOOT_TIMEOUT)
        out = {"first": first, "probe": time.perf_counter() - t0, "probe_guest": _guest_clock(probe)}

        def driver_ok() -> bool:
            if m.status() == "shutdown":
                raise RuntimeError(f"the VM stopped: {m.stop_reason}")
            return bool(m.balloon_transport.status & DRIVER_OK)

        _until(driver_ok, BOOT_TIMEOUT - out["probe"])
        out["driver_ok"] = time.perf_counter() - t0
        m.wait_for_console(INIT_LINE, BOOT_TIMEOUT)
        out["init"] = time.perf_counter() - t0
        if not steps:
            return out
        q = common.qmp_connect(sock)
        out |= _balloon_steps(q, ram, low, lambda: sum(mapping_rss(r) for r in m.memory.regions))
        return out
    finally:
        if q is not None:
            with contextlib.suppress(Exception):
                q.close()
        if m is not None:
            m.stop(0, "benchmark done")
            m.close()
        if os.path.exists(sock):
            os.unlink(sock)


def qemu_cmd(ram: int, sock: str, files: tuple[Path, Path]) -> list[str]:
    """QEMU microvm with the same kernel, initramfs and command line; its CPU model masks what this host
    cannot run, as pyvmm's CPUID policy does."""
    kernel, initrd = files
    return [common.QEMU, "-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "qemu64,+xsaveerptr",
            "-m", f"{ram >> 20}M", "-mem-prealloc", "-nodefaults", "-no-user-config", "-nographic",
            "-serial", "stdio", "-device", "virtio-balloon-device,id=balloon0", "-kernel", str(kernel),
            "-initrd", str(initrd), "-append", linux_append(), "-qmp", f"unix:{sock},server=on,wait=off"]


def qemu_cycle(ram: int, low: int, files: tuple[Path, Path], steps: bool = True) -> dict:
    """The same cycle under QEMU microvm; DRIVER_OK read with QMP `x-query-virtio-status`."""
    sock = common.qmp_socket_path("linux-qemu")
    if os.path.exists(sock):
        os.unlink(sock)
    q = vm = None
    try:
        t0 = time.perf_counter()
        vm = common.Background(qemu_cmd(ram, sock, files))
        q = common.qmp_connect(sock)
        vm.wait_for(FIRST_LINE, BOOT_TIMEOUT)
        first = time.perf_counter() - t0
        probe = vm.wait_for(PROBE_LINE, BOOT_TIMEOUT)
        out = {"first": first, "probe": time.perf_counter() - t0, "probe_guest": _guest_clock(probe)}

        def driver_ok() -> bool:
            st = q.cmd_obj({"execute": "x-query-virtio-status", "arguments": {"path": QEMU_BALLOON}})
            return any("DRIVER_OK" in s for s in st["return"]["status"]["statuses"])

        _until(driver_ok, BOOT_TIMEOUT - out["probe"])
        out["driver_ok"] = time.perf_counter() - t0
        vm.wait_for(INIT_LINE, BOOT_TIMEOUT)
        out["init"] = time.perf_counter() - t0
        if not steps:
            return out
        pid = vm.proc.pid
        out |= _balloon_steps(q, ram, low, lambda: common.smaps_rss(pid)["ram_rss"])
        return out
    finally:
        common.qmp_quit(q)
        if vm is not None:
            vm.stop()
        if os.path.exists(sock):
            os.unlink(sock)


def run(repeats: int = ROUNDS, ram_mib: int = RAM_MIB, low_mib: int = LOW_MIB, variant: str | None = None) -> Result:
    """Boot the minimal Linux guest, balloon ram -> low -> ram; pyvmm and QEMU interleaved (a variant
    kernel: boot only)."""
    if not 0 < low_mib < ram_mib:
        raise ValueError(f"--low {low_mib} must be between 0 and --ram {ram_mib}")
    ram, low = ram_mib * MIB, low_mib * MIB
    steps = variant is None
    if steps:
        res = Result("linux", f"Linux guest: boot to the virtio-mmio probe and DRIVER_OK, balloon {ram_mib} -> "
                     f"{low_mib} -> {ram_mib} MiB with Linux's virtio_balloon")
    else:
        res = Result(f"linux_{variant}", f"Linux guest, kernel of another config ({variant}: "
                     f"{VARIANTS[variant].name} on top of guest.config): boot, {ram_mib} MiB")
    common.need_kvm()
    files = linux_files(variant)
    common.need_pyvmm("pyvmm.virtio.balloon", "pyvmm.hoststat", "pyvmm.monitor.qmp")
    common.need_qmp()
    qemu_missing = common.have(common.need_qemu)
    runners, failures = common.reference_runners(res, pyvmm_cycle, qemu_cycle, qemu_missing, ram, low, files,
                                                steps)
    got = common.interleave(runners, repeats, f"linux {variant} boot" if variant else
                            f"linux {ram_mib} -> {low_mib} MiB")

    def series(engine: str, key: str, scale: float = 1.0) -> list[float | None]:
        return [(r[key] * scale if r.get(key) is not None else None) if r else None
                for r in got.get(engine, [])]

    def drop(engine: str) -> list[float | None]:
        before, after = series(engine, "rss_before", 1 / MIB), series(engine, "rss_inflated", 1 / MIB)
        return [a - b if a is not None and b is not None else None for a, b in zip(before, after, strict=False)]

    def clean(v):
        return [x for x in v if x is not None]

    moved = ram_mib - low_mib
    for engine in runners:
        res.add(f"{engine} boot to the first kernel message", "s", clean(series(engine, "first")))
        res.add(f"{engine} boot to the virtio-mmio probe", "s", clean(series(engine, "probe")))
        res.add(f"{engine} boot to the virtio-mmio probe, guest clock (printk)", "s",
                clean(series(engine, "probe_guest")))
        res.add(f"{engine} boot to the driver's DRIVER_OK", "s", clean(series(engine, "driver_ok")))
        res.add(f"{engine} boot to `Run /init`", "s", clean(series(engine, "init")))
        if not steps:
            continue
        res.add(f"{engine} inflate (time to `actual`)", "s", clean(series(engine, "inflate")))
        res.add(f"{engine} deflate (time to `actual`)", "s", clean(series(engine, "deflate")))
        res.add(f"{engine} inflate, per 4 KiB page", "ms",
                [t * 1000 / (moved * MIB // PAGE) for t in clean(series(engine, "inflate"))])
        for key, what in (("rss_before", "before inflate"), ("rss_inflated", "after inflate"),
                          ("rss_deflated", "after deflate")):
            res.add(f"{engine} guest-RAM RSS {what}", "MiB", clean(series(engine, key, 1 / MIB)))
        res.add(f"{engine} RSS drop on inflate", "MiB", clean(drop(engine)))
    if "QEMU" in runners:
        for key, what in BOOT_MARKS + (STEP_MARKS if steps else ()):
            pairs = [(a, b) for a, b in zip(series("pyvmm", key), series("QEMU", key), strict=False) if a and b]
            res.ratio(f"pyvmm / QEMU, {what}", [a for a, _ in pairs], [b for _, b in pairs], goal="<= 1.0")
        if steps:
            pairs = [(a, b) for a, b in zip(drop("pyvmm"), drop("QEMU"), strict=False) if a and b]
            res.ratio("pyvmm / QEMU, RSS drop", [a for a, _ in pairs], [b for _, b in pairs])
    for name, why in failures.items():
        res.notes.append(f"{name}: some runs failed ({why})")
    if not steps:
        fragment = VARIANTS[variant].relative_to(common.ROOT)
        res.notes.append(f"The kernel: `linux/build.sh --variant {variant} {fragment}`, "
                         "the minimal kernel's config with that fragment on top, the same source, patches and "
                         "initramfs.")
    res.notes.append(
        f"Same vmlinux, initramfs (a /init that spins) and command line (`{linux_append()}`), {ram_mib} MiB "
        "preallocated, 1 vCPU, ACPI off (the device announced with `virtio_mmio.device=`). Boot times run "
        "from the launch (pyvmm: `Machine(...)` in this process, which builds the VM and preallocates RAM; "
        "QEMU: the process start) to the console's first line (`Linux version`, replayed when the serial "
        "console registers), to `virtio-mmio: Registering device`, to DRIVER_OK "
        f"(pyvmm: the transport's Status register; QEMU: QMP `x-query-virtio-status`), polled every "
        f"{POLL * 1000:.0f} ms, and to `Run /init`; the guest-clock row is the probe line's printk timestamp.")
    if steps:
        res.notes.append(
            "Once the console shows `Run /init`, both are driven alike over QMP: `balloon` to the low size, "
            "`query-balloon` polled until `actual` matches, then back. Linux's driver moves 256 pages per "
            "request and the spinning /init shares the one vCPU with it, all emulated on this host, so both "
            "VMMs are bound by the guest. Guest-RAM RSS: pyvmm by mincore(2) over its RAM mappings "
            "(pyvmm.hoststat), QEMU from /proc/PID/smaps (its largest anonymous mapping).")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=run.__doc__)
    p.add_argument("--repeats", type=int, default=ROUNDS, help=f"rounds of interleaved runs ({ROUNDS})")
    p.add_argument("--ram", type=int, default=RAM_MIB, help=f"guest RAM in MiB ({RAM_MIB})")
    p.add_argument("--low", type=int, default=LOW_MIB, help=f"balloon target in MiB ({LOW_MIB})")
    p.add_argument("--variant", choices=sorted(VARIANTS), help="boot a kernel of another config instead")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    try:
        result = run(repeats=args.repeats, ram_mib=args.ram, low_mib=args.low, variant=args.variant)
    except Unavailable as e:
        print(f"benchmark not run: {e}")
        return 0
    result.seconds = time.monotonic() - t0
    common.print_result(result)
    return 0


def profile(out_dir: Path = common.RESULTS, ram_mib: int = 512, low_mib: int = 480) -> list[Path]:
    """cProfile (every pyvmm thread) of one in-process Linux cycle: boot, inflate and deflate; shows how
    little of a Linux balloon step is pyvmm's own work.  Not part of `make bench` (about 90 s more)."""
    common.need_kvm()
    files = linux_files()
    profiles: list = []
    t0 = time.monotonic()
    with common.profile_threads(profiles):
        r = pyvmm_cycle(ram_mib * MIB, low_mib * MIB, files)
    took = time.monotonic() - t0
    path = out_dir / "profile_linux.txt"
    common.write_profile(profiles, path, f"pyvmm Linux profile: {ram_mib} -> {low_mib} -> {ram_mib} MiB "
                         f"(DRIVER_OK {r['driver_ok']:.1f} s, inflate {r['inflate']:.1f} s, "
                         f"deflate {r['deflate']:.1f} s, {took:.1f} s in all under cProfile)")
    return [path]


if __name__ == "__main__":
    if "--profile" in sys.argv:
        print("\n".join(str(p) for p in profile()))
        raise SystemExit(0)
    raise SystemExit(main())
