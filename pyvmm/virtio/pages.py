"""The balloon's set of ballooned 4 KiB guest pages, and giving their host pages back.

A bitmap with one bit per 4 KiB page of the guest-physical address space (32 KiB per GiB, however
full it is).  Newly ballooned pages are sorted and merged into runs, and each run is discarded with
one call (Firecracker's balloon does the same before its discard_range).  With host pages larger than
4 KiB (huge-page backed RAM), a host page is discarded only when every 4 KiB piece of it arrives in the
one inflate request being served, as QEMU does (its partially-ballooned page lives for one request):
pieces ballooned by earlier requests do not count, because without MUST_TELL_HOST the guest may already
be using one of them again, its deflate still unseen in the other queue.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..memory import GuestMemory
from .abi import VIRTIO_BALLOON_PFN_SHIFT

PAGE = 1 << VIRTIO_BALLOON_PFN_SHIFT


class BalloonedPages:
    """Which guest pages the balloon holds; ``discard(gpa, length)`` gives host memory back."""

    def __init__(self, mem: GuestMemory, discard: Callable[[int, int], None], host_page_size: int = PAGE) -> None:
        if host_page_size < PAGE or host_page_size & (host_page_size - 1):
            raise ValueError(f"host page size {host_page_size} is not a power of 2 >= {PAGE}")
        self.mem = mem
        self.discard = discard
        self.host_page_size = host_page_size
        self._sub = host_page_size // PAGE          # 4 KiB pages per host page
        self._ram = [(r.gpa >> VIRTIO_BALLOON_PFN_SHIFT, r.end >> VIRTIO_BALLOON_PFN_SHIFT) for r in mem.regions]
        self.bitmap = bytearray(((mem.end >> VIRTIO_BALLOON_PFN_SHIFT) + 7) // 8)
        self.count = 0                # pages ballooned now
        self.discarded_bytes = 0      # given back through discard, cumulative
        self.discard_calls = 0

    def in_ram(self, pfn: int) -> bool:
        return any(lo <= pfn < hi for lo, hi in self._ram)

    def __contains__(self, pfn: int) -> bool:
        return 0 <= pfn < len(self.bitmap) * 8 and bool(self.bitmap[pfn >> 3] & (1 << (pfn & 7)))

    def clear(self) -> None:
        self.bitmap[:] = bytes(len(self.bitmap))
        self.count = 0

    def add(self, pfns: Iterable[int]) -> tuple[int, int, int, int]:
        """Balloon pfns and discard what they complete: (new pages, runs, outside RAM, already ballooned)."""
        bitmap = self.bitmap
        fresh = []
        bad = dup = 0
        for pfn in pfns:
            if not self.in_ram(pfn):
                bad += 1
                continue
            byte, bit = pfn >> 3, 1 << (pfn & 7)
            if bitmap[byte] & bit:
                dup += 1
                continue
            bitmap[byte] |= bit
            fresh.append(pfn)
        self.count += len(fresh)
        if self._sub == 1:
            runs = _runs(sorted(fresh))
            for start, count in runs:
                self._discard_range(start << VIRTIO_BALLOON_PFN_SHIFT, count << VIRTIO_BALLOON_PFN_SHIFT)
        else:
            runs = self._discard_whole_host_pages(fresh)
        return len(fresh), len(runs), bad, dup

    def remove(self, pfns: Iterable[int]) -> tuple[int, int, int]:
        """Give pfns back to the guest: (released, outside RAM, never ballooned)."""
        bitmap = self.bitmap
        released = bad = never = 0
        for pfn in pfns:
            if not self.in_ram(pfn):
                bad += 1
                continue
            byte, bit = pfn >> 3, 1 << (pfn & 7)
            if bitmap[byte] & bit:
                bitmap[byte] &= ~bit
                released += 1
            else:
                never += 1
        self.count -= released
        return released, bad, never

    def discard_free(self, gpa: int, length: int) -> int:
        """Discard the whole host pages inside [gpa, gpa+length) (free page reporting); bytes discarded."""
        hp = self.host_page_size
        lo = (gpa + hp - 1) & ~(hp - 1)
        hi = (gpa + length) & ~(hp - 1)
        if hi <= lo:
            return 0
        before = self.discarded_bytes
        self._discard_range(lo, hi - lo)
        return self.discarded_bytes - before

    def _discard_whole_host_pages(self, fresh: list[int]) -> list[tuple[int, int]]:
        """Discard the host pages whose every 4 KiB piece is in fresh (this request); their runs."""
        sub = self._sub
        pieces: dict[int, int] = {}
        for pfn in fresh:
            pieces[pfn // sub] = pieces.get(pfn // sub, 0) + 1
        runs = _runs(sorted(hp for hp, n in pieces.items() if n == sub))
        for first, count in runs:
            self._discard_range(first * self.host_page_size, count * self.host_page_size)
        return runs

    def _discard_range(self, gpa: int, length: int) -> None:
        """discard() once per RAM region the range touches (a run never spans the MMIO hole)."""
        end = gpa + length
        for r in self.mem.regions:
            lo, hi = max(gpa, r.gpa), min(end, r.end)
            if lo < hi:
                self.discard(lo, hi - lo)
                self.discard_calls += 1
                self.discarded_bytes += hi - lo


def _runs(sorted_pfns: list[int]) -> list[tuple[int, int]]:
    """Merge sorted, distinct PFNs into (start, count) runs."""
    runs: list[tuple[int, int]] = []
    if not sorted_pfns:
        return runs
    start = prev = sorted_pfns[0]
    for pfn in sorted_pfns[1:]:
        if pfn != prev + 1:
            runs.append((start, prev - start + 1))
            start = pfn
        prev = pfn
    runs.append((start, prev - start + 1))
    return runs


def format_runs(pfns: list[int], limit: int = 8) -> str:
    """``0x1c00-0x1cff 0x2000`` for PFNs as the driver listed them, consecutive ones as one run (a run
    going down, as Linux allocates pages, is written from its first PFN: ``0x1f477-0x1f378``)."""
    runs: list[tuple[int, int]] = []
    for pfn in pfns:
        if runs:
            first, last = runs[-1]
            step = 1 if first == last else (1 if last > first else -1)
            if pfn == last + step or (first == last and pfn == last - 1):
                runs[-1] = (first, pfn)
                continue
        runs.append((pfn, pfn))
    text = " ".join(f"{a:#x}" if a == b else f"{a:#x}-{b:#x}" for a, b in runs[:limit])
    if len(runs) > limit:
        text += f" ... ({len(runs) - limit} more runs)"
    return text or "(none)"


def describe_pfns(data: bytes) -> str:
    """An inflate or deflate buffer as its PFNs in runs (spec "Device Operation": an array of le32)."""
    n = len(data) // 4
    pfns = memoryview(data)[: 4 * n].cast("I").tolist() if n else []
    return f"{n} PFN{'s' if n != 1 else ''} (le32): {format_runs(pfns)}"
