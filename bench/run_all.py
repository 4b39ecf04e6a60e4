"""`make bench`: run every benchmark, print the table, write bench/results/latest.md and latest.json."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import Result, Unavailable

BALLOON_DEVICE_ROUNDS = 3


def device_balloon(repeats: int = BALLOON_DEVICE_ROUNDS) -> Result:
    """bench/balloon.py (the device alone, no guest), run a few times and its figures collected."""
    res = Result("balloon_device", "Balloon device alone: 1 GiB inflated in 256-PFN batches vs per-page "
                 "madvise (bench/balloon.py, no guest)")
    script = common.BENCH / "balloon.py"
    if not script.exists():
        raise Unavailable("bench/balloon.py is not there yet")
    dev, base, raw = [], [], ""
    for i in range(repeats):
        print(f"  balloon device: run {i + 1}/{repeats}", file=sys.stderr, flush=True)
        out = common.timed_run([common.PYTHON, str(script)], timeout=300)
        d = re.search(r"device \(merged runs\):\s+([0-9.]+) s/GiB", out.stdout)
        b = re.search(r"baseline \(per page\):\s+([0-9.]+) s/GiB", out.stdout)
        if out.code != 0 or not d or not b:
            res.notes.append(f"run {i + 1} gave no figures (exit status {out.code}): {out.tail()}")
            continue
        dev.append(float(d.group(1)))
        base.append(float(b.group(1)))
        raw = out.stdout
    res.add("device, merged runs (one madvise per run)", "s/GiB", dev)
    res.add("baseline, one madvise per page (kvmtool/QEMU style)", "s/GiB", base)
    res.ratio("device / per-page baseline, time", dev, base, goal="< 1.0")
    if raw:
        res.notes.append("last run's output: " + " / ".join(line.strip() for line in raw.strip().splitlines()))
    return res


def benchmarks(quick: bool):
    """(name, callable) in the order they run; quick mode uses fewer rounds (for trying the harness)."""
    import balloon_e2e
    import boot
    import exits
    import memory
    import smp

    import linux

    def r(full, fast):
        return (fast if quick else full)
    return [
        ("boot", lambda: boot.run(repeats=r(boot.ROUNDS, 3))),
        ("exits", lambda: exits.run(repeats=r(exits.ROUNDS, 2))),
        ("balloon_e2e", lambda: balloon_e2e.run(repeats=r(balloon_e2e.ROUNDS, 1))),
        ("memory", lambda: memory.run(repeats=r(memory.ROUNDS, 1))),
        ("smp", lambda: smp.run(repeats=r(smp.ROUNDS, 1))),
        ("balloon_device", lambda: device_balloon(repeats=r(BALLOON_DEVICE_ROUNDS, 1))),
        ("linux", lambda: linux.run(repeats=r(linux.ROUNDS, 1))),
        ("linux_nopci", lambda: linux.run(repeats=r(linux.ROUNDS, 1), variant="nopci")),
    ]


def profiles() -> tuple[list[Path], list[str]]:
    import balloon_e2e
    import boot
    import exits

    written, problems = [], []
    for name, fn in (("boot", boot.profile), ("exits", exits.profile), ("balloon", balloon_e2e.profile)):
        print(f"  profile: {name}", file=sys.stderr, flush=True)
        try:
            written += fn(common.RESULTS)
        except Unavailable as e:
            problems.append(f"{name} profile not taken: {e}")
        except Exception as e:  # noqa: BLE001 - reported, traceback kept in errors.log
            problems.append(f"{name} profile failed: {type(e).__name__}: {e}")
            _log_error(f"profile {name}")
    return written, problems


def _log_error(what: str) -> None:
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    with open(common.RESULTS / "errors.log", "a") as f:
        f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {what}\n{traceback.format_exc()}\n")


def summary_table(results: list[Result]) -> str:
    lines = ["| comparison | median | min | max | goal |", "|---|---:|---:|---:|---|"]
    for res in results:
        for row in res.rows:
            if row.kind != "ratio":
                continue
            s = common.summarize(row.values)
            goal = ""
            if row.goal:
                goal = f"{row.goal} ({'met' if common.goal_met(row.goal, s['median']) else 'not met'})"
            lines.append(f"| {res.name}: {row.name} | {common.fmt(s['median'], 'x')} | "
                         f"{common.fmt(s['min'], 'x')} | {common.fmt(s['max'], 'x')} | {goal} |")
    return "\n".join(lines) if len(lines) > 2 else "(no comparisons measured)"


# The README's headline rows: (benchmark, what, pyvmm row, reference row, ratio row).
HEADLINE = [
    ("boot", "tiny-guest boot, process start to exit (ms)", "pyvmm (firmware) wall time", "QEMU microvm wall time",
     "pyvmm (firmware) / QEMU"),
    ("boot", "the same, pyvmm --no-firmware (ms)", "pyvmm --no-firmware wall time", "QEMU microvm wall time",
     "pyvmm --no-firmware / QEMU"),
    ("exits", "port-I/O write, serial scratch register: pyvmm vs C floor, same guest loop (ns)",
     "same loop: pyvmm port-I/O write, 16550 scratch register 0x3ff (serial device dispatch)",
     "same loop: C floor port-I/O write, port 0x700 (KVM_RUN loop only)",
     "same loop: pyvmm / floor, port-I/O write with device dispatch (serial)"),
    ("exits", "MMIO read, balloon InterruptStatus: pyvmm vs C floor, same guest loop (ns)",
     "same loop: pyvmm MMIO read, balloon InterruptStatus 0xd0000060 (virtio-mmio device dispatch)",
     "same loop: C floor MMIO read, 0xc0000000 (KVM_RUN loop only)",
     "same loop: pyvmm / floor, MMIO read with device dispatch (balloon)"),
    ("exits", "port-I/O write, no device (bare path): pyvmm vs C floor, same guest loop (ns)",
     "same loop: pyvmm port-I/O write, port 0x700 (no device: the bare path)",
     "same loop: C floor port-I/O write, port 0x700 (KVM_RUN loop only)",
     "same loop: pyvmm / floor, port-I/O write, no device (bare path)"),
    ("exits", "MMIO read, no device (bare path): pyvmm vs C floor, same guest loop (ns)",
     "same loop: pyvmm MMIO read, 0xc0000000 (no device: the bare path)",
     "same loop: C floor MMIO read, 0xc0000000 (KVM_RUN loop only)",
     "same loop: pyvmm / floor, MMIO read, no device (bare path)"),
    ("exits", "port-I/O write exit vs QEMU, tiny guest, rdtsc (ns)",
     "tiny guest: pyvmm port-I/O write (port 0x510, no device)",
     "tiny guest: QEMU port-I/O write (port 0x510, no device)", "tiny guest: pyvmm / QEMU, port-I/O write"),
    ("exits", "MMIO read exit vs QEMU, tiny guest, rdtsc (ns)",
     "tiny guest: pyvmm MMIO read (balloon InterruptStatus)",
     "tiny guest: QEMU MMIO read (balloon InterruptStatus)", "tiny guest: pyvmm / QEMU, MMIO read"),
    ("exits", "QueueNotify: ioeventfd vs in the vCPU thread, tiny guest, rdtsc (ns)",
     "tiny guest: pyvmm QueueNotify (ioeventfd)",
     "tiny guest: pyvmm QueueNotify (--no-ioeventfd, in the vCPU thread)",
     "tiny guest: QueueNotify ioeventfd / in-thread"),
    ("exits", "QueueNotify through ioeventfd vs QEMU, tiny guest, rdtsc (ns)",
     "tiny guest: pyvmm QueueNotify (ioeventfd)", "tiny guest: QEMU QueueNotify (its default ioeventfd)",
     "tiny guest: pyvmm / QEMU, QueueNotify (both ioeventfd)"),
    ("balloon_e2e", "balloon 256 -> 64 MiB, tiny guest, time to `actual` (ms)",
     "pyvmm inflate 256 -> 64 MiB (time to `actual`)", "QEMU inflate 256 -> 64 MiB (time to `actual`)",
     "pyvmm / QEMU, inflate time"),
    ("balloon_e2e", "balloon 64 -> 256 MiB (ms)", "pyvmm deflate 64 -> 256 MiB", "QEMU deflate 64 -> 256 MiB",
     "pyvmm / QEMU, deflate time"),
    ("balloon_e2e", "host RSS given back by the 192 MiB inflate (MiB)", "pyvmm RSS drop on inflate",
     "QEMU RSS drop on inflate", ""),
    ("memory", "VMM RSS beyond guest RAM (MiB)", "pyvmm RSS beyond guest RAM", "QEMU RSS beyond guest RAM",
     "pyvmm / QEMU, RSS beyond guest RAM"),
    ("memory", "the same, with gdbstub, QMP and monitor sockets on (MiB)",
     "pyvmm with gdbstub, QMP and monitor sockets RSS beyond guest RAM", "QEMU RSS beyond guest RAM",
     "pyvmm / QEMU, RSS beyond guest RAM, features on"),
    ("memory", "VMM private (anonymous) RSS beyond guest RAM (MiB)", "pyvmm anonymous RSS beyond guest RAM",
     "QEMU anonymous RSS beyond guest RAM", "pyvmm / QEMU, anonymous RSS beyond RAM"),
    ("smp", "2 vCPUs / 1 vCPU, total exits/s, port-I/O loop (exits/s)", "pyvmm: exits/s, 2 vCPUs (total)",
     "pyvmm: exits/s, 1 vCPU", "pyvmm: 2 vCPUs / 1 vCPU, total exits/s"),
    ("smp", "the same, C floor (exits/s)", "C floor: exits/s, 2 vCPUs (total)", "C floor: exits/s, 1 vCPU",
     "C floor: 2 vCPUs / 1 vCPU, total exits/s"),
    ("balloon_device", "device alone, 1 GiB inflate, merged runs vs per-page madvise (s/GiB)",
     "device, merged runs (one madvise per run)", "baseline, one madvise per page (kvmtool/QEMU style)",
     "device / per-page baseline, time"),
    ("linux", "Linux guest, boot to the first kernel message (s)", "pyvmm boot to the first kernel message",
     "QEMU boot to the first kernel message", "pyvmm / QEMU, boot to the first message"),
    ("linux", "Linux guest, boot to the virtio-mmio probe (s)", "pyvmm boot to the virtio-mmio probe",
     "QEMU boot to the virtio-mmio probe", "pyvmm / QEMU, boot to probe"),
    ("linux", "Linux guest, boot to the driver's DRIVER_OK (s)", "pyvmm boot to the driver's DRIVER_OK",
     "QEMU boot to the driver's DRIVER_OK", "pyvmm / QEMU, boot to DRIVER_OK"),
    ("linux", "Linux guest, boot to `Run /init` (s)", "pyvmm boot to `Run /init`", "QEMU boot to `Run /init`",
     "pyvmm / QEMU, boot to Run /init"),
    ("linux", "Linux guest, balloon {ram} -> {low} MiB, time to `actual` (s)",
     "pyvmm inflate (time to `actual`)", "QEMU inflate (time to `actual`)", "pyvmm / QEMU, inflate time"),
    ("linux", "Linux guest, balloon {low} -> {ram} MiB (s)", "pyvmm deflate (time to `actual`)",
     "QEMU deflate (time to `actual`)", "pyvmm / QEMU, deflate time"),
    ("linux", "Linux guest, host RSS given back by the inflate (MiB)", "pyvmm RSS drop on inflate",
     "QEMU RSS drop on inflate", "pyvmm / QEMU, RSS drop"),
    ("linux_nopci", "Linux of another config (no PCI), boot to the first kernel message (s)",
     "pyvmm boot to the first kernel message", "QEMU boot to the first kernel message",
     "pyvmm / QEMU, boot to the first message"),
    ("linux_nopci", "the same kernel, boot to the virtio-mmio probe (s)", "pyvmm boot to the virtio-mmio probe",
     "QEMU boot to the virtio-mmio probe", "pyvmm / QEMU, boot to probe"),
    ("linux_nopci", "the same kernel, boot to DRIVER_OK (s)", "pyvmm boot to the driver's DRIVER_OK",
     "QEMU boot to the driver's DRIVER_OK", "pyvmm / QEMU, boot to DRIVER_OK"),
    ("linux_nopci", "the same kernel, boot to `Run /init` (s)", "pyvmm boot to `Run /init`",
     "QEMU boot to `Run /init`", "pyvmm / QEMU, boot to Run /init"),
]


def performance_section(info: dict, results: list[Result]) -> str:
    """The README's "Performance" text: headline medians and ratios of this run, and what they mean."""
    import linux

    by_name = {r.name: {row.name: row for row in r.rows} for r in results}
    lines = [(f"Measured by `make bench` on {info['cpu']} ({info['cores']} cores), host kernel {info['kernel']}, "
             f"/dev/kvm from `{info['kvm_module']}` (nested: every VM exit costs the floor shown below; guest "
             "emulation speed differs a lot between host kernels, so every row holds for this kernel only), Python "
             f"{info['python']}, {info['qemu'].replace('QEMU emulator version', 'QEMU')}, load average "
             f"{info['loadavg_start']}. Medians of interleaved runs (min-max of the per-round ratio in "
             "brackets: the ratio is taken round by round, so it need not equal the ratio of the two medians); "
             "full tables in `bench/results/latest.md`."), "",
             "| what | pyvmm | reference | pyvmm / reference | goal |", "|---|---:|---:|---:|---|"]
    for bench, what, mine, ref, ratio in HEADLINE:
        rows = by_name.get(bench, {})
        a, b, r = rows.get(mine), rows.get(ref), rows.get(ratio) if ratio else None
        if a is None and b is None:
            continue
        def med(row):
            return (common.fmt(common.summarize(row.values)["median"], row.unit) if row else "-")
        rtxt, goal = "-", ""
        if r is not None:
            s = common.summarize(r.values)
            rtxt = f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"
            if r.goal:
                goal = f"{r.goal} ({'met' if common.goal_met(r.goal, s['median']) else 'not met'})"
        what = what.format(ram=linux.RAM_MIB, low=linux.LOW_MIB)   # run_all runs linux.py's default sizes
        lines.append(f"| {what} | {med(a)} | {med(b)} | {rtxt} | {goal} |")
    lines += ["", "What the numbers mean:", "",
              ("- **Boot**: wall time of the whole `pyvmm run` process (interpreter start-up, imports, "
              "building the VM, the guest's self-test, teardown) against `qemu-system-x86_64 -M microvm` "
              "on the same ELF. The reference is QEMU."),
              ("- **Exits against the C floor** (\"same guest loop\" rows; issue 8's goal, within 1.3x of the "
              "floor for port I/O and MMIO reads with the device dispatch included, is judged on the first "
              "two): pyvmm runs exactly the guest code of `bench/kvm_floor.c` (`mov $PORT,%dx; 1: out "
              "%al,(%dx); jmp 1b`, or `1: mov ADDR,%eax; jmp 1b`, assembled into a PVH ELF at benchmark time) "
              "and both are timed the same way, host wall clock divided by KVM_RUN round trips. The port is "
              "the 16550's scratch register (pyvmm's serial device handles the write) and the address the "
              "balloon's InterruptStatus (virtio-mmio transport read); the bare-path rows use the floor's "
              "own port and address, which no pyvmm device serves. The floor's host loop only calls "
              "KVM_RUN again, so the distance is pyvmm's Python exit path: the `ioctl` call, decoding "
              "`kvm_run`, the port or bus lookup and the device."),
              ("- **Exits against QEMU** (\"tiny guest\" rows): the tiny guest's `scenario=bench` times 20000 "
              "exits of each kind with `rdtsc`, its loops in C (more instructions per exit, 64-bit paged "
              "mode), on pyvmm and on QEMU microvm. On this host guest code runs emulated, so those loops "
              "cost microseconds of their own per exit: these rows compare the two VMMs, not pyvmm with the "
              "floor. With `ioeventfd` a QueueNotify never leaves the kernel on the vCPU thread."),
              ("- **Balloon**: host-side time from the request (`set_target` / QMP `balloon`) until the "
              "guest driver reports the new size; on this host it is bound by the guest, which runs "
              "emulated, so both VMMs land close. The RSS line is the host memory really given back."),
              ("- **Memory**: what the VMM process itself costs beyond guest RAM. pyvmm's total is lower "
              "(fewer shared libraries), its private part higher (the Python heap)."),
              ("- **Device alone**: the balloon device's discard path without a guest: one `madvise` per "
              "merged run against one per page."),
              ("- **Linux guest**: the minimal Linux kernel (`make linux-guest`) with its own "
              "`virtio_balloon` driver, the same vmlinux, initramfs and command line under pyvmm (in the "
              "benchmark's process, Python API) and QEMU microvm, 1 vCPU, RAM preallocated. Boot runs from "
              "the launch to the console's `virtio-mmio: Registering device` and to the driver setting "
              "DRIVER_OK (pyvmm: the transport's Status; QEMU: QMP `x-query-virtio-status`); after `Run "
              "/init` both are driven over QMP (`balloon`, `query-balloon` polled until `actual` matches). "
              "Guest code runs emulated here, so these times are mostly the guest's own; "
              "`bench/linux.py --ram 1024 --low 256` is the full-size run. The first-message row is the "
              "console's first line (`Linux version`, replayed when the serial console registers)."),
              ("- **Linux of another config**: the same source, patches and initramfs, built by `linux/build.sh "
              "--variant nopci` with `bench/linux-nopci.config` (no PCI) on top of the minimal kernel's "
              "config, booted the same way to `Run /init` (`bench/linux.py --variant nopci`); boot only, "
              "since the balloon rows measure the same driver.")]
    return "\n".join(lines) + "\n"


