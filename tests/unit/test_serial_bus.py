"""The 16550A as Linux's 8250 driver probes and uses it."""

import pytest

from pyvmm.devices.serial import IER, IIR, LCR, LSR, MCR, Serial16550, UartReg
from pyvmm.irq import RecordingIrqLine


@pytest.fixture
def uart():
    out = bytearray()
    irq = RecordingIrqLine()
    u = Serial16550(irq, out.extend)
    return u, out, irq


def test_transmit(uart):
    u, out, _ = uart
    for b in b"hi\n":
        u.write(UartReg.RBR_THR_DLL, 1, b)
    assert bytes(out) == b"hi\n"
    assert u.read(UartReg.LSR, 1) & (LSR.THRE | LSR.TEMT) == LSR.THRE | LSR.TEMT


def test_divisor_latch_and_scratch(uart):
    u, out, _ = uart
    u.write(UartReg.LCR, 1, LCR.DLAB | 3)
    u.write(UartReg.RBR_THR_DLL, 1, 0x01)     # 115200 baud
    u.write(UartReg.IER_DLM, 1, 0x00)
    assert (u.read(0, 1), u.read(1, 1)) == (1, 0)
    u.write(UartReg.LCR, 1, 3)
    assert out == b""                         # divisor writes are not output
    u.write(UartReg.SCR, 1, 0xA5)
    assert u.read(UartReg.SCR, 1) == 0xA5


def test_loopback_as_linux_autoconfig_tests_it(uart):
    u, out, _ = uart
    u.write(UartReg.MCR, 1, MCR.LOOP | 0x0A)
    assert u.read(UartReg.MSR, 1) & 0xF0 == 0x90
    u.write(UartReg.RBR_THR_DLL, 1, ord("x"))
    assert out == b"" and u.read(UartReg.LSR, 1) & LSR.DR
    assert u.read(UartReg.RBR_THR_DLL, 1) == ord("x")


def test_loopback_receive_is_bounded_with_overrun(uart):
    from pyvmm.devices.serial import RX_LIMIT

    u, out, _ = uart
    u.write(UartReg.IER_DLM, 1, IER.RLSI)
    u.write(UartReg.MCR, 1, MCR.LOOP)
    for i in range(RX_LIMIT + 1000):          # a guest writing THR in loopback and never reading RBR
        u.write(UartReg.RBR_THR_DLL, 1, i & 0xFF)
    assert len(u.rx) == RX_LIMIT and out == b""
    assert u.read(UartReg.IIR_FCR, 1) & 0x0F == IIR.RLSI
    assert u.read(UartReg.LSR, 1) & LSR.OE
    assert not u.read(UartReg.LSR, 1) & LSR.OE  # reading LSR clears OE
    assert u.read(UartReg.RBR_THR_DLL, 1) == 0  # the oldest bytes are kept


def test_receive_interrupt(uart):
    u, _, irq = uart
    assert u.read(UartReg.IIR_FCR, 1) & 1 == IIR.NO_INT
    u.write(UartReg.IER_DLM, 1, IER.RDI)
    u.feed(b"ab")
    assert irq.level
    assert u.read(UartReg.IIR_FCR, 1) & 0x0F == IIR.RDI
    assert u.read(0, 1) == ord("a") and u.read(0, 1) == ord("b")
    assert not irq.level
    assert not u.read(UartReg.LSR, 1) & LSR.DR


def test_thre_interrupt_cleared_by_reading_iir(uart):
    u, _, irq = uart
    u.write(UartReg.IER_DLM, 1, IER.THRI)
    assert irq.level
    assert u.read(UartReg.IIR_FCR, 1) & 0x0F == IIR.THRI
    assert not irq.level
    u.write(UartReg.RBR_THR_DLL, 1, ord("z"))      # THR empties again: due again
    assert irq.level


def test_fifo_flag_in_iir(uart):
    u, _, _ = uart
    u.write(UartReg.IIR_FCR, 1, 0x07)
    assert u.read(UartReg.IIR_FCR, 1) & 0xC0 == 0xC0
