"""Benchmark: 1 GiB of dirtied guest RAM inflated through the balloon device, against per-page madvise.

No guest and no KVM: the Python driver of the test suite posts 256-PFN batches to the device exactly
as Linux's driver does (one inflateq buffer per batch, a notify, the used ring reaped, the interrupt
acknowledged).  The device merges each batch into runs and discards each run with one madvise;
the baseline discards the same pages one madvise each (the way kvmtool and QEMU do).  Prints figures,
asserts nothing.

    .venv/bin/python bench/balloon.py [--gib 1] [--order contiguous|shuffled]
"""

from __future__ import annotations

import argparse
import logging
import mmap
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pyvmm import hoststat
from tests.support.virtio_driver import Rig

MiB = 1 << 20
BATCH = 256   # VIRTIO_BALLOON_ARRAY_PFNS_MAX of Linux's driver


def dirty(rig: Rig, size: int) -> None:
    view = rig.mem.regions[0].view
    chunk = b"\xa5" * (64 * MiB)
    for off in range(0, size, len(chunk)):
        view[off: off + len(chunk)] = chunk[: size - off]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0, help="guest RAM to inflate, GiB")
    ap.add_argument("--order", choices=("contiguous", "shuffled"), default="contiguous",
                    help="PFN order inside the balloon (contiguous: as the buddy allocator mostly hands out)")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    size = int(args.gib * 1024) * MiB
    pages = size >> 12
    rig = Rig(anonymous=True, layout=[(0, size + 8 * MiB)])
    rig.driver.start(accept=0)
    pfns = list(range(pages))
    if args.order == "shuffled":
        random.Random(1).shuffle(pfns)

    # --- through the device ----------------------------------------------------------------------
    dirty(rig, size)
    rss0, proc0 = hoststat.mapping_rss(rig.mem), hoststat.process_rss()
    t0 = time.perf_counter()
    for i in range(0, pages, BATCH):
        rig.driver.inflate(pfns[i: i + BATCH])
    dt_dev = time.perf_counter() - t0
    rss1 = hoststat.mapping_rss(rig.mem)
    calls = len(rig.discards)
    assert rig.balloon.ballooned_pages == pages

    # --- baseline: one madvise per page, same pages, same order ----------------------------------------
    dirty(rig, size)
    buf = rig.mem.regions[0].buffer
    rss2 = hoststat.mapping_rss(rig.mem)
    t0 = time.perf_counter()
    for i in range(0, pages, BATCH):
        for pfn in pfns[i: i + BATCH]:
            buf.madvise(mmap.MADV_DONTNEED, pfn << 12, 4096)
    dt_base = time.perf_counter() - t0
    rss3 = hoststat.mapping_rss(rig.mem)

    per_gib = (1024 * MiB) / size
    print(f"balloon inflate of {size // MiB} MiB dirtied anonymous guest RAM, {BATCH}-PFN batches, "
          f"{args.order} PFNs")
    print(f"  device (merged runs):   {dt_dev * per_gib:8.3f} s/GiB   {calls:7d} discard calls   "
          f"guest-RAM RSS {rss0 // MiB} -> {rss1 // MiB} MiB")
    print(f"  baseline (per page):    {dt_base * per_gib:8.3f} s/GiB   {pages:7d} madvise calls   "
          f"guest-RAM RSS {rss2 // MiB} -> {rss3 // MiB} MiB")
    print(f"  process RSS before the device run: {proc0 // MiB} MiB")
    print(f"  ratio baseline/device:  {dt_base / dt_dev:.2f}x  (the device time includes the driver "
          f"and ring work of {pages // BATCH} batches)")
    rig.close()


if __name__ == "__main__":
    main()
