"""Exit-cost benchmark: ns per port-I/O write, MMIO read and QueueNotify, pyvmm vs QEMU vs a minimal C VMM."""

from __future__ import annotations

import dataclasses
import logging
import re
import shutil
import subprocess
import time
from pathlib import Path

import common
from common import Result, Unavailable

N = 20000
ROUNDS = 7
FLOOR_N = 40000       # round trips the C floor times per kind (~0.3 s each on a nested host)
SCENARIO = "bench"
# The guest's lines: "bench: <name> n=<N> cycles=<total>", timed with rdtsc around each loop.
BENCH_LINE = re.compile(r"^bench: (\w+) n=(\d+) cycles=(\d+)", re.MULTILINE)
LOOPS = {"pio_write": "port-I/O write", "mmio_read": "MMIO read (InterruptStatus)",
         "mmio_notify": "QueueNotify write"}


# --- the C floor's own guest loops, run by pyvmm ---------------------------------------------------
#
# The tiny guest's `scenario=bench` loops are C (a counter, a compare, the access, a branch: ~5 instructions
# per exit) timed by rdtsc in the guest; the floor's guest is two instructions timed by the host's clock per
# KVM_RUN. On a host that emulates guest code at a few M instructions/s the extra instructions alone cost
# 1-2 us per exit, so only the same loop, timed the same way, isolates pyvmm's host exit path (KVM_RUN from
# Python, decode, bus lookup, device) against the C loop. These PVH ELFs carry exactly bench/kvm_floor.c's
# code bytes, only with the port or address a pyvmm device serves.

FLOOR_PORT = 0x700            # kvm_floor.c's BENCH_PORT: no device in pyvmm's port map either
FLOOR_MMIO = 0xC000_0000      # kvm_floor.c's BENCH_MMIO: the MMIO hole below the virtio-mmio windows
SERIAL_SCR = 0x3F8 + 7        # the 16550's scratch register: a write reaches the serial device's write()
BALLOON_INTERRUPT_STATUS = 0xD000_0000 + 0x60   # virtio-mmio window 0 (the balloon), InterruptStatus
LOOP_WARMUP = 0.1             # seconds of the loop before the timed window (boot and first exits excluded)
LOOP_SECONDS = 0.3            # the timed window, about as long as the floor's FLOOR_N round trips


@dataclasses.dataclass(frozen=True)
class Loop:
    """One of the floor's guest loops as pyvmm runs it: what it hits, and the floor kind it compares with."""

    key: str
    label: str
    floor: str                # "pio" or "mmio": the kvm_floor line it is divided by
    handled: bool             # True: a pyvmm device serves the access (the buses count no unhandled access)
    asm: str
    code: bytes               # the bytes kvm_floor.c runs, with this loop's port or address


def _pio(port: int) -> tuple[str, bytes]:
    # kvm_floor.c: mov $PORT,%dx; 1: out %al,(%dx); jmp 1b
    return (f"mov ${port:#x}, %dx\n1:  out %al, (%dx)\n    jmp 1b",
            b"\x66\xba" + port.to_bytes(2, "little") + b"\xee\xeb\xfd")


def _mmio(gpa: int) -> tuple[str, bytes]:
    # kvm_floor.c: 1: mov ADDR,%eax; jmp 1b
    return f"1:  mov {gpa:#x}, %eax\n    jmp 1b", b"\xa1" + gpa.to_bytes(4, "little") + b"\xeb\xf9"


SAME_LOOPS = (
    Loop("pio_serial", "port-I/O write, 16550 scratch register 0x3ff (serial device dispatch)", "pio", True,
         *_pio(SERIAL_SCR)),
    Loop("pio_unhandled", f"port-I/O write, port {FLOOR_PORT:#x} (no device: the bare path)", "pio", False,
         *_pio(FLOOR_PORT)),
    Loop("mmio_balloon", "MMIO read, balloon InterruptStatus 0xd0000060 (virtio-mmio device dispatch)",
         "mmio", True, *_mmio(BALLOON_INTERRUPT_STATUS)),
    Loop("mmio_unhandled", f"MMIO read, {FLOOR_MMIO:#x} (no device: the bare path)", "mmio", False,
         *_mmio(FLOOR_MMIO)),
)

