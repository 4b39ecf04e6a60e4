"""The Linux shell tests' reading of the console: a command's output with the kernel's messages taken
out, wherever printk put them (tests/support/linux_shell.py)."""

from __future__ import annotations

from tests.support.linux_shell import KERNEL_LINE


def split(text: str) -> tuple[str, list[str]]:
    return KERNEL_LINE.sub("", text), [m[0].rstrip("\n") for m in KERNEL_LINE.finditer(text)]


def test_a_kernel_line_between_output_lines():
    assert split("[ 1043.345657] random: crng init done\nsynced\n") == (
        "synced\n", ["[ 1043.345657] random: crng init done"])


def test_a_kernel_line_in_the_middle_of_an_output_line():
    out, kernel = split("hol[  12.000001] virtio_balloon virtio0: Out of puff! Can't get 1 pages\nding 128 MiB\n")
    assert out == "holding 128 MiB\n"
    assert kernel == ["[  12.000001] virtio_balloon virtio0: Out of puff! Can't get 1 pages"]


def test_output_that_only_looks_like_a_timestamp_stays():
    for text in ("[1] 42\n", "[ 1.5] x\n", "a [b] c\n", "[ 1043.345657]no-space\n"):
        assert split(text) == (text, [])
