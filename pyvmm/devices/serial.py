"""A 16550A UART (COM1) complete enough for Linux's 8250 driver: registers, FIFO, interrupts, loopback."""

from __future__ import annotations

import collections
import threading
from enum import IntEnum, IntFlag
from typing import Callable

from ..irq import IrqLine


class UartReg(IntEnum):
    """Register offsets (DLAB selects the divisor latch at 0 and 1)."""

    RBR_THR_DLL = 0
    IER_DLM = 1
    IIR_FCR = 2
    LCR = 3
    MCR = 4
    LSR = 5
    MSR = 6
    SCR = 7


class IER(IntFlag):
    RDI = 0x01    # received data available
    THRI = 0x02   # transmitter holding register empty
    RLSI = 0x04   # receiver line status
    MSI = 0x08    # modem status


class IIR(IntEnum):
    NO_INT = 0x01
    MSI = 0x00
    THRI = 0x02
    RDI = 0x04
    RLSI = 0x06


class LCR(IntFlag):
    DLAB = 0x80


class MCR(IntFlag):
    DTR = 0x01
    RTS = 0x02
    OUT1 = 0x04
    OUT2 = 0x08
    LOOP = 0x10


class LSR(IntFlag):
    DR = 0x01
    OE = 0x02
    THRE = 0x20
    TEMT = 0x40


class MSR(IntFlag):
    DCTS = 0x01
    DDSR = 0x02
    TERI = 0x04
    DDCD = 0x08
    CTS = 0x10
    DSR = 0x20
    RI = 0x40
    DCD = 0x80


FIFO_SIZE = 64
IIR_FIFO_ENABLED = 0xC0


class Serial16550:
    """COM1.  Output is sent to ``sink`` byte by byte (as written); input arrives through ``feed``."""

    def __init__(self, irq: IrqLine, sink: Callable[[bytes], None]) -> None:
        self.irq = irq
        self.sink = sink
        self.lock = threading.Lock()
        self.rx: collections.deque[int] = collections.deque()
        self.ier = 0
        self.lcr = 0x03       # 8N1
        self.mcr = MCR.OUT2
        self.lsr = LSR.THRE | LSR.TEMT
        self.msr = MSR.DCD | MSR.DSR | MSR.CTS
        self.scr = 0
        self.dll = 0x0C       # 9600 baud
        self.dlm = 0
        self.fcr = 0
        self.thr_interrupt = False   # THRE interrupt pending (cleared by reading IIR or writing THR)
        self._level = False

    # --- input from the host ------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes typed by the user (or a test) into the guest's receive FIFO."""
        with self.lock:
            for b in data:
                if len(self.rx) >= FIFO_SIZE * 64:
                    self.lsr |= LSR.OE
                    break
                self.rx.append(b)
            self._update()

    # --- the register window ------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        with self.lock:
            return self._read(offset)

    def write(self, offset: int, size: int, value: int) -> None:
        with self.lock:
            self._write(offset, value & 0xFF)

    def _read(self, offset: int) -> int:
        dlab = self.lcr & LCR.DLAB
        if offset == UartReg.RBR_THR_DLL:
            if dlab:
                return self.dll
            value = self.rx.popleft() if self.rx else 0
            self._update()
            return value
        if offset == UartReg.IER_DLM:
            return self.dlm if dlab else self.ier
        if offset == UartReg.IIR_FCR:
            iir = self._iir()
            if iir == IIR.THRI:
                self.thr_interrupt = False   # reading IIR with THRI as the source clears it
                self._update()
            return iir | (IIR_FIFO_ENABLED if self.fcr & 1 else 0)
        if offset == UartReg.LCR:
            return self.lcr
        if offset == UartReg.MCR:
            return self.mcr
        if offset == UartReg.LSR:
            lsr = self.lsr | (LSR.DR if self.rx else 0)
            self.lsr &= ~LSR.OE
            return int(lsr)
        if offset == UartReg.MSR:
            if self.mcr & MCR.LOOP:
                # Loopback: the modem outputs feed the modem inputs (Linux's autoconfig tests this).
                m = self.mcr
                return ((MSR.CTS if m & MCR.RTS else 0) | (MSR.DSR if m & MCR.DTR else 0)
                        | (MSR.RI if m & MCR.OUT1 else 0) | (MSR.DCD if m & MCR.OUT2 else 0))
            return int(self.msr)
        if offset == UartReg.SCR:
            return self.scr
        return 0xFF

    def _write(self, offset: int, value: int) -> None:
        dlab = self.lcr & LCR.DLAB
        if offset == UartReg.RBR_THR_DLL:
            if dlab:
                self.dll = value
                return
            if self.mcr & MCR.LOOP:
                self.rx.append(value)
            else:
                self.sink(bytes((value,)))
            # The byte leaves at once: THR is empty again, so a THRE interrupt is due if enabled.
            self.thr_interrupt = True
            self._update()
        elif offset == UartReg.IER_DLM:
            if dlab:
                self.dlm = value
            else:
                enabling_thri = (value & IER.THRI) and not (self.ier & IER.THRI)
                self.ier = value & 0x0F
                if enabling_thri:
                    self.thr_interrupt = True
                self._update()
        elif offset == UartReg.IIR_FCR:
            self.fcr = value
            if value & 0x02:
                self.rx.clear()
            self._update()
        elif offset == UartReg.LCR:
            self.lcr = value
        elif offset == UartReg.MCR:
            self.mcr = value & 0x1F
        elif offset == UartReg.SCR:
            self.scr = value
        # LSR and MSR are read-only; writes are ignored as on the real part.

    def _iir(self) -> int:
        if (self.ier & IER.RLSI) and (self.lsr & LSR.OE):
            return IIR.RLSI
        if (self.ier & IER.RDI) and self.rx:
            return IIR.RDI
        if (self.ier & IER.THRI) and self.thr_interrupt:
            return IIR.THRI
        return IIR.NO_INT

    def _update(self) -> None:
        level = self._iir() != IIR.NO_INT
        if level != self._level:
            self._level = level
            self.irq.set_level(level)
