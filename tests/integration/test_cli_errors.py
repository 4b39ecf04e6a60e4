"""Bad input to `pyvmm run`: each a one-line error with a non-zero exit, never a traceback."""

import os
import subprocess
import sys

import pytest

from tests.support.elfs import build_pvh_elf, with_machine

pytestmark = pytest.mark.kvm


def pyvmm(*args, env=None):
    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], capture_output=True, text=True, timeout=60,
                          env=e, stdin=subprocess.DEVNULL)


def assert_one_line_error(res, *words):
    assert res.returncode != 0, res
    assert "Traceback" not in res.stderr, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("pyvmm: "), lines
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture(scope="module")
def hello(tmp_path_factory):
    return build_pvh_elf(tmp_path_factory.mktemp("elf"))


def test_kernel_missing(tmp_path):
    assert_one_line_error(pyvmm("run", str(tmp_path / "nope.elf")), "no such file")


def test_kernel_unreadable_directory(tmp_path):
    assert_one_line_error(pyvmm("run", str(tmp_path)), "directory")


def test_kernel_not_elf(tmp_path):
    f = tmp_path / "k"
    f.write_text("not a kernel")
    assert_one_line_error(pyvmm("run", str(f)), "no boot header pyvmm knows; pyvmm boots three kinds of kernel")


def test_kernel_not_x86(hello, tmp_path):
    assert_one_line_error(pyvmm("run", str(with_machine(hello, tmp_path / "arm.elf", 183))), "not x86-64")


def test_kernel_without_pvh_note(tmp_path):
    assert_one_line_error(pyvmm("run", str(build_pvh_elf(tmp_path, note=False))), "PVH")


@pytest.mark.parametrize("mem,words", [
    ("lots", ["not a size"]),
    ("0", ["greater than zero"]),
    ("1000001B", ["multiple of the 4 KiB"]),
    ("100T", ["more than this host has"]),
])
def test_bad_memory(hello, mem, words):
    assert_one_line_error(pyvmm("run", str(hello), "-m", mem), *words)


def test_smp_zero(hello):
    assert_one_line_error(pyvmm("run", str(hello), "--smp", "0"), "--smp")


def test_smp_above_the_limit(hello):
    assert_one_line_error(pyvmm("run", str(hello), "--smp", "100000"), "--smp", "at most 254")


def test_bad_option():
    assert_one_line_error(pyvmm("run", "--frobnicate"), "unrecognized")


def test_kvm_device_missing(hello, tmp_path):
    res = pyvmm("run", str(hello), env={"PYVMM_KVM_DEVICE": str(tmp_path / "kvm")})
    assert_one_line_error(res, "does not exist")


def test_bad_balloon_options(hello):
    res = pyvmm("run", str(hello), "--balloon", "frobnicate=on")
    assert_one_line_error(res, "frobnicate")


def test_bad_trace_category(hello):
    assert_one_line_error(pyvmm("run", str(hello), "--trace", "nonsense"), "trace category")


def test_runs_and_exits_with_guest_code(hello, tmp_path):
    res = pyvmm("run", str(hello), "--balloon", "off", "-m", "64M")
    assert res.returncode == 0, res.stderr
    assert "hello from pvh" in res.stdout
    seven = build_pvh_elf(tmp_path, exit_code=7, name="seven")
    res = pyvmm("run", str(seven), "-m", "64M")
    assert res.returncode == 7


def test_version_and_help():
    from pyvmm import __version__

    res = pyvmm("--version")
    assert res.returncode == 0 and __version__ in res.stdout
    res = pyvmm("run", "--help")
    assert res.returncode == 0 and "--no-firmware" in res.stdout and "--balloon" in res.stdout


def test_string_io(tmp_path):
    """rep outsb / rep insb: KVM hands several items to one exit (count > 1)."""
    from tests.support.elfs import build_string_io_elf

    res = pyvmm("run", str(build_string_io_elf(tmp_path)), "-m", "16M", "--balloon", "off", "--no-firmware")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "string I/O works\nZZZZ\n"


@pytest.mark.parametrize("args,words", [
    (["--trace-file", "/nonexistent/dir/x.jsonl"], ["--trace-file", "No such file"]),
    (["--smp", "255"], ["at most 254"]),
    (["--smp", "300", "--no-acpi"], ["at most 254"]),
    (["--initrd", "/dev/zero"], ["initrd /dev/zero: not a regular file"]),
    (["--firmware", "/dev/zero"], ["firmware /dev/zero: not a regular file"]),
    (["--trace", "exits"], ["unknown trace category"]),
    (["--plot", "/tmp/b.png"], ["--plot FILE draws the demo's", "give --demo too"]),
    (["--demo", "--plot", "/tmp/b.jpg"], ["--plot /tmp/b.jpg", ".png or .svg"]),
])
def test_more_bad_input(hello, args, words):
    assert_one_line_error(pyvmm("run", str(hello), "-m", "16M", *args), *words)


def test_kernel_that_is_not_a_regular_file():
    assert_one_line_error(pyvmm("run", "/dev/zero"), "not a regular file")
