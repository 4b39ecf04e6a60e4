"""The Multiboot fuzz harness: bytes in, the loader's parse, placement and boot information checked.

``check_image(data)`` must end in a LoaderError (one line) or a loaded image whose every byte landed in
guest RAM: an escaping exception, a multi-line message or a segment outside RAM is a failure.  Shared by
the atheris fuzzer (``python -m tests.fuzz.fuzz multiboot``), the unit tier's hypothesis test and the
seeds below.
"""

from __future__ import annotations

from pyvmm.errors import LoaderError
from pyvmm.loader import multiboot as mb
from pyvmm.memory import GuestMemory
from tests.support.multiboot_images import aout_image, elf_image

RAM = 4 << 20

SEEDS = (aout_image(), aout_image(pad=64, bss=0), aout_image(video=(1, 80, 25, 0)), elf_image(),
         elf_image(extra_segments=[(0x200000, b"DATA", 0x1000)]), elf_image(elfclass=64, machine=62))


def check_image(data: bytes) -> None:
    try:
        image = mb.parse_multiboot(data, "fuzz.bin")
        mb.check_placement(image, RAM)
    except LoaderError as e:
        assert "\n" not in str(e), str(e)
        return
    assert image.segments and any(s.paddr <= image.entry < s.paddr + s.memsz for s in image.segments)
    for s in image.segments:
        assert s.paddr >= 1 << 20 and s.paddr + s.memsz <= RAM and len(s.data) <= s.memsz
    mem = GuestMemory.from_bytearray(RAM)
    try:
        mb.write_boot_info(mem, image, ram_size=RAM, cmdline=b"fuzz.bin", modules=[mb.Module(data[:64], b"m")])
    except LoaderError as e:
        assert "\n" not in str(e), str(e)


def mutate_seed(data: bytes) -> bytes:
    """A fuzz input as a seed with its bytes edited: byte 0 picks the seed, then (offset, value) pairs,
    the last byte how much to cut off the end."""
    if len(data) < 2:
        return SEEDS[0]
    seed = bytearray(SEEDS[data[0] % len(SEEDS)])
    for i in range(1, len(data) - 2, 2):
        at = data[i] | (data[i + 1] & 0x1) << 8
        if at < len(seed):
            seed[at] = data[i + 1] if i + 2 >= len(data) else data[i + 2]
    cut = data[-1]
    return bytes(seed[: max(1, len(seed) - cut)]) if cut < len(seed) else bytes(seed)


def run_one(data: bytes) -> None:
    """One fuzz input: half the time raw bytes, half the time an edited seed (deep paths need one)."""
    check_image(mutate_seed(data[1:]) if data[:1] and data[0] & 1 else data[1:])
