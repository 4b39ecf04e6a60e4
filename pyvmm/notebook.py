"""pyvmm in a notebook (Jupyter, IPython): the guest's console in the cell, HTML views of the machine,
the balloon, a virtqueue and the trace, and machines that a re-run cell leaves behind stopped.

Nothing here runs outside IPython except the HTML helpers, which are plain strings.
"""

from __future__ import annotations

import codecs
import html
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any

# --- the console in the caller's output ---------------------------------------------------------------


def text_sink(write: Callable[[str], Any], flush: Callable[[], Any] | None = None) -> Callable[[bytes], None]:
    """A console sink that decodes the guest's bytes (UTF-8, split sequences kept for the next write),
    turns CR LF into LF and hands the text to write: a notebook cell's stdout, or the caller's callable."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    lock = threading.Lock()

    def sink(data: bytes) -> None:
        with lock:
            text = decoder.decode(data).replace("\r\n", "\n").replace("\r", "")
        if text:
            try:
                write(text)
                # A line at a time: a notebook's stream flushes through its I/O thread, and the vCPU
                # thread (which writes the console byte by byte) must not wait for that per byte.
                if flush is not None and "\n" in text:
                    flush()
            except Exception:   # a closed cell stream or a failing callback must not stop the guest
                pass

    return sink


def capture_sink() -> Callable[[bytes], None]:
    """console="capture": the guest's output goes to this thread's sys.stdout as it is when the machine
    is built (in a notebook: the cell's output, streamed as it comes)."""
    out = sys.stdout
    return text_sink(out.write, getattr(out, "flush", None))


# --- HTML views -------------------------------------------------------------------------------------


def table_html(rows: Iterable[tuple[Any, Any]], title: str = "") -> str:
    """Two-column key/value table."""
    body = "".join(f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
                   f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>" for k, v in rows)
    cap = f"<caption style='text-align:left'><b>{html.escape(title)}</b></caption>" if title else ""
    return f"<table>{cap}{body}</table>"


def grid_html(header: list[str], rows: Iterable[Iterable[Any]], title: str = "") -> str:
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(c))}</td>" for c in r)
                   + "</tr>" for r in rows)
    cap = f"<caption style='text-align:left'><b>{html.escape(title)}</b></caption>" if title else ""
    return f"<table>{cap}<tr>{head}</tr>{body}</table>"


class TraceView:
    """The trace records a machine kept (Machine.trace()): a list of dicts, shown as a table."""

    def __init__(self, records: list[dict]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def filter(self, **match: Any) -> TraceView:
        """Records whose fields equal the given values: trace.filter(reg="QueueNotify")."""
        return TraceView([r for r in self.records if all(r.get(k) == v for k, v in match.items())])

    def lines(self) -> list[str]:
        from .trace import format_access

        out = []
        for r in self.records:
            if "dev" in r:
                out.append(f"{r['t']:11.6f} {format_access(r['dev'], r['dir'], r['reg'], r['value'], r['text'])}")
            else:
                out.append(f"{r['t']:11.6f} {r['cat']}: {r['text']}")
        return out

    def __repr__(self) -> str:
        shown = self.lines()[-40:]
        more = f"... {len(self.records) - 40} earlier records\n" if len(self.records) > 40 else ""
        return more + "\n".join(shown)

    def _repr_html_(self, limit: int = 200) -> str:
        rows = []
        for r in self.records[-limit:]:
            rows.append((f"{r['t']:.6f}", r.get("vcpu", ""), r.get("dev", r.get("cat", "")),
                         {"read": "->", "write": "<-", "event": "!!"}.get(r.get("dir", ""), ""),
                         r.get("reg", ""), r.get("value", ""), r.get("text", "")))
        title = f"trace: {len(self.records)} records" + (f" (the last {limit})" if len(self.records) > limit else "")
        return grid_html(["t", "vCPU", "device", "", "register", "value", "meaning"], rows, title)


# --- machines a re-run cell leaves behind --------------------------------------------------------------

_by_cell: dict[str, list[weakref.ref]] = {}
_current_cell: list[str] = []
_hooked: list[bool] = [False]


def _cell_keys(info: Any) -> list[str]:
    """A cell is known by its id (JupyterLab sends one) and by its text (nbclient, the console)."""
    keys = []
    cell_id = getattr(info, "cell_id", None)
    if cell_id:
        keys.append(f"id:{cell_id}")
    raw = getattr(info, "raw_cell", None)
    if raw is not None:
        keys.append(f"text:{hash(raw.rstrip())}")
    return keys


def _pre_run_cell(info: Any) -> None:
    """Before a cell runs: the machines it made the last time it ran are closed."""
    keys = _cell_keys(info)
    _current_cell[:] = keys
    refs = {id(r): r for key in keys for r in _by_cell.pop(key, [])}
    for ref in refs.values():
        m = ref()
        if m is not None and not m.stopped.is_set():
            sys.stderr.write("pyvmm: this cell ran again: the machine it started before is stopped\n")
            m.close()
        elif m is not None:
            m.close()


def _ipython() -> Any:
    mod = sys.modules.get("IPython")
    if mod is None:
        return None
    try:
        return mod.get_ipython()
    except Exception:
        return None


def adopt(machine: Any) -> None:
    """Called for every new Machine: in IPython, remember which cell made it."""
    ip = _ipython()
    if ip is None:
        return
    if not _hooked[0]:
        ip.events.register("pre_run_cell", _pre_run_cell)
        _hooked[0] = True
        # This cell is running already (the hook missed it): its key comes from IPython's history,
        # which holds the cell's raw text before it runs.  (A front end that sends cell ids, as
        # JupyterLab does, is keyed by id from the next cell on.)
        try:
            raw = ip.history_manager.input_hist_raw[-1]
        except (AttributeError, IndexError):
            raw = None
        _current_cell[:] = [] if raw is None else [f"text:{hash(raw.rstrip())}"]
    for key in _current_cell:
        _by_cell.setdefault(key, []).append(weakref.ref(machine))
