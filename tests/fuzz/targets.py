"""Fuzz targets: every parser a user or a guest feeds pyvmm, each taking bytes and checking one rule.

The rule for user and guest input alike: a bad input ends in a one-line error of pyvmm's own
(PyvmmError, a QMP error reply, an `Error:` line of the monitor) and nothing else — no other exception,
no traceback, no "internal error", no hang, nothing written outside guest RAM.  A target raises
AssertionError (or lets the unexpected exception escape) when the rule is broken.

    TARGETS["qmp"](data)     the QMP JSON stream and every command's arguments (a fake machine)
    TARGETS["hmp"](data)     human-monitor command lines
    TARGETS["options"](data) --balloon, sizes, QMP addresses, the whole `pyvmm run` command line
    TARGETS["elf"](data)     PVH ELF kernels through the loader and the builder's kernel step
    TARGETS["bzimage"](data) bzImages through the boot protocol's checks and boot_params
    TARGETS["firmware"](data) the boot ROM's ELF and its hand-off words
    TARGETS["tracefile"](data) the --trace-file path
    TARGETS["virtio"](data)  a hostile driver against the transport and the balloon (harness.py)
    TARGETS["multiboot"](data) Multiboot kernels through the loader (multiboot_harness.py)
    TARGETS["rsp"](data)     gdb remote protocol streams against the gdbstub (rsp_harness.py)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

# Everything the targets reach is imported here, at module level: atheris instruments the modules
# imported while it loads this one, and only those report coverage.
from pyvmm.builder import Resources, load_kernel, make_tracer
from pyvmm.cli import build_parser, config_from_args
from pyvmm.config import VmConfig, parse_balloon_options
from pyvmm.errors import PyvmmError
from pyvmm.loader.bzimage import parse_bzimage
from pyvmm.loader.firmware import load_firmware
from pyvmm.memory import GuestMemory
from pyvmm.monitor.hmp import run_hmp
from pyvmm.monitor.qmp import FatalInput, JsonStream, QmpServer, _Client, parse_address
from pyvmm.units import parse_size
from tests.fuzz.harness import Bytes, run_one
from tests.fuzz.multiboot_harness import run_one as fuzz_multiboot
from tests.fuzz.rsp_harness import run_one as fuzz_rsp
from tests.support.bzimages import synthetic_bzimage
from tests.support.fake_machine import FakeMachine
from tests.support.firmware import ELF

MiB = 1 << 20
_TMP = Path(tempfile.mkdtemp(prefix="pyvmm-fuzz-"))


def _one_line(err: BaseException) -> None:
    text = str(err)
    assert text and "\n" not in text and "Traceback" not in text, repr(text)


# --- QMP ------------------------------------------------------------------------------------------------

_QMP_COMMANDS = ["qmp_capabilities", "query-version", "query-status", "query-commands", "stop", "cont",
                 "system_reset", "balloon", "query-balloon", "qom-get", "qom-set", "human-monitor-command",
                 "quit", "nope"]
_QMP_KEYS = ["value", "path", "property", "command-line", "cpu-index", "enable", "x"]


class _FakeSock:
    """What a QMP client's socket needs to be for the server's output path: everything is 'sent'."""

    def __init__(self) -> None:
        self.sent = bytearray()

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def fileno(self) -> int:
        return 1_000_000

    def close(self) -> None:
        pass


def _json_value(src: Bytes, depth: int = 0):
    kind = src.u8() % (9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return bool(src.u8() & 1)
    if kind == 2:
        return struct.unpack("<q", src.take(8))[0]
    if kind == 3:
        return src.u32() % 400 * MiB
    if kind == 4:
        return src.take(src.u8() % 24).decode("latin-1")
    if kind == 5:
        return random.Random(src.u32()).choice(["/machine/peripheral/balloon0", "balloon0", "guest-stats",
                                                 "guest-stats-polling-interval", "info balloon", "x/4x 0",
                                                 "info virtqueue balloon0 0", "stop", "cont"])
    if kind == 6:
        return [_json_value(src, depth + 1) for _ in range(src.u8() % 4)]
    if kind == 7:
        return {_QMP_KEYS[src.u8() % len(_QMP_KEYS)]: _json_value(src, depth + 1) for _ in range(src.u8() % 4)}
    return struct.unpack("<d", src.take(8))[0]


def fuzz_qmp(data: bytes) -> None:
    """Raw JSON bytes through the stream splitter, or commands with fuzzed arguments, into the server."""
    machine = FakeMachine(driver=False)
    try:
        server = QmpServer(machine, f"unix:{_TMP}/never-bound.sock")
        server._sel = None
        client = _Client(_FakeSock(), "fuzz", JsonStream(limit=64 * 1024), bytearray())  # type: ignore[arg-type]
        server._flush = lambda c: None                     # type: ignore[method-assign]
        src = Bytes(data)
        if src.u8() & 1:
            chunks = [data[i:i + 97] for i in range(1, len(data), 97)]
        else:
            chunks = []
            for _ in range(src.u8() % 8 + 1):
                req = {"execute": _QMP_COMMANDS[src.u8() % len(_QMP_COMMANDS)]}
                if src.u8() & 1:
                    req["arguments"] = _json_value(src) if src.u8() % 4 == 0 else {
                        _QMP_KEYS[src.u8() % len(_QMP_KEYS)]: _json_value(src) for _ in range(src.u8() % 4)}
                if src.u8() & 3 == 0:
                    req["id"] = _json_value(src)
                chunks.append(json.dumps(req).encode())
            chunks.insert(0, b'{"execute": "qmp_capabilities"}')
        for chunk in chunks:
            try:
                items = client.stream.feed(chunk)
            except FatalInput as e:
                _one_line(e)
                return
            for value, err in items:
                if err is not None:
                    assert "\n" not in err
                    continue
                client.out.clear()
                server._dispatch(client, value)
                for line in bytes(client.out).split(b"\r\n"):
                    if not line:
                        continue
                    reply = json.loads(line)
                    if "error" in reply:
                        desc = reply["error"]["desc"]
                        assert "\n" not in desc and not desc.startswith("internal error"), desc
    finally:
        machine.close()


# --- the human monitor -------------------------------------------------------------------------------------

_HMP_WORDS = ["info", "balloon", "stats", "status", "virtio", "virtqueue", "registers", "mtree", "x/16xb",
              "x/4i", "xp/2g", "x", "help", "?", "stop", "cont", "c", "trace", "on", "off", "all", "virtio",
              "balloon0", "inflateq", "0", "1", "2", "64M", "1G", "-1", "0xffffffff", "0x100000", "lots", "q"]


def fuzz_hmp(data: bytes) -> None:
    machine = FakeMachine(driver=True)
    try:
        src = Bytes(data)
        for _ in range(src.u8() % 6 + 1):
            if src.u8() & 1:
                line = src.take(src.u8() % 40).decode("utf-8", "replace")
            else:
                line = " ".join(_HMP_WORDS[src.u8() % len(_HMP_WORDS)] for _ in range(src.u8() % 4 + 1))
            if line.split()[:1] in (["quit"], ["q"]):
                continue
            out = run_hmp(machine, line)
            assert isinstance(out, str) and "internal error" not in out and "Traceback" not in out, (line, out)
    finally:
        machine.close()


# --- command-line options ---------------------------------------------------------------------------------

_OPTION_WORDS = ["run", "-m", "--memory", "256M", "0", "1X", "--smp", "0", "4", "300", "--balloon",
                 "deflate-on-oom=on,stats-interval=2", "bogus=1", "stats-interval=-1", "--qmp", "unix:",
                 "tcp:1.2.3.4:99999", "unix:/tmp/x,server,wait=on", "--trace", "virtio,boot", "nope",
                 "--virtio-version", "3", "-append", "scenario=selftest", "--no-firmware", "--firmware", "/",
                 "--cpu", "host", "-kernel", "/nonexistent", "--linux", "-initrd", "balloon", "info", "--json"]


def fuzz_options(data: bytes) -> None:
    src = Bytes(data)
    text = src.take(src.u8() % 48).decode("utf-8", "replace")
    for fn in (parse_balloon_options, parse_size, parse_address):
        try:
            fn(text)
        except PyvmmError as e:
            _one_line(e)
    argv = [_OPTION_WORDS[src.u8() % len(_OPTION_WORDS)] if src.u8() & 3 else
            src.take(src.u8() % 12).decode("utf-8", "replace") for _ in range(src.u8() % 8)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = build_parser().parse_args(argv)
            if getattr(args, "verb", None) == "run":
                config_from_args(args).validate()
        except SystemExit as e:
            assert e.code in (0, 2), e.code
            lines = [x for x in err.getvalue().splitlines() if x.strip()]
            assert e.code == 0 or len(lines) == 1 or lines[0].startswith("usage:"), err.getvalue()
        except PyvmmError as e:
            _one_line(e)


# --- kernels: PVH ELF and bzImage ----------------------------------------------------------------------------

def _mutate(seed: bytes, src: Bytes) -> bytes:
    out = bytearray(seed)
    for _ in range(src.u8() % 16):
        if not out:
            break
        kind = src.u8() % 4
        pos = src.u32() % len(out)
        if kind == 0:
            out[pos] = src.u8()
        elif kind == 1:
            out[pos:pos + 4] = src.take(4)
        elif kind == 2:
            out[pos:pos + 8] = struct.pack("<Q", src.u64())
        else:
            del out[pos:]
    return bytes(out)


def _elf_seeds() -> list[bytes]:
    from tests.support.elfs import EM_X86_64, make_elf, make_pvh_elf, note

    pvh = note(b"Xen", 18, struct.pack("<Q", 0x100000))
    return [
        make_pvh_elf(),
        make_elf([(0x100000, b"\x90" * 64, 0x2000), (0x200000, b"\xcc" * 16, 16)], notes=pvh),
        make_elf([(0x100000, b"\x90" * 32, 32)], notes=pvh, machine=EM_X86_64, elfclass=64),
        make_elf([(0x100000, b"\x90" * 32, 0x1000), (0x100800, b"\x90" * 32, 32)], notes=pvh),   # overlap
    ]


def _kernel_through_the_builder(path: Path, memory: int) -> None:
    mem = GuestMemory.anonymous([(0, memory)])          # lazily backed: a fuzz run costs no RSS
    writes: list[tuple[int, int]] = []
    real_write = mem.write

    def checked_write(gpa: int, data) -> None:
        writes.append((gpa, len(data)))
        real_write(gpa, data)

    mem.write = checked_write                                # type: ignore[method-assign]
    try:
        kernel = load_kernel(mem, VmConfig(kernel=path, memory=memory, firmware=None), [], 0)
        kernel.load(mem)
    except PyvmmError as e:
        _one_line(e)
    assert all(mem.contains(g, n) for g, n in writes)


def fuzz_elf(data: bytes) -> None:
    src = Bytes(data)
    seeds = _elf_seeds()
    image = _mutate(seeds[src.u8() % len(seeds)], src) if src.u8() % 8 else data
    path = _TMP / "kernel.elf"
    path.write_bytes(image)
    os.environ["PYVMM_NO_CACHE"] = "1"
    _kernel_through_the_builder(path, 8 * MiB)


def fuzz_bzimage(data: bytes) -> None:
    src = Bytes(data)
    image = _mutate(synthetic_bzimage(), src)
    try:
        parse_bzimage(image, name="kernel fuzz")
    except PyvmmError as e:
        _one_line(e)
        return
    path = _TMP / "bzImage"
    path.write_bytes(image)
    _kernel_through_the_builder(path, 32 * MiB)


# --- the boot ROM -------------------------------------------------------------------------------------------

def fuzz_firmware(data: bytes) -> None:
    src = Bytes(data)
    path = _TMP / "rom.elf"
    path.write_bytes(_mutate(ELF.read_bytes(), src) if src.u8() % 8 else data)
    try:
        rom = load_firmware(path)
        rom.with_handoff(src.u64() % (1 << 34), src.u64() % (1 << 34))
    except PyvmmError as e:
        _one_line(e)


# --- the trace file ------------------------------------------------------------------------------------------

_SPECIAL_PATHS = ["/dev/full", "/dev/null", "/", "/proc/self", "/nonexistent/dir/t.jsonl", "", ".", "x" * 300,
                  "a\0b", "/proc/version", "dir/"]


def fuzz_tracefile(data: bytes) -> None:
    """A --trace-file path (inside a scratch directory, or one of the special ones): the tracer opens it
    or says in one line why it cannot; a full disk later does not take the VM down."""
    src = Bytes(data)
    if src.u8() & 1:
        name = _SPECIAL_PATHS[src.u8() % len(_SPECIAL_PATHS)]
    else:
        name = str(_TMP / "t" / src.take(src.u8() % 20).decode("utf-8", "replace").replace("..", "_"))
    (_TMP / "t").mkdir(exist_ok=True)
    (_TMP / "dir").mkdir(exist_ok=True)
    res = Resources()
    cwd = os.getcwd()
    os.chdir(_TMP)
    try:
        tracer = make_tracer(VmConfig(trace=frozenset({"virtio"}), trace_file=Path(name)), res)
        tracer._stream = None
        tracer.access("fuzz0", "write", "Status", 1, "ACKNOWLEDGE")
    except PyvmmError as e:
        _one_line(e)
    finally:
        os.chdir(cwd)
        res.close()


TARGETS: dict[str, Callable[[bytes], None]] = {
    "virtio": run_one,
    "qmp": fuzz_qmp,
    "hmp": fuzz_hmp,
    "options": fuzz_options,
    "elf": fuzz_elf,
    "bzimage": fuzz_bzimage,
    "firmware": fuzz_firmware,
    "tracefile": fuzz_tracefile,
    "multiboot": fuzz_multiboot,      # Multiboot v1 headers, ELF32 and a.out-kludge kernels, modules
    "rsp": fuzz_rsp,                  # a hostile gdb's byte stream against the gdbstub's session
}
