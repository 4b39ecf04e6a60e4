"""The interrupt controllers as a person reads them: the 8259A pair and the IOAPIC from KVM_GET_IRQCHIP,
a local APIC from KVM_GET_LAPIC (the monitor's `info pic` and `info lapic`, in QEMU's layout).

Register offsets and bit names are the SDM's (volume 3, "Advanced Programmable Interrupt
Controller"), spelled as Linux's apicdef.h spells them.
"""

from __future__ import annotations

import enum


class ApicReg(enum.IntEnum):
    APIC_ID = 0x20
    APIC_LVR = 0x30
    APIC_TASKPRI = 0x80
    APIC_ARBPRI = 0x90
    APIC_PROCPRI = 0xA0
    APIC_LDR = 0xD0
    APIC_DFR = 0xE0
    APIC_SPIV = 0xF0
    APIC_ISR = 0x100
    APIC_TMR = 0x180
    APIC_IRR = 0x200
    APIC_ESR = 0x280
    APIC_LVTCMCI = 0x2F0
    APIC_ICR = 0x300
    APIC_ICR2 = 0x310
    APIC_LVTT = 0x320
    APIC_LVTTHMR = 0x330
    APIC_LVTPC = 0x340
    APIC_LVT0 = 0x350
    APIC_LVT1 = 0x360
    APIC_LVTERR = 0x370
    APIC_TMICT = 0x380
    APIC_TMCCT = 0x390
    APIC_TDCR = 0x3E0


APIC_LVT_MASKED = 1 << 16
APIC_LVT_LEVEL_TRIGGER = 1 << 15
APIC_LVT_REMOTE_IRR = 1 << 14
APIC_INPUT_POLARITY = 1 << 13
APIC_SEND_PENDING = 1 << 12
APIC_SPIV_APIC_ENABLED = 1 << 8
APIC_SPIV_FOCUS_DISABLED = 1 << 9
_DELIVERY = {0: "Fixed", 1: "LowPri", 2: "SMI", 4: "NMI", 5: "INIT", 6: "SIPI", 7: "ExtINT"}
_TIMER_MODE = {0: "one-shot", 1: "periodic", 2: "tsc-deadline", 3: "reserved"}
_SHORTHAND = ("no-shorthand", "self", "all-self", "all")


def lapic_reg(regs: bytes, reg: int) -> int:
    return int.from_bytes(regs[reg:reg + 4], "little")


def _bitmap(regs: bytes, base: int) -> list[int]:
    """The vectors set in a 256-bit ISR/TMR/IRR (eight registers 16 bytes apart)."""
    out = []
    for i in range(8):
        word = lapic_reg(regs, base + i * 0x10)
        out += [i * 32 + b for b in range(32) if word >> b & 1]
    return out


def _lvt(name: str, value: int, timer: bool = False) -> str:
    pol = "active-lo" if value & APIC_INPUT_POLARITY else "active-hi"
    trig = "level" if value & APIC_LVT_LEVEL_TRIGGER else "edge "
    masked = " masked" if value & APIC_LVT_MASKED else "       "
    irr = " IRR" if value & APIC_LVT_REMOTE_IRR else "    "
    pending = " pending" if value & APIC_SEND_PENDING else "        "
    mode = f" {_TIMER_MODE[(value >> 17) & 3]:<12}" if timer else " " * 13
    delivery = _DELIVERY.get((value >> 8) & 7, "reserved")
    vec = f" (vec {value & 0xFF})" if delivery in ("Fixed", "LowPri", "ExtINT") else ""
    return f"{name:<8} 0x{value:08x} {pol} {trig}{masked}{irr}{pending}{mode} {delivery}{vec}"


