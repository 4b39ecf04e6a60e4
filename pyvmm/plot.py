"""Pictures (matplotlib, the optional extra pyvmm[plot]): the balloon timeline, a virtqueue's rings and
the guest-physical memory map.  Each returns a matplotlib Figure and, given a path, writes it as PNG or
SVG by the path's suffix.  Figures are made without pyplot (no global state, no GUI backend), so they
draw the same in a script, a test and a notebook.

SVGs keep their text as text (svg.fonttype "none") and name their parts with ids (``desc-3``,
``avail-idx``, ``used-idx``...), so a program can read a picture back.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from .errors import PyvmmError

MiB = 1 << 20
_NEXT, _WRITE, _INDIRECT = 1, 2, 4


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PyvmmError("pictures need matplotlib: pip install 'pyvmm[plot]'") from None
    return matplotlib


def _figure(width: float, height: float) -> Any:
    _matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save(fig: Any, path: str | Path, data: dict | None = None) -> Path:
    """Write fig as PNG or SVG (by the suffix); data, if any, goes into the file's metadata as JSON."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise PyvmmError(f"{path}: a picture is written as .png or .svg, not {path.suffix or 'no suffix'!r}")
    text = json.dumps(data, separators=(",", ":")) if data is not None else None
    meta: dict[str, str] = {}
    if text is not None:
        meta = {"pyvmm-samples": text} if fmt == "png" else {"Description": text}
    import matplotlib

    try:
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "pyvmm"}):
            fig.savefig(path, format=fmt, metadata=meta, dpi=100)
    except OSError as e:
        raise PyvmmError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def figure_html(fig: Any) -> str:
    """The figure as inline SVG, for a notebook's _repr_html_."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    return svg[svg.find("<svg"):]


# --- the balloon timeline ----------------------------------------------------------------------------

def plot_timeline(timeline: Any, path: str | Path | None = None, *, title: str = "virtio balloon") -> Any:
    """Target, actual, host RSS of guest RAM and the guest's free memory (MiB) against time, with the
    inflate and deflate phases shaded."""
    fig = _figure(8, 4.2)
    ax = fig.add_subplot()
    samples = list(timeline.samples)
    t = [s.t for s in samples]

    def mib(values: list) -> list:
        return [None if v is None else v / MiB for v in values]

    ax.step(t, mib([s.target for s in samples]), where="post", label="target", color="tab:red", lw=1.5,
            gid="series-target")
    ax.plot(t, mib([s.actual for s in samples]), label="actual (driver)", color="tab:blue", lw=2,
            gid="series-actual")
    if any(s.rss is not None for s in samples):
        ax.plot(t, mib([s.rss for s in samples]), label="host RSS of guest RAM", color="tab:green",
                ls="--", gid="series-rss")
    if any(s.free is not None for s in samples):
        ax.plot(t, mib([s.free for s in samples]), label="guest free (stats)", color="tab:purple",
                ls=":", marker=".", ms=3, gid="series-free")
    for phase, t0, t1 in timeline.phases():
        ax.axvspan(t0, t1, color="tab:orange" if phase == "inflate" else "tab:cyan", alpha=0.15, lw=0)
        ax.text((t0 + t1) / 2, 1.0, phase, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.set_title(title, pad=14)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    if path is not None:
        save(fig, path, timeline.to_dict())
    return fig


# --- a virtqueue -------------------------------------------------------------------------------------

def _flags(value: int) -> str:
    names = [n for bit, n in ((_NEXT, "NEXT"), (_WRITE, "WRITE"), (_INDIRECT, "INDIRECT")) if value & bit]
    return "|".join(names) or "-"


def plot_virtqueue(q: Any, path: str | Path | None = None, *, device: str = "", name: str = "") -> Any:
    """One split virtqueue (a pyvmm.virtio.queue.QueueSnapshot): the descriptor table, the available
    ring and the used ring side by side, each chain drawn from its head, and the driver's (avail.idx,
    used_event) and the device's (last_avail, used.idx) indices marked on the rings."""
    size = max(q.size, 0)
    rows = max(size, 1)
    fig = _figure(11, 1.6 + 0.16 * rows)
    ax = fig.add_subplot()
    ax.set_xlim(0, 11)
    ax.set_ylim(rows + 1.5, -2.2)
    ax.axis("off")
    label = f"{device} {name} (queue {q.index})".strip()
    ax.text(0, -1.8, f"{label}: size {q.size} (max {q.max_size}), {'ready' if q.ready else 'not ready'}",
            fontsize=11, weight="bold", gid="title")
    fs = 6.5
    ax.text(0.3, -0.6, "descriptor table", fontsize=8, weight="bold")
    ax.text(6.0, -0.6, "available ring (driver)", fontsize=8, weight="bold")
    ax.text(8.6, -0.6, "used ring (device)", fontsize=8, weight="bold")
    heads_in_flight = set(q.in_flight_heads()) if q.avail_ring else set()
    pending = set(q.pending_heads()) if q.avail_ring else set()
    descriptors = list(q.descriptors) + [(0, 0, 0, 0)] * (size - len(q.descriptors))
    for i, (addr, length, flags, nxt) in enumerate(descriptors[:size]):
        used = bool(addr or length)
        colour = "tab:orange" if i in heads_in_flight else "tab:blue" if i in pending else (
            "black" if used else "0.6")
        text = f"[{i:3}] {addr:#014x} len {length:<6} {_flags(flags)}" + (f" -> {nxt}" if flags & _NEXT else "")
        ax.text(0.3, i, text, fontsize=fs, family="monospace", va="center", color=colour, gid=f"desc-{i}")
        if flags & _NEXT and used and 0 <= nxt < size:
            ax.annotate("", xy=(0.25, nxt), xytext=(0.25, i), arrowprops={
                "arrowstyle": "->", "color": "tab:gray", "lw": 0.6,
                "connectionstyle": f"arc3,rad={0.4 if nxt > i else -0.4}"})
    avail_idx = q.avail_idx
    used_idx = q.used_idx
    for slot in range(size):
        head = q.avail_ring[slot] if slot < len(q.avail_ring) else None
        ax.text(6.0, slot, f"[{slot:3}] " + ("?" if head is None else f"head {head}"), fontsize=fs,
                family="monospace", va="center", gid=f"avail-{slot}")
        if slot < len(q.used_ring):
            uid, ulen = q.used_ring[slot]
            ax.text(8.6, slot, f"[{slot:3}] id {uid} len {ulen}", fontsize=fs, family="monospace",
                    va="center", gid=f"used-{slot}")
    marks = [  # (x of the ring, index, text, id, colour)
        (6.0, avail_idx, f"avail.idx = {avail_idx}", "avail-idx", "tab:blue"),
        (6.0, q.last_avail & 0xFFFF, f"last_avail = {q.last_avail & 0xFFFF} (device)", "last-avail", "tab:orange"),
        (8.6, used_idx, f"used.idx = {used_idx}", "used-idx", "tab:green"),
    ]
    for x, index, text, gid, colour in marks:
        if index is None or not size:
            ax.text(x, -0.15 if gid != "last-avail" else rows + 0.9, text + " (unreadable)", fontsize=7, gid=gid)
            continue
        slot = index % size
        ax.annotate(text, xy=(x - 0.05, slot), xytext=(x - 0.9, slot + 0.0), fontsize=7, color=colour,
                    va="center", ha="right", gid=gid,
                    arrowprops={"arrowstyle": "->", "color": colour, "lw": 0.8})
    ax.text(0.3, rows + 0.9, f"pending {q.pending}, in flight {q.in_flight}; blue: available, not taken; "
            "orange: taken, not yet used; grey: free", fontsize=7)
    if q.error:
        ax.text(0.3, rows + 1.3, f"rings unreadable: {q.error}", fontsize=7, color="tab:red")
    if path is not None:
        save(fig, path, {"device": device, "queue": name, "index": q.index, "size": q.size,
                         "avail_idx": avail_idx, "last_avail": q.last_avail & 0xFFFF, "used_idx": used_idx,
                         "next_used": q.next_used & 0xFFFF})
    return fig