def render(info: dict, results: list[Result], profile_files: list[Path], profile_notes: list[str],
           elapsed: float) -> str:
    out = ["# pyvmm benchmarks (`make bench`)", ""]
    out.append(f"Run {info['date']} in {elapsed:.0f} s; load average {info['loadavg_start']} at the start, "
               f"{info['loadavg_end']} at the end. Every row is the median, minimum and maximum over "
               "repeated runs; pyvmm and its reference run interleaved (A B A B) and each ratio is taken "
               "per round, so drift of a shared machine cancels out of the ratios more than out of the "
               "absolute figures.")
    out += ["", "| machine | |", "|---|---|"]
    for key, label in (("cpu", "CPU"), ("cores", "cores"), ("memory", "memory"), ("kernel", "host kernel"),
                       ("kvm_module", "/dev/kvm module"), ("python", "Python"), ("qemu", "QEMU"),
                       ("pyvmm_commit", "pyvmm commit")):
        out.append(f"| {label} | {info.get(key, '')} |")
    out += ["", "## pyvmm / reference, measured in the same run", "", summary_table(results)]
    for res in results:
        out += ["", f"## {res.title}", "", f"_{res.seconds:.0f} s_", "", common.markdown(res)]
    out += ["", "## Profiles", ""]
    for p in profile_files:
        out.append(f"- `{p.relative_to(common.ROOT)}` (binary beside it: `{p.with_suffix('.prof').name}`, "
                   "not in git; open with `python -m pstats`)")
    out += [f"- {n}" for n in profile_notes]
    if not profile_files and not profile_notes:
        out.append("- (not taken)")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer rounds (to try the harness, not to quote)")
    ap.add_argument("--only", default="", help="comma-separated benchmarks: boot,exits,balloon_e2e,memory,smp,"
                    "balloon_device,linux,linux_nopci")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile runs")
    args = ap.parse_args(argv)
    only = {x.strip() for x in args.only.split(",") if x.strip()}

    t0 = time.monotonic()
    info = common.machine_info()
    print(f"pyvmm benchmarks on {info['cpu']} ({info['cores']} cores), kernel {info['kernel']}, "
          f"/dev/kvm: {info['kvm_module']}, Python {info['python']}, {info['qemu']}", flush=True)
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    for name, fn in benchmarks(args.quick):
        if only and name not in only:
            continue
        print(f"- {name} ...", file=sys.stderr, flush=True)
        t = time.monotonic()
        try:
            res = fn()
        except Unavailable as e:
            res = Result(name, name)
            res.skipped.append(str(e))
        except Exception as e:  # noqa: BLE001 - reported, traceback kept in errors.log
            _log_error(name)
            res = Result(name, name)
            res.skipped.append(f"failed: {type(e).__name__}: {e} (traceback in bench/results/errors.log)")
        res.seconds = time.monotonic() - t
        results.append(res)
        common.print_result(res)

    profile_files, profile_notes = [], []
    if not args.no_profile and (not only or "profile" in only):
        profile_files, profile_notes = profiles()

    elapsed = time.monotonic() - t0
    info["loadavg_end"] = common.loadavg()
    info["seconds"] = round(elapsed, 1)
    md = render(info, results, profile_files, profile_notes, elapsed)
    (common.RESULTS / "latest.md").write_text(md)
    (common.RESULTS / "performance.md").write_text(performance_section(info, results))
    data = {"machine": info, "quick": args.quick, "benchmarks": [r.to_json() for r in results],
            "profiles": [str(p.relative_to(common.ROOT)) for p in profile_files], "profile_notes": profile_notes}
    (common.RESULTS / "latest.json").write_text(json.dumps(data, indent=1) + "\n")
    print("\n## pyvmm / reference, measured in the same run\n")
    print(summary_table(results))
    print(f"\nwrote bench/results/latest.md and latest.json in {elapsed:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