LOOP_S = r"""
    .section .note.Xen, "a"
    .p2align 2
    .long 4, 4, 18              /* XEN_ELFNOTE_PHYS32_ENTRY: the PVH 32-bit entry point */
    .asciz "Xen"
    .long _start32
    .text
    .code32
    .globl _start32
_start32:
BODY
"""
LOOP_LD = "ENTRY(_start32)\nSECTIONS { . = 0x100000; .text : { *(.text) } .note : { *(.note.Xen) } }\n"
LOOP_DIR = common.BENCH / "build" / "loops"


def build_loop_elf(loop: Loop, out_dir: Path = LOOP_DIR) -> Path:
    """A PVH ELF whose entry is the loop (gcc -m32 and ld, like the guest's Makefile); code bytes checked."""
    for tool in ("gcc", "ld"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} is not installed (the same-loop exit benchmark assembles its guests)")
    out_dir.mkdir(parents=True, exist_ok=True)
    src, obj, elf = (out_dir / f"{loop.key}{ext}" for ext in (".S", ".o", ".elf"))
    src.write_text(LOOP_S.replace("BODY", loop.asm))
    (out_dir / "loop.ld").write_text(LOOP_LD)
    try:
        subprocess.run(["gcc", "-m32", "-c", str(src), "-o", str(obj)], check=True, capture_output=True)
        subprocess.run(["ld", "-m", "elf_i386", "--no-warn-rwx-segments", "-T", str(out_dir / "loop.ld"),
                        str(obj), "-o", str(elf)], check=True, capture_output=True)
    except subprocess.CalledProcessError as e:
        why = e.stderr.decode(errors="replace").strip()
        raise Unavailable(f"cannot assemble the {loop.key} loop ({why}); a 32-bit gcc (gcc-multilib) is "
                          "needed") from None
    from elftools.elf.elffile import ELFFile

    with open(elf, "rb") as f:
        text = ELFFile(f).get_section_by_name(".text").data()
    # The point of these rows is identical guest code: refuse to measure anything else.
    if text != loop.code:
        raise RuntimeError(f"{loop.key}: assembled {text.hex()} but kvm_floor.c runs {loop.code.hex()}")
    return elf


def measure_loop(loop: Loop, elf: Path, seconds: float = LOOP_SECONDS) -> tuple[float | None, str]:
    """pyvmm running one loop in this process: host wall time / exits over a window after a warm-up."""
    from pyvmm.config import VmConfig
    from pyvmm.vm import Machine

    # The bare-path loops hit no device on purpose: their guest-error lines (a burst per machine) are
    # the expected outcome, counted below through the buses, not news for the bench's reader.
    guest_log = logging.getLogger("pyvmm.guest")
    level = guest_log.level
    if not loop.handled:
        guest_log.setLevel(logging.ERROR)
    m = Machine(VmConfig(kernel=elf, memory=64 << 20, console="none", firmware=None))
    try:
        m.start()
        time.sleep(LOOP_WARMUP)
        v = m.vcpus[0]
        # The vCPU thread counts an exit holding the GIL, so nothing is counted between these two reads.
        e0, u0, t0 = v.exits, m.pio_bus.unhandled + m.mmio_bus.unhandled, time.perf_counter()
        time.sleep(seconds)
        t1 = time.perf_counter()
        e1, u1 = v.exits, m.pio_bus.unhandled + m.mmio_bus.unhandled
        state = m.status()
        m.stop()
        m.wait(common.RUN_TIMEOUT)
    finally:
        m.close()
        guest_log.setLevel(level)
    exits, unhandled = e1 - e0, u1 - u0
    if state != "running" or exits <= 0:
        return None, f"the VM was {state} after the window ({m.stop_reason}), {exits} exits"
    if loop.handled and unhandled:
        return None, f"{unhandled} of {exits} exits found no device (the loop was meant to hit one)"
    if not loop.handled and unhandled != exits:
        return None, f"only {unhandled} of {exits} exits went unhandled (a device answered)"
    return (t1 - t0) / exits * 1e9, ""


def parse_guest(text: str, khz: float) -> dict[str, float]:
    """ns per exit of each loop the guest timed (cycles / n / TSC frequency)."""
    return {name: int(cycles) / int(n) * 1e6 / khz for name, n, cycles in BENCH_LINE.findall(text)}


