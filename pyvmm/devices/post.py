"""Port 0x80, the PC's POST code port: the boot ROM's stage codes, recorded and shown in the boot trace."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..loader.firmware import BOOT_STAGES, is_boot_error, stage_name
from ..trace import Tracer

# After its last stage the ROM has jumped to the guest, which owns the port from then on (Linux writes
# it for I/O delays).
LAST_STAGE = max(c for c in BOOT_STAGES if not is_boot_error(c))


class PostPort:
    """Records each stage code the firmware writes and, with ``--trace boot``, prints the CPU state then.

    ``cpu_state()`` gives the writing vCPU's CR0, CS and RIP (a dict for the trace, or None); a stage
    code in the ROM's error range calls ``on_error(why)``, which stops the guest with a crash dump
    (the ROM halts with interrupts off, which the in-kernel LAPIC would wait on forever).
    """

    def __init__(self, tracer: Tracer, *, active: bool, cpu_state: Callable[[], dict[str, Any] | None],
                 on_error: Callable[[str], None]) -> None:
        self.tracer = tracer
        self.active = active
        self.cpu_state = cpu_state
        self.on_error = on_error
        self.stages: list[tuple[int, str]] = []

    def read(self, offset: int, size: int) -> int:
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        if not self.active:
            return
        code = value & 0xFF
        name = stage_name(code)
        self.stages.append((code, name))
        if self.tracer.boot:
            fields: dict[str, Any] = {"stage": name, "code": code}
            text = f"firmware stage {code:#04x} {name}"
            s = self.cpu_state()
            if s is not None:
                mode = "protected" if s["cr0"] & 1 else "real"
                text += (f": CR0={s['cr0']:#010x} (PE={s['cr0'] & 1}, {mode} mode) CS={s['cs']:#06x} "
                         f"base={s['cs_base']:#x} EIP={s['rip']:#x} GDT={s['gdt_base']:#x}/{s['gdt_limit']:#x}")
                fields.update({k: s[k] for k in ("cr0", "cs", "cs_base", "rip", "gdt_base")})
            self.tracer.emit("boot", text, **fields)
        if is_boot_error(code):
            self.on_error(f"firmware gave up: {name}")
        elif code == LAST_STAGE:
            self.active = False

    def reset(self) -> None:
        """A machine reset runs the ROM again."""
        self.active = True