# --- the guest-physical memory map --------------------------------------------------------------------

def plot_memory_map(regions: list[tuple[int, int, str]], path: str | Path | None = None, *,
                    ballooned: Any = None, buckets: int = 256) -> Any:
    """The guest-physical address space as a schematic bar: RAM, the holes between, the MMIO windows
    and the ROM (each region gets room by its kind, not its size, or the ROM would be invisible next
    to RAM), with ballooned pages shaded in RAM.  ``regions``: Machine.memory_map(); ``ballooned``: a
    pyvmm.virtio.pages.BalloonedPages (or anything with ``__contains__(pfn)``)."""
    fig = _figure(11, 2.8)
    ax = fig.add_subplot()
    ax.axis("off")
    parts: list[tuple[int, int, str]] = []
    last = 0
    for lo, hi, name in sorted(regions):
        if lo > last:
            parts.append((last, lo - 1, "(hole)"))
        parts.append((lo, hi, name))
        last = hi + 1
    widths = {"ram": 5.0, "(hole)": 1.2}
    x = 0.0
    for lo, hi, name in parts:
        w = widths.get(name, 0.9)
        colour = "tab:green" if name == "ram" else "white" if name == "(hole)" else (
            "tab:purple" if "rom" in name else "tab:blue")
        ax.add_patch(_rect(x, 0, w, 1, colour, gid=f"region-{lo:#x}"))
        if name == "ram" and ballooned is not None:
            pages = (hi - lo + 1) >> 12
            step = max(1, pages // buckets)
            for b in range(0, pages, step):
                n = sum(1 for pfn in range((lo >> 12) + b, (lo >> 12) + min(b + step, pages), max(1, step // 16))
                        if pfn in ballooned)
                frac = n / max(1, len(range(0, min(step, pages - b), max(1, step // 16))))
                if frac:
                    ax.add_patch(_rect(x + w * b / pages, 0, w * step / pages, 1, "0.25", alpha=0.3 + 0.6 * frac))
        ax.text(x + w / 2, 0.5, name if name != "ram" else f"RAM {(hi - lo + 1) / MiB:.0f} MiB", ha="center",
                va="center", fontsize=7, rotation=0 if w > 1.5 else 90)
        ax.text(x, -0.12, f"{lo:#x}", fontsize=6, rotation=45, ha="right", va="top")
        x += w
    ax.text(x, -0.12, f"{last:#x}", fontsize=6, rotation=45, ha="right", va="top")
    ax.set_xlim(-0.3, x + 0.3)
    ax.set_ylim(-1.0, 1.4)
    ax.set_title("guest-physical memory" + (" (dark: ballooned pages)" if ballooned is not None else ""), fontsize=10)
    if path is not None:
        save(fig, path, {"regions": [[lo, hi, name] for lo, hi, name in parts]})
    return fig


def _rect(x: float, y: float, w: float, h: float, colour: str, *, alpha: float = 1.0, gid: str | None = None) -> Any:
    from matplotlib.patches import Rectangle

    r = Rectangle((x, y), w, h, facecolor=colour, edgecolor="black", lw=0.5, alpha=alpha)
    if gid:
        r.set_gid(gid)
    return r
