"""`pyvmm top`: a running VM's counters over QMP (x-pyvmm-query-counters), as rates, live or once.

Every figure comes from counts the VMM keeps on its exit path (the vCPU loop's count per exit reason,
the transports' count per QueueNotify, the interrupt lines' count, and, from top's first look on, the
buses' count per register or port): top reads them twice and divides by the time between.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from .units import format_size


def rates(before: dict, after: dict) -> dict:
    """The counters of `after`, with per-second rates against `before` beside each count."""
    dt = max(after["time"] - before["time"], 1e-6)

    def per_s(a: int, b: int) -> float:
        return round((a - b) / dt, 1)

    def counted(a: int, b: int) -> dict:
        return {"count": a, "in-interval": a - b, "per-s": per_s(a, b)}

    out: dict[str, Any] = {"interval": round(dt, 3), "status": after["status"], "vcpus": [], "devices": [],
                           "irqs": [], "virtio": []}
    old_cpus = {v["cpu-index"]: v for v in before["vcpus"]}
    for v in after["vcpus"]:
        o = old_cpus.get(v["cpu-index"], {"exits": 0, "by-reason": {}})
        out["vcpus"].append({
            "cpu-index": v["cpu-index"], "state": v["state"], "exits": v["exits"],
            "exits-per-s": per_s(v["exits"], o["exits"]),
            "by-reason": {r: counted(n, o["by-reason"].get(r, 0)) for r, n in v["by-reason"].items()}})
    for kind in ("pio", "mmio"):
        old = {d["name"]: d for d in before[kind]}
        for d in after[kind]:
            o = old.get(d["name"], {"accesses": 0, "by-register": {}})
            out["devices"].append({
                "bus": kind, "name": d["name"], "base": d["base"], "accesses": d["accesses"],
                "in-interval": d["accesses"] - o["accesses"], "per-s": per_s(d["accesses"], o["accesses"]),
                "by-register": {r: counted(n, o["by-register"].get(r, 0)) for r, n in d["by-register"].items()}})
    out["unhandled"] = {k: counted(n, before["unhandled"].get(k, 0)) for k, n in after["unhandled"].items()}
    old_irq = {(i["gsi"], i["device"]): i["raised"] for i in before["irqs"]}
    for i in after["irqs"]:
        out["irqs"].append({**i, "per-s": per_s(i["raised"], old_irq.get((i["gsi"], i["device"]), 0))})
    old_v = {d["name"]: d for d in before["virtio"]}
    for d in after["virtio"]:
        o = old_v.get(d["name"], {"notifications": {}})
        entry = {"name": d["name"], "notifications": {
            q: counted(n, o["notifications"].get(q, 0)) for q, n in d["notifications"].items()}}
        if "balloon" in d:
            entry["balloon"] = d["balloon"]
        out["virtio"].append(entry)
    return out


def render(view: dict) -> Any:
    """A rich renderable of one view (rates())."""
    from rich.console import Group
    from rich.table import Table

    cpus = Table(title=f"vCPUs ({view['status']}; rates over {view['interval']:.1f} s)", expand=False)
    for h in ("vCPU", "state", "exits", "exits/s", "by reason /s"):
        cpus.add_column(h, justify="right" if h.startswith("exits") else "left")
    for v in view["vcpus"]:
        why = ", ".join(f"{r} {x['per-s']:,.0f}" for r, x in sorted(v["by-reason"].items(),
                                                                      key=lambda kv: -kv[1]["per-s"]))
        cpus.add_row(str(v["cpu-index"]), v["state"], f"{v['exits']:,}", f"{v['exits-per-s']:,.0f}", why)
    devs = Table(title="exits by device and register")
    for h in ("bus", "device", "accesses", "/s", "busiest registers /s"):
        devs.add_column(h, justify="right" if h in ("accesses", "/s") else "left")
    for d in view["devices"]:
        if not d["accesses"]:
            continue
        busy = sorted(d["by-register"].items(), key=lambda kv: -kv[1]["per-s"])[:4]
        devs.add_row(d["bus"], d["name"], f"{d['accesses']:,}", f"{d['per-s']:,.0f}",
                     ", ".join(f"{r} {x['per-s']:,.0f}" for r, x in busy if x["per-s"]))
    irqs = Table(title="interrupts")
    for h in ("GSI", "device", "raised", "/s"):
        irqs.add_column(h, justify="left" if h == "device" else "right")
    for i in view["irqs"]:
        irqs.add_row(str(i["gsi"]), i["device"], f"{i['raised']:,}", f"{i['per-s']:,.0f}")
    virtio = Table(title="virtio: notifications per queue, balloons")
    for h in ("device", "queue notifications /s (total)", "balloon target / actual / host RSS"):
        virtio.add_column(h)
    for d in view["virtio"]:
        qs = ", ".join(f"{q} {x['per-s']:,.0f} ({x['count']:,})" for q, x in d["notifications"].items())
        b = d.get("balloon")
        bal = (f"{format_size(b['target'])} / {format_size(b['actual'])} / "
               f"{format_size(b['guest-ram-rss']) if b['guest-ram-rss'] is not None else '?'}") if b else ""
        virtio.add_row(d["name"], qs, bal)
    return Group(cpus, devs, irqs, virtio)


def top_main(args: Any) -> int:
    from .cli_control import QmpConnection

    interval = max(0.1, float(args.interval))
    with QmpConnection(args.qmp, timeout=args.timeout) as q:
        before = q.execute("x-pyvmm-query-counters")
        if args.once:
            time.sleep(interval)
            view = rates(before, q.execute("x-pyvmm-query-counters"))
            if args.json:
                sys.stdout.write(json.dumps(view, indent=1) + "\n")
            else:
                from rich.console import Console

                Console().print(render(view))
            return 0
        from rich.live import Live

        from .errors import PyvmmError

        try:
            with Live(render(rates(before, before)), refresh_per_second=4, screen=False) as live:
                while True:
                    time.sleep(interval)
                    try:
                        after = q.execute("x-pyvmm-query-counters")
                    except PyvmmError as e:
                        live.stop()
                        sys.stderr.write(f"pyvmm: top: {e} (the VM has gone)\n")
                        return 0
                    live.update(render(rates(before, after)))
                    before = after
        except KeyboardInterrupt:
            return 0


def add_top_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("top", help="a running VM's exits, interrupts and notifications per second",
                              description="Live view over QMP of a VM run with --qmp: exits per second by "
                              "reason and by device/register, interrupts per line, QueueNotify per queue, "
                              "each balloon's target, actual and host RSS, and each vCPU's state.")
    p.add_argument("--qmp", required=True, metavar="ADDR", help="the VM's QMP socket (as given to pyvmm run --qmp)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="seconds between samples (default 1)")
    p.add_argument("--once", action="store_true", help="one sample over one interval, then exit")
    p.add_argument("--json", action="store_true", help="with --once: JSON for scripts instead of tables")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for QMP answers")
    p.set_defaults(func=top_main)
