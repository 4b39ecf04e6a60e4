"""BalloonInfo: the host's snapshot of the balloon (query-balloon, `info balloon`, a notebook's table)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BalloonInfo:
    """A snapshot of the balloon for query-balloon / ``pyvmm balloon info``."""

    ram_size: int
    target: int                   # logical guest size the host asks for, bytes (QEMU's meaning)
    actual: int                   # logical guest size the driver reports, bytes
    num_pages: int                # config num_pages: 4 KiB pages the host wants ballooned
    actual_pages: int             # config actual: pages the driver says it ballooned
    ballooned_pages: int          # pages the host holds as ballooned (its own bitmap)
    discarded_bytes: int          # bytes given back to the host through discard, cumulative
    reported_bytes: int           # of which by free page reporting
    guest_ram_rss: int | None     # bytes of guest RAM resident on the host (mmap-backed RAM only)
    stats: dict[str, int] = field(default_factory=dict)
    stats_age: float | None = None  # seconds since the last stats arrived
    features: tuple[str, ...] = ()
    bad_pfns: int = 0
    duplicate_pfns: int = 0
    never_inflated: int = 0
    unrequested_deflate_pages: int = 0   # deflated below the target (deflate on OOM)
    guest_errors: int = 0
    agree: bool = True            # host's ballooned set size == driver's actual

    def rows(self) -> list[tuple[str, str]]:
        """(what, value) for a table: sizes in MiB, the stats by name."""
        def mib(n: int | None) -> str:
            return "?" if n is None else f"{n / (1 << 20):.1f} MiB"

        out = [("target", mib(self.target)), ("actual", mib(self.actual)), ("RAM", mib(self.ram_size)),
               ("pages wanted / reported / held", f"{self.num_pages} / {self.actual_pages} / {self.ballooned_pages}"),
               ("host RSS of guest RAM", mib(self.guest_ram_rss)),
               ("given back (discarded)", mib(self.discarded_bytes)),
               ("features", ", ".join(self.features) or "-"), ("host and guest agree", str(self.agree))]
        out += [(f"stats: {k}", mib(v) if "mem" in k or k in ("avail", "caches") else str(v))
                for k, v in self.stats.items()]
        if self.guest_errors or self.bad_pfns:
            out.append(("guest errors / bad PFNs", f"{self.guest_errors} / {self.bad_pfns}"))
        return out

    def __str__(self) -> str:
        rows = self.rows()
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def _repr_html_(self) -> str:
        from ..notebook import table_html

        return table_html(self.rows(), "virtio balloon")
