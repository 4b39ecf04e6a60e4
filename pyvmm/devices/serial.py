"""A 16550A UART (COM1) complete enough for Linux's 8250 driver: registers, FIFO, interrupts, loopback."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from enum import IntEnum, IntFlag

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
# The host keeps more than the 16550A's 64-byte FIFO so pasted text is not lost, but not without end:
# past this the byte is dropped and LSR.OE set, from the keyboard and from loopback alike.
RX_LIMIT = FIFO_SIZE * 64
IIR_FIFO_ENABLED = 0xC0

# Plain ints of the bits the access paths test: IntFlag arithmetic builds a new enum member per
# operation, which on the exit path costs more than the rest of the register access.
_DLAB = int(LCR.DLAB)
_THRE_TEMT = int(LSR.THRE | LSR.TEMT)
_DR, _OE = int(LSR.DR), int(LSR.OE)
_LOOP, _RTS, _DTR, _OUT1, _OUT2 = int(MCR.LOOP), int(MCR.RTS), int(MCR.DTR), int(MCR.OUT1), int(MCR.OUT2)
_IER_RDI, _IER_THRI, _IER_RLSI = int(IER.RDI), int(IER.THRI), int(IER.RLSI)
_IIR_NO_INT, _IIR_THRI, _IIR_RDI, _IIR_RLSI = int(IIR.NO_INT), int(IIR.THRI), int(IIR.RDI), int(IIR.RLSI)


class Serial16550:
    """COM1.  Output is sent to ``sink`` byte by byte (as written); input arrives through ``feed``."""

    def __init__(self, irq: IrqLine, sink: Callable[[bytes], None]) -> None:
        self.irq = irq
        self.sink = sink
        self.lock = threading.Lock()
        self.rx: collections.deque[int] = collections.deque()
        self.received = 0               # bytes fed in (typed) since power-on
        self._level = False
        self.reset()

    def reset(self) -> None:
        """The power-on register values (a machine reset); bytes typed but not yet read are kept."""
        self.ier = 0
        self.lcr = 0x03       # 8N1
        self.mcr = _OUT2
        self.lsr = _THRE_TEMT
        self.msr = int(MSR.DCD | MSR.DSR | MSR.CTS)
        self.scr = 0
        self.dll = 0x0C       # 9600 baud
        self.dlm = 0
        self.fcr = 0
        self.thr_interrupt = False   # THRE interrupt pending (cleared by reading IIR or writing THR)
        if self._level:
            self._level = False
            self.irq.set_level(False)

    # --- input from the host ------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes typed by the user (or a test) into the guest's receive FIFO."""
        with self.lock:
            self.received += len(data)
            for b in data:
                if len(self.rx) >= RX_LIMIT:
                    self.lsr |= _OE
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
        dlab = self.lcr & _DLAB
        if offset == 0:       # RBR (or DLL)
            if dlab:
                return self.dll
            value = self.rx.popleft() if self.rx else 0
            self._update()
            return value
        if offset == 1:       # IER (or DLM)
            return self.dlm if dlab else self.ier
        if offset == 2:       # IIR
            iir = self._iir()
            if iir == _IIR_THRI:
                self.thr_interrupt = False   # reading IIR with THRI as the source clears it
                self._update()
            return iir | (IIR_FIFO_ENABLED if self.fcr & 1 else 0)
        if offset == 3:
            return self.lcr
        if offset == 4:
            return self.mcr
        if offset == 5:       # LSR
            lsr = self.lsr | (_DR if self.rx else 0)
            self.lsr &= ~_OE
            return lsr
        if offset == 6:       # MSR
            if self.mcr & _LOOP:
                # Loopback: the modem outputs feed the modem inputs (Linux's autoconfig tests this).
                m = self.mcr
                return int((MSR.CTS if m & _RTS else 0) | (MSR.DSR if m & _DTR else 0)
                           | (MSR.RI if m & _OUT1 else 0) | (MSR.DCD if m & _OUT2 else 0))
            return self.msr
        if offset == 7:
            return self.scr
        return 0xFF

    def _write(self, offset: int, value: int) -> None:
        dlab = self.lcr & _DLAB
        if offset == 0:       # THR (or DLL)
            if dlab:
                self.dll = value
                return
            if self.mcr & _LOOP:
                # The guest fills its own receive FIFO here: bounded, or it could grow host memory.
                if len(self.rx) >= RX_LIMIT:
                    self.lsr |= _OE
                else:
                    self.rx.append(value)
            else:
                self.sink(bytes((value,)))
            # The byte leaves at once: THR is empty again, so a THRE interrupt is due if enabled.
            self.thr_interrupt = True
            if self.ier:          # with every interrupt disabled the line is low and stays low
                self._update()
        elif offset == 1:
            if dlab:
                self.dlm = value
            else:
                enabling_thri = (value & _IER_THRI) and not (self.ier & _IER_THRI)
                self.ier = value & 0x0F
                if enabling_thri:
                    self.thr_interrupt = True
                self._update()
        elif offset == 2:     # FCR
            self.fcr = value
            if value & 0x02:
                self.rx.clear()
            self._update()
        elif offset == 3:
            self.lcr = value
        elif offset == 4:
            self.mcr = value & 0x1F
        elif offset == 7:
            self.scr = value
        # LSR and MSR are read-only; writes are ignored as on the real part.

    def _iir(self) -> int:
        ier = self.ier
        if (ier & _IER_RLSI) and (self.lsr & _OE):
            return _IIR_RLSI
        if (ier & _IER_RDI) and self.rx:
            return _IIR_RDI
        if (ier & _IER_THRI) and self.thr_interrupt:
            return _IIR_THRI
        return _IIR_NO_INT

    def _update(self) -> None:
        level = self._iir() != _IIR_NO_INT
        if level != self._level:
            self._level = level
            self.irq.set_level(level)
