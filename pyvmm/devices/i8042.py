"""The PC keyboard controller (i8042) with a PS/2 keyboard behind it: ports 0x60/0x64, IRQ 1, reset line.

The controller's command byte, status register and commands are those of the IBM PC/AT's 8042 (as
QEMU's hw/input/pckbd.c models them); the keyboard speaks scan code set 2 by default and the
controller translates to set 1 while the command byte's XLAT bit is on, as the real part does.  No
mouse sits on the auxiliary port.  Keys arrive from the host as QKeyCode names (keycodes.py): typed on
the console, or sent by `sendkey` / QMP `send-key`.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from ..errors import PyvmmError
from ..irq import IrqLine
from . import keycodes

# Status register (port 0x64, read).
STAT_OBF = 0x01           # output buffer full: a byte waits at 0x60
STAT_IBF = 0x02           # input buffer full (never: pyvmm takes every write at once)
STAT_SYS = 0x04           # system flag: set once the self-test passed
STAT_CMD = 0x08           # the last write went to 0x64 (a command), not 0x60
STAT_UNLOCKED = 0x10      # keyboard not inhibited by the key lock
STAT_AUX_OBF = 0x20       # the byte at 0x60 is from the auxiliary (mouse) port

# Command byte ("controller configuration byte").
CTR_KBD_INT = 0x01        # IRQ 1 when a keyboard byte arrives
CTR_AUX_INT = 0x02
CTR_SYS = 0x04
CTR_KBD_DISABLE = 0x10    # keyboard clock off: keys wait in the keyboard
CTR_AUX_DISABLE = 0x20
CTR_XLAT = 0x40           # translate set 2 to set 1

# The state a PC BIOS leaves the controller in (SeaBIOS: keyboard interrupt, system flag, translation,
# mouse port off), since a Multiboot kernel starts after the BIOS and never initialises it itself.
CTR_AFTER_BIOS = CTR_KBD_INT | CTR_SYS | CTR_AUX_DISABLE | CTR_XLAT

# Keyboard replies.
KBD_ACK = 0xFA
KBD_RESEND = 0xFE
KBD_BAT_OK = 0xAA
KBD_ECHO = 0xEE

QUEUE_LIMIT = 1024        # keyboard bytes held for the guest; more is dropped (a paste may be long)


class PS2Keyboard:
    """The keyboard's side: its command set (reset, identify, scan code set, LEDs, typematic, enable)
    and the bytes it has for the controller, in its current scan code set."""

    def __init__(self) -> None:
        self.queue: collections.deque[int] = collections.deque()
        self.scancode_set = 2
        self.scanning = True
        self.leds = 0
        self.typematic = 0x2B
        self.expect: int | None = None      # a command waiting for its argument byte
        self.last = KBD_ACK
        self.dropped = 0

    def reset(self) -> None:
        self.queue.clear()
        self.scancode_set, self.scanning, self.leds, self.typematic, self.expect = 2, True, 0, 0x2B, None

    def put(self, data: bytes) -> None:
        for b in data:
            if len(self.queue) >= QUEUE_LIMIT:
                self.dropped += 1
                return
            self.queue.append(b)
            self.last = b

    def key(self, name: str, down: bool) -> None:
        if self.scanning:
            self.put(keycodes.make_break(name, self.scancode_set, down=down))

    def command(self, value: int, *, translated: bool) -> None:
        """A byte the guest wrote to port 0x60 for the keyboard."""
        if self.expect is not None:
            cmd, self.expect = self.expect, None
            if cmd == 0xED:
                self.leds = value & 0x07
            elif cmd == 0xF3:
                self.typematic = value & 0x7F
            elif cmd == 0xF0:
                if value == 0:
                    self.put(bytes([KBD_ACK]))
                    # With translation the controller turns the set number into its set 1 byte too.
                    code = {1: 0x43, 2: 0x41, 3: 0x3F}[self.scancode_set] if translated else self.scancode_set
                    self.put(bytes([code]))
                    return
                if value not in (1, 2):
                    self.put(bytes([KBD_RESEND]))      # set 3: not supported
                    return
                self.scancode_set = value
                self.queue.clear()
            self.put(bytes([KBD_ACK]))
            return
        if value in (0xED, 0xF0, 0xF3):
            self.expect = value
            self.put(bytes([KBD_ACK]))
        elif value == KBD_ECHO:
            self.put(bytes([KBD_ECHO]))
        elif value == 0xF2:                          # identify: an MF2 keyboard
            self.put(bytes([KBD_ACK, 0xAB, 0x83]))
        elif value == 0xF4:
            self.scanning = True
            self.put(bytes([KBD_ACK]))
        elif value == 0xF5:                          # disable, and restore the defaults
            self.scanning = False
            self.scancode_set, self.typematic = 2, 0x2B
            self.put(bytes([KBD_ACK]))
        elif value == 0xF6:
            self.scancode_set, self.typematic = 2, 0x2B
            self.put(bytes([KBD_ACK]))
        elif value == 0xFE:
            self.put(bytes([self.last]))
        elif value == 0xFF:                          # reset and self-test
            self.reset()
            self.put(bytes([KBD_ACK, KBD_BAT_OK]))
        else:
            self.put(bytes([KBD_RESEND]))


class I8042:
    """Ports 0x60 (data) and 0x64 (status/command) as one 5-port device, IRQ 1 for keyboard bytes.

    The output buffer holds one byte, as on the chip; the keyboard keeps the rest and hands the next
    over when the guest has read the last.  Command 0xFE (or any pulse of output line 0, and a write
    of the output port with bit 0 clear) resets the machine through ``on_reset``.
    """

    DATA = 0
    COMMAND = 4

    def __init__(self, on_reset: Callable[[], None], irq: IrqLine | None = None) -> None:
        self.on_reset = on_reset
        self.irq = irq
        self.lock = threading.Lock()
        self.kbd = PS2Keyboard()
        self._level = False
        self.keys_sent = 0
        self.reset()

    def reset(self) -> None:
        """The controller as a BIOS leaves it (a machine reset): nothing buffered, IRQ 1 low."""
        self.kbd.reset()
        self.ctr = CTR_AFTER_BIOS
        self.status = STAT_SYS | STAT_UNLOCKED
        self.out: int | None = None            # the output buffer
        self.out_from_kbd = False
        self.pending: int | None = None        # a controller command waiting for its data byte
        self.output_port = 0x03                # reset line high (not in reset), A20 on
        self._break = False                    # translation saw set 2's 0xF0 break prefix
        if self._level and self.irq is not None:
            self._level = False
            self.irq.set_level(False)

    # --- the guest's side ---------------------------------------------------------------------------

    def read(self, offset: int, size: int) -> int:
        with self.lock:
            if offset == self.DATA:
                value = self.out if self.out is not None else 0
                self.out = None
                # Lower IRQ 1 before the next byte raises it again: the PIC's pin is edge-triggered,
                # so each byte needs an edge of its own.
                self._update_irq()
                self._refill()
                return value
            if offset == self.COMMAND:
                status = self.status & ~(STAT_OBF | STAT_AUX_OBF)
                if self.out is not None:
                    status |= STAT_OBF
                return status
            return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        reset = False
        with self.lock:
            if offset == self.COMMAND:
                self.status |= STAT_CMD
                reset = self._command(value)
            elif offset == self.DATA:
                self.status &= ~STAT_CMD
                reset = self._data(value)
            self._refill()
        if reset:
            self.on_reset()

    def _command(self, cmd: int) -> bool:
        self.pending = None
        if cmd == 0x20:
            self._controller_byte(self.ctr)
        elif cmd in (0x60, 0xD1, 0xD2, 0xD3, 0xD4):
            self.pending = cmd
        elif cmd == 0xA7:
            self.ctr |= CTR_AUX_DISABLE
        elif cmd == 0xA8:
            self.ctr &= ~CTR_AUX_DISABLE
        elif cmd == 0xA9:
            self._controller_byte(0x00)          # aux interface test: the lines are fine (nothing there)
        elif cmd == 0xAA:
            self.status |= STAT_SYS
            self._controller_byte(0x55)          # self-test passed
        elif cmd == 0xAB:
            self._controller_byte(0x00)          # keyboard interface test passed
        elif cmd == 0xAD:
            self.ctr |= CTR_KBD_DISABLE
        elif cmd == 0xAE:
            self.ctr &= ~CTR_KBD_DISABLE
        elif cmd == 0xC0:
            self._controller_byte(0x80)          # input port: keyboard not inhibited
        elif cmd == 0xD0:
            port = self.output_port | (0x10 if self.out is not None and self.out_from_kbd else 0)
            self._controller_byte(port)
        elif 0xF0 <= cmd <= 0xFF and not cmd & 0x01:
            return True                          # pulse output line 0: the CPU's reset (0xFE)
        return False

    def _data(self, value: int) -> bool:
        cmd, self.pending = self.pending, None
        if cmd == 0x60:
            self.ctr = value
            if value & CTR_SYS:
                self.status |= STAT_SYS
            else:
                self.status &= ~STAT_SYS
        elif cmd == 0xD1:
            self.output_port = value | 0x01
            return not value & 0x01              # bit 0 low holds the CPU in reset
        elif cmd == 0xD2:
            self._controller_byte(value, from_kbd=True)
        elif cmd in (0xD3, 0xD4):
            pass                                 # the auxiliary port: no mouse answers
        else:
            self.kbd.command(value, translated=bool(self.ctr & CTR_XLAT))
        return False

    # --- the host's side --------------------------------------------------------------------------------

    def key(self, name: str, down: bool) -> None:
        """A key (a QKeyCode name) going down or up."""
        with self.lock:
            self.kbd.key(name, down)
            self.keys_sent += down
            self._refill()

    def send_keys(self, names: list[str], hold: float) -> None:
        """QEMU's send-key: every key down in order, then after hold seconds up in reverse order."""
        for n in names:
            self.key(n, True)

        def release() -> None:
            try:
                for n in reversed(names):
                    self.key(n, False)
            except (PyvmmError, OSError):
                pass        # the VM went away during the hold: there is no guest left to tell

        if hold <= 0:
            release()
            return
        timer = threading.Timer(hold, release)
        timer.daemon = True
        timer.start()

    def type_strokes(self, strokes: list[keycodes.Stroke]) -> None:
        """Each stroke pressed and released, its modifiers held around it."""
        with self.lock:
            for s in strokes:
                for m in s.modifiers:
                    self.kbd.key(m, True)
                self.kbd.key(s.key, True)
                self.kbd.key(s.key, False)
                for m in reversed(s.modifiers):
                    self.kbd.key(m, False)
                self.keys_sent += 1
            self._refill()

    def type_text(self, data: bytes) -> None:
        """Bytes typed on the console, as key strokes."""
        self.type_strokes(keycodes.strokes_from_text(data))

    # --- internals -------------------------------------------------------------------------------------

    def _controller_byte(self, value: int, *, from_kbd: bool = False) -> None:
        # A controller reply replaces whatever was in the buffer; a real guest waits for it anyway.
        self.out = value
        self.out_from_kbd = from_kbd
        self._update_irq()

    def _refill(self) -> None:
        """Move the keyboard's next byte into the empty output buffer, translated if XLAT is on."""
        while self.out is None and self.kbd.queue and not self.ctr & CTR_KBD_DISABLE:
            b = self.kbd.queue.popleft()
            if self.ctr & CTR_XLAT:
                if b == 0xF0:
                    self._break = True
                    continue
                b = keycodes.SET2_TO_SET1[b] | (0x80 if self._break else 0)
                self._break = False
            self.out = b
            self.out_from_kbd = True
        self._update_irq()

    def _update_irq(self) -> None:
        # Any byte in the output buffer raises IRQ 1 while the interrupt is on, a controller reply too.
        level = self.out is not None and bool(self.ctr & CTR_KBD_INT)
        if self.irq is not None and level != self._level:
            self._level = level
            self.irq.set_level(level)