def parse_floor(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"^ns_per_exit (\w+) ([0-9.]+)", text, re.MULTILINE)}


SAME = "same loop"            # row prefix: the floor's guest code, host wall time per KVM_RUN
TINY = "tiny guest"           # row prefix: the tiny guest's C loops, rdtsc in the guest


def run(repeats: int = ROUNDS, n: int = N) -> Result:
    """ns per exit of each kind, interleaved rounds of every engine, with per-round ratios."""
    res = Result("exits", f"VM exit cost, ns per exit: the C floor's guest loop run by pyvmm (host clock per "
                 f"KVM_RUN), and the tiny guest's `scenario=bench n={n}` (rdtsc in the guest)")
    common.need_kvm()
    khz, khz_source = common.tsc_khz()
    append = f"scenario={SCENARIO} n={n}"
    guest_missing = common.have(common.need_guest)
    pyvmm_missing = common.have(lambda: common.need_pyvmm("pyvmm.virtio.balloon"))
    qemu_missing = common.have(common.need_qemu)
    floor_missing = common.have(common.need_floor)

    loop_elfs: dict[str, tuple[Loop, Path]] = {}
    engines: dict[str, tuple[str, list[str]]] = {}
    if pyvmm_missing:
        res.skipped.append(f"pyvmm (the balloon device is part of both measurements): {pyvmm_missing}")
    else:
        try:
            loop_elfs = {loop.key: (loop, build_loop_elf(loop)) for loop in SAME_LOOPS}
        except Unavailable as e:
            res.skipped.append(f"pyvmm on the floor's guest loops: {e}")
    if guest_missing:
        res.skipped.append(f"the tiny guest's rdtsc loops: {guest_missing}")
    else:
        kernel = common.GUEST_ELF
        if not pyvmm_missing:
            engines["pyvmm"] = ("pyvmm", common.pyvmm_cmd(kernel, append, firmware=False))
            engines["pyvmm --no-ioeventfd"] = ("pyvmm", common.pyvmm_cmd(kernel, append, firmware=False,
                                                                         ioeventfd=False))
        if qemu_missing:
            res.skipped.append(f"QEMU reference: {qemu_missing}")
        else:
            engines["QEMU"] = ("qemu", common.qemu_cmd(kernel, append))
    if floor_missing:
        res.skipped.append(f"C floor: {floor_missing}")
    if not engines and not loop_elfs and floor_missing:
        raise Unavailable("; ".join(res.skipped))

    failures: dict[str, str] = {}

    def vm_runner(name: str, engine: str, cmd: list[str]):
        def go():
            out = common.timed_run(cmd)
            got = parse_guest(out.stdout, khz)
            if not common.guest_passed(out, SCENARIO, engine) or not got:
                failures.setdefault(name, f"exit status {out.code}: {out.tail()}")
                return None
            got["wall"] = out.wall
            return got
        return go

    def floor_runner():
        out = common.timed_run([str(common.KVM_FLOOR), "all", str(FLOOR_N)])
        got = parse_floor(out.stdout)
        if out.code != 0 or not got:
            failures.setdefault("C floor", f"exit status {out.code}: {out.tail()}")
            return None
        return got

    def loops_runner():
        got = {}
        for key, (loop, elf) in loop_elfs.items():
            try:
                value, why = measure_loop(loop, elf)
            except Exception as e:  # noqa: BLE001 - one loop's failure is reported, the others still run
                value, why = None, f"{type(e).__name__}: {e}"
            if value is None:
                failures.setdefault(f"pyvmm {key} loop", why)
            else:
                got[key] = value
        return got

    # The floor and pyvmm on the floor's loops run back to back in every round: their ratio is the goal's.
    runners = {}
    if not floor_missing:
        runners["C floor"] = floor_runner
    if loop_elfs:
        runners["pyvmm same loop"] = loops_runner
    runners.update({name: vm_runner(name, e, cmd) for name, (e, cmd) in engines.items()})
    got = common.interleave(runners, repeats, "exits", warmup=True)

    def series(engine: str, key: str) -> list[float | None]:
        return [r.get(key) if r else None for r in got.get(engine, [])]

    def clean(values: list[float | None]) -> list[float]:
        return [v for v in values if v is not None]

    def ratio(name: str, a: list, b: list, **kw) -> None:
        pairs = [(x, y) for x, y in zip(a, b, strict=False) if x is not None and y is not None]
        res.ratio(name, [x for x, _ in pairs], [y for _, y in pairs], **kw)

    def minus(a: list, b: list) -> list[float]:
        return [x - y for x, y in zip(a, b, strict=False) if x is not None and y is not None]

    # --- the goal's measure: identical guest code, identical timing ---------------------------------
    floor_pio, floor_mmio = series("C floor", "pio"), series("C floor", "mmio")
    same = {loop.key: series("pyvmm same loop", loop.key) for loop in SAME_LOOPS}
    for loop in SAME_LOOPS:
        res.add(f"{SAME}: pyvmm {loop.label}", "ns", clean(same[loop.key]))
    res.add(f"{SAME}: C floor port-I/O write, port {FLOOR_PORT:#x} (KVM_RUN loop only)", "ns",
            clean(floor_pio))
    res.add(f"{SAME}: C floor MMIO read, {FLOOR_MMIO:#x} (KVM_RUN loop only)", "ns", clean(floor_mmio))
    res.add(f"{SAME}: serial write() dispatch (0x3ff loop - bare loop, same round)", "ns",
            minus(same["pio_serial"], same["pio_unhandled"]))
    res.add(f"{SAME}: virtio-mmio read() dispatch (InterruptStatus loop - bare loop, same round)", "ns",
            minus(same["mmio_balloon"], same["mmio_unhandled"]))
    ratio(f"{SAME}: pyvmm / floor, port-I/O write with device dispatch (serial)", same["pio_serial"],
          floor_pio, goal="<= 1.1")
    ratio(f"{SAME}: pyvmm / floor, MMIO read with device dispatch (balloon)", same["mmio_balloon"],
          floor_mmio, goal="<= 1.1")
    ratio(f"{SAME}: pyvmm / floor, port-I/O write, no device (bare path)", same["pio_unhandled"], floor_pio)
    ratio(f"{SAME}: pyvmm / floor, MMIO read, no device (bare path)", same["mmio_unhandled"], floor_mmio)

    # --- the tiny guest's loops: pyvmm against QEMU on the same ELF ----------------------------------
    py_pio = series("pyvmm", "pio_write")
    py_mmio = series("pyvmm", "mmio_read")
    rows = [
        ("pyvmm port-I/O write (port 0x510, no device)", py_pio),
        ("pyvmm MMIO read (balloon InterruptStatus)", py_mmio),
        ("pyvmm QueueNotify (ioeventfd)", series("pyvmm", "mmio_notify")),
        ("pyvmm QueueNotify (--no-ioeventfd, in the vCPU thread)",
         series("pyvmm --no-ioeventfd", "mmio_notify")),
        ("pyvmm --no-ioeventfd port-I/O write", series("pyvmm --no-ioeventfd", "pio_write")),
        ("pyvmm --no-ioeventfd MMIO read", series("pyvmm --no-ioeventfd", "mmio_read")),
        ("QEMU port-I/O write (port 0x510, no device)", series("QEMU", "pio_write")),
        ("QEMU MMIO read (balloon InterruptStatus)", series("QEMU", "mmio_read")),
        ("QEMU QueueNotify (its default ioeventfd)", series("QEMU", "mmio_notify")),
    ]
    for name, values in rows:
        res.add(f"{TINY}: {name}", "ns", clean(values))
    ratio(f"{TINY}: pyvmm / QEMU, port-I/O write", py_pio, series("QEMU", "pio_write"))
    ratio(f"{TINY}: pyvmm / QEMU, MMIO read", py_mmio, series("QEMU", "mmio_read"))
    ratio(f"{TINY}: pyvmm / QEMU, QueueNotify (both ioeventfd)", series("pyvmm", "mmio_notify"),
          series("QEMU", "mmio_notify"))
    ratio(f"{TINY}: QueueNotify ioeventfd / in-thread", series("pyvmm", "mmio_notify"),
          series("pyvmm --no-ioeventfd", "mmio_notify"), goal="< 1.0")
    # Kept for continuity with earlier runs; not the goal's measure (more guest instructions per exit).
    ratio(f"{TINY}: pyvmm / floor, port-I/O write (different guest code)", py_pio, floor_pio)
    ratio(f"{TINY}: pyvmm / floor, MMIO read (different guest code)", py_mmio, floor_mmio)
    for name in engines:
        res.add(f"{TINY}: {name} whole run (boot + 3 x {n} exits + exit)", "s", clean(series(name, "wall")))

    for name, why in failures.items():
        res.notes.append(f"{name}: some runs failed ({why})")
    res.notes.append(
        f"**{SAME}** rows (the goal's measure): pyvmm runs, in this process through the Python API "
        "(`Machine(VmConfig(kernel=..., firmware=None))`, direct PVH entry), ELFs assembled now whose entry "
        "is byte for byte bench/kvm_floor.c's guest loop (`mov $PORT,%dx; 1: out %al,(%dx); jmp 1b` or "
        "`1: mov ADDR,%eax; jmp 1b`) with a port or address a pyvmm device serves (the serial scratch "
        "register; the balloon's InterruptStatus) or, for the bare path, none (the floor's own). Time: host "
        f"wall clock over {LOOP_SECONDS} s divided by the vCPU's exit count, after {LOOP_WARMUP} s of "
        f"warm-up (boot excluded); the C floor: host wall clock over {FLOOR_N} KVM_RUN round trips after "
        "1000 of warm-up. Each round runs the floor then the four pyvmm loops back to back; the ratio is "
        "per round.")
    res.notes.append(
        f"**{TINY}** rows: the tiny guest's `scenario=bench` loops (C in 64-bit paged mode: a counter, a "
        f"compare, the access, a branch), each of {n} exits timed in the guest with rdtsc, interrupts off, "
        f"converted at {khz / 1000:.1f} MHz ({khz_source}); the port-I/O loop writes port 0x510, which "
        "no device serves. pyvmm runs as `pyvmm run --no-firmware` processes, QEMU microvm on the same ELF. "
        "On this host guest code runs emulated, so the guest's own loop adds microseconds per exit: "
        "compare these rows with QEMU, not with the floor.")
    res.notes.append("QEMU microvm gives the guest a legacy (version 1) virtio-mmio transport and handles "
                     "QueueNotify through its own ioeventfd; pyvmm gives version 2.")
    return res