def format_lapic(cpu: int, regs: bytes, apic_base: int | None = None) -> str:
    r = lambda reg: lapic_reg(regs, reg)  # noqa: E731
    out = [f"dumping local APIC state for CPU {cpu}", ""]
    if apic_base is not None:
        enabled = "enabled" if apic_base & (1 << 11) else "disabled (IA32_APIC_BASE.EN clear)"
        mode = "x2APIC" if apic_base & (1 << 10) else "xAPIC"
        out.append(f"APIC_BASE 0x{apic_base:016x} {mode}, {enabled}, {'BSP' if apic_base & (1 << 8) else 'AP'}")
    out.append(f"ID       0x{r(ApicReg.APIC_ID):08x} (APIC ID {r(ApicReg.APIC_ID) >> 24})   "
               f"version 0x{r(ApicReg.APIC_LVR) & 0xFF:02x}, {(r(ApicReg.APIC_LVR) >> 16 & 0xFF) + 1} LVT entries")
    for name, reg in (("LVT0", ApicReg.APIC_LVT0), ("LVT1", ApicReg.APIC_LVT1), ("LVTPC", ApicReg.APIC_LVTPC),
                      ("LVTERR", ApicReg.APIC_LVTERR), ("LVTTHMR", ApicReg.APIC_LVTTHMR)):
        out.append(_lvt(name, r(reg)))
    out.append(_lvt("LVTT", r(ApicReg.APIC_LVTT), timer=True))
    dcr = r(ApicReg.APIC_TDCR)
    shift = ((dcr & 3) | ((dcr >> 1) & 4)) + 1
    divide = 1 if shift == 8 else 1 << shift
    out.append(f"Timer    DCR=0x{dcr:x} (divide by {divide}) initial_count = {r(ApicReg.APIC_TMICT)} "
               f"current_count = {r(ApicReg.APIC_TMCCT)}")
    spiv = r(ApicReg.APIC_SPIV)
    out.append(f"SPIV     0x{spiv:08x} APIC {'enabled' if spiv & APIC_SPIV_APIC_ENABLED else 'disabled'}, "
               f"focus={'off' if spiv & APIC_SPIV_FOCUS_DISABLED else 'on'}, spurious vec {spiv & 0xFF}")
    icr, icr2 = r(ApicReg.APIC_ICR), r(ApicReg.APIC_ICR2)
    out.append(f"ICR      0x{icr:08x} {'logical' if icr & (1 << 11) else 'physical'} "
               f"{'level' if icr & (1 << 15) else 'edge'} {'assert' if icr & (1 << 14) else 'de-assert'} "
               f"{_SHORTHAND[(icr >> 18) & 3]} {_DELIVERY.get((icr >> 8) & 7, 'reserved')} (vec {icr & 0xFF})")
    out.append(f"ICR2     0x{icr2:08x} destination {icr2 >> 24}")
    out.append(f"ESR      0x{r(ApicReg.APIC_ESR):08x}")
    for name, reg in (("ISR", ApicReg.APIC_ISR), ("TMR", ApicReg.APIC_TMR), ("IRR", ApicReg.APIC_IRR)):
        vecs = _bitmap(regs, reg)
        out.append(f"{name:<8} {' '.join(map(str, vecs)) if vecs else '(none)'}")
    out.append("")
    out.append(f"APR 0x{r(ApicReg.APIC_ARBPRI) & 0xFF:02x} TPR 0x{r(ApicReg.APIC_TASKPRI) & 0xFF:02x} "
               f"DFR 0x{r(ApicReg.APIC_DFR) >> 28:02x} LDR 0x{r(ApicReg.APIC_LDR) >> 24:02x} "
               f"PPR 0x{r(ApicReg.APIC_PROCPRI) & 0xFF:02x}")
    return "\n".join(out) + "\n"


def format_pic(name: str, pic) -> str:
    """One 8259A (a kvm_pic_state)."""
    return (f"{name}: irr={pic.irr:02x} imr={pic.imr:02x} isr={pic.isr:02x} hprio={pic.priority_add} "
            f"irq_base={pic.irq_base:02x} rr_sel={pic.read_reg_select} elcr={pic.elcr:02x} "
            f"fnm={pic.special_fully_nested_mode}")


_IOAPIC_DELIVERY = {0: "fixed", 1: "lowest", 2: "SMI", 4: "NMI", 5: "INIT", 7: "ExtINT"}


def format_ioapic(ioapic) -> str:
    """The IOAPIC (a kvm_ioapic_state): its redirection table, one pin a line."""
    out = [f"ioapic0: ver=0x11 id=0x{ioapic.id:02x} sel=0x{ioapic.ioregsel:02x} base=0x{ioapic.base_address:x}"]
    remote = []
    for pin, entry in enumerate(ioapic.redirtbl):
        entry = int(entry)
        if entry >> 14 & 1:
            remote.append(pin)
        out.append(f"  pin {pin:<2} 0x{entry:016x} dest={entry >> 56} vec={entry & 0xFF:<3} "
                   f"{'active-lo' if entry >> 13 & 1 else 'active-hi'} "
                   f"{'level' if entry >> 15 & 1 else 'edge '} {'masked' if entry >> 16 & 1 else '      '} "
                   f"{_IOAPIC_DELIVERY.get(entry >> 8 & 7, 'reserved'):<6} "
                   f"{'logical' if entry >> 11 & 1 else 'physical'}")
    irr = [p for p in range(24) if ioapic.irr >> p & 1]
    out.append(f"  IRR        {' '.join(map(str, irr)) or '(none)'}")
    out.append(f"  Remote IRR {' '.join(map(str, remote)) or '(none)'}")
    return "\n".join(out) + "\n"
