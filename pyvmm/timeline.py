"""The balloon over time: target, actual, host RSS of guest RAM and the guest's free memory, sampled.

``vm.balloon.timeline()`` starts a sampler on a thread (every ``interval`` seconds, plus one sample at
every BALLOON_CHANGE the driver causes); ``.stop()`` (or the end of a ``with`` block) ends it, and
``.plot()`` draws the samples with matplotlib (pyvmm[plot]).  The demo's ``--plot FILE`` is this.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

MiB = 1 << 20


@dataclass(frozen=True)
class Sample:
    t: float                  # seconds since the timeline started
    target: int               # bytes: the logical guest size the host asks for
    actual: int               # bytes: the logical guest size the driver reports
    rss: int | None           # bytes of guest RAM resident on the host (None: not measurable)
    free: int | None          # bytes the guest says are free (its last memory statistics), if any

    @property
    def phase(self) -> str:
        """"inflate" while the guest is bigger than the target, "deflate" while smaller, else "steady"."""
        return "inflate" if self.actual > self.target else "deflate" if self.actual < self.target else "steady"


class BalloonTimeline:
    """Samples of one balloon (a VirtioBalloon, or anything with info() -> BalloonInfo)."""

    def __init__(self, balloon: Any, interval: float = 0.25, *, start: bool = True) -> None:
        if not interval > 0:
            raise ValueError(f"timeline interval {interval!r} must be > 0 seconds")
        self.balloon = balloon
        self.interval = float(interval)
        self.samples: list[Sample] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    # --- recording --------------------------------------------------------------------------------------

    def sample(self) -> Sample:
        """Take one sample now (also what the thread does every interval)."""
        info = self.balloon.info()
        stats = info.stats or {}
        free = stats.get("memfree")
        s = Sample(round(time.monotonic() - self.t0, 3), info.target, info.actual, info.guest_ram_rss,
                   None if free is None else int(free))
        with self._lock:
            self.samples.append(s)
        return s

    def start(self) -> BalloonTimeline:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="balloon-timeline", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:       # the machine was closed under us: the timeline simply ends
                return
            self._stop.wait(self.interval)

    def stop(self) -> BalloonTimeline:
        """End the sampling (one last sample first); the samples stay."""
        if self._thread is not None and not self._stop.is_set():
            self._stop.set()
            self._thread.join(5)
            try:
                self.sample()
            except Exception:
                pass
        return self

    def __enter__(self) -> BalloonTimeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- reading ----------------------------------------------------------------------------------------

    def phases(self) -> list[tuple[str, float, float]]:
        """(phase, start, end) runs of inflate and deflate (steady runs left out)."""
        out: list[tuple[str, float, float]] = []
        with self._lock:
            samples = list(self.samples)
        for s in samples:
            if out and out[-1][0] == s.phase:
                out[-1] = (s.phase, out[-1][1], s.t)
            else:
                if out:
                    out[-1] = (out[-1][0], out[-1][1], s.t)
                out.append((s.phase, s.t, s.t))
        return [p for p in out if p[0] != "steady"]

    def to_dict(self) -> dict:
        with self._lock:
            samples = [asdict(s) for s in self.samples]
        return {"interval": self.interval, "samples": samples,
                "phases": [list(p) for p in self.phases()]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def plot(self, path: str | Any = None, *, title: str = "virtio balloon") -> Any:
        """A matplotlib Figure of the samples (written to path, PNG or SVG by its suffix, if given).
        The file carries the samples it was drawn from as JSON in its metadata ("pyvmm-samples" in a
        PNG, the Description of an SVG)."""
        from .plot import plot_timeline

        return plot_timeline(self, path, title=title)

    def _repr_html_(self) -> str:
        from .plot import figure_html

        return figure_html(self.plot())

    def __repr__(self) -> str:
        n = len(self.samples)
        last = self.samples[-1] if n else None
        tail = (f", last: target {last.target // MiB} MiB, actual {last.actual // MiB} MiB" if last else "")
        return f"<BalloonTimeline {n} samples every {self.interval} s{tail}>"