def profile(out_dir: Path = common.RESULTS, n: int = N) -> list[Path]:
    """cProfile of in-process pyvmm runs: the tiny guest's bench (ioeventfd on, and off) and the floor's
    loops with device dispatch; top-25 text summaries."""
    common.need_kvm()
    kernel = common.need_guest()
    common.need_pyvmm("pyvmm.virtio.balloon")
    from pyvmm.config import VmConfig
    from pyvmm.vm import Machine

    written = []
    for label, ioeventfd in (("ioeventfd", True), ("no_ioeventfd", False)):
        profiles: list = []
        t0 = time.monotonic()
        with common.profile_threads(profiles):
            m = Machine(VmConfig(kernel=kernel, memory=256 << 20, append=f"scenario={SCENARIO} n={n}",
                                 console="none", firmware=None, ioeventfd=ioeventfd))
            try:
                m.start()
                code = m.wait(common.RUN_TIMEOUT)
            finally:
                m.close()
        took = time.monotonic() - t0
        path = out_dir / f"profile_exits_{label}.txt"
        title = (f"pyvmm exits profile: scenario=bench n={n}, {'with' if ioeventfd else 'without'} ioeventfd "
                 f"(guest exit code {code}, {took:.1f} s under cProfile)")
        common.write_profile(profiles, path, title)
        written.append(path)

    # The floor's loops with device dispatch: where pyvmm's own exit path spends its time.
    profiles = []
    lines = []
    with common.profile_threads(profiles):
        for loop in SAME_LOOPS:
            if loop.handled:
                ns, why = measure_loop(loop, build_loop_elf(loop), seconds=1.0)
                lines.append(f"{loop.key} {f'{ns:,.0f} ns/exit' if ns else why}")
    path = out_dir / "profile_exits_same_loop.txt"
    common.write_profile(profiles, path, "pyvmm exits profile: the C floor's guest loops with device "
                         f"dispatch, 1 s each ({', '.join(lines)} under cProfile)")
    written.append(path)
    return written


if __name__ == "__main__":
    raise SystemExit(common.standalone(run))
