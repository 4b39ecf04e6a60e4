"""The i8042 and its PS/2 keyboard, driven through ports 0x60/0x64 as a guest does (no KVM)."""

from __future__ import annotations

import pytest

from pyvmm.devices import keycodes
from pyvmm.devices.i8042 import CTR_AFTER_BIOS, CTR_KBD_DISABLE, CTR_XLAT, I8042, STAT_OBF
from pyvmm.irq import RecordingIrqLine

DATA, CMD = 0, 4


class Controller:
    def __init__(self) -> None:
        self.resets = 0
        self.irq = RecordingIrqLine()
        self.dev = I8042(self._reset, self.irq)

    def _reset(self) -> None:
        self.resets += 1

    def drain(self) -> list[int]:
        """Read 0x60 while the status register says a byte waits, as a polling guest does."""
        out = []
        while self.dev.read(CMD, 1) & STAT_OBF:
            out.append(self.dev.read(DATA, 1))
        return out

    def command(self, *values: int, data: tuple[int, ...] = ()) -> list[int]:
        for v in values:
            self.dev.write(CMD, 1, v)
        for d in data:
            self.dev.write(DATA, 1, d)
        return self.drain()


@pytest.fixture
def c() -> Controller:
    return Controller()


def test_after_bios_state(c: Controller) -> None:
    assert c.command(0x20) == [CTR_AFTER_BIOS] == [0x65]
    assert c.dev.read(CMD, 1) & 0x04           # system flag
    assert c.command(0xAA) == [0x55] and c.command(0xAB) == [0x00]


def test_keys_arrive_in_set_1_through_the_translation(c: Controller) -> None:
    c.dev.key("a", True)
    c.dev.key("a", False)
    assert c.drain() == [0x1E, 0x9E]
    c.dev.key("up", True)
    c.dev.key("up", False)
    assert c.drain() == [0xE0, 0x48, 0xE0, 0xC8]


def test_without_translation_the_keyboard_speaks_set_2(c: Controller) -> None:
    c.command(0x60, data=(CTR_AFTER_BIOS & ~CTR_XLAT,))
    c.dev.key("a", True)
    c.dev.key("a", False)
    assert c.drain() == [0x1C, 0xF0, 0x1C]


def test_set_1_on_the_keyboard_itself(c: Controller) -> None:
    c.command(0x60, data=(CTR_AFTER_BIOS & ~CTR_XLAT,))
    assert c.command(data=(0xF0, 0x01)) == [0xFA, 0xFA]
    assert c.command(data=(0xF0, 0x00)) == [0xFA, 0xFA, 0x01]
    c.dev.key("a", True)
    assert c.drain() == [0x1E]


def test_each_byte_raises_irq_1_with_an_edge_of_its_own(c: Controller) -> None:
    c.dev.type_text(b"A")                      # shift down, a down, a up, shift up: four set-1 bytes
    assert c.irq.level
    got = c.drain()
    assert got == [0x2A, 0x1E, 0x9E, 0xAA]
    assert c.irq.history == [True, False] * 4  # lowered at each read, raised for the next byte
    assert not c.irq.level


def test_keyboard_disable_holds_the_keys(c: Controller) -> None:
    c.command(0xAD)
    c.dev.key("b", True)
    assert c.drain() == []
    assert c.command(0xAE) == [0x30]           # the held key comes once the clock is back
    assert c.command(0x20)[0] & CTR_KBD_DISABLE == 0


def test_keyboard_commands(c: Controller) -> None:
    assert c.command(data=(0xFF,)) == [0xFA, 0xAA]
    assert c.command(data=(0xF2,)) == [0xFA, 0xAB, 0x41]           # 0x83 comes out translated
    assert c.command(data=(0xEE,)) == [0xEE]
    assert c.command(data=(0xED, 0x07)) == [0xFA, 0xFA] and c.dev.kbd.leds == 7
    assert c.command(data=(0xF5,)) == [0xFA]
    c.dev.key("a", True)
    assert c.drain() == []                     # scanning off
    assert c.command(data=(0xF4,)) == [0xFA]
    assert c.command(data=(0x42,)) == [0xFE]   # unknown: resend


@pytest.mark.parametrize("cmd", [0xFE, 0xF0, 0xFC])
def test_pulsing_the_reset_line_resets(c: Controller, cmd: int) -> None:
    c.command(cmd)
    assert c.resets == 1


def test_output_port_write_with_bit_0_clear_resets(c: Controller) -> None:
    c.command(0xD1, data=(0x02,))
    assert c.resets == 1
    c.command(0xFF)                            # odd: no line pulsed
    assert c.resets == 1


def test_send_keys_holds_then_releases_in_reverse(c: Controller) -> None:
    c.dev.send_keys(["ctrl", "alt", "delete"], 0)
    assert c.drain() == [0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D]


def test_the_translation_table_agrees_with_every_key() -> None:
    for name, (s1, s2) in keycodes.KEYS.items():
        assert keycodes.SET2_TO_SET1[s2 & 0xFF] == s1 & 0xFF, name
        assert bool(s1 & keycodes.EXTENDED) == bool(s2 & keycodes.EXTENDED), name
    assert len({s1 for s1, _ in keycodes.KEYS.values()}) == len(keycodes.KEYS)


def test_text_to_strokes() -> None:
    S = keycodes.Stroke
    assert keycodes.strokes_from_text(b"aB1!\r\x7f\x03") == [
        S("a"), S("b", ("shift",)), S("1"), S("1", ("shift",)), S("ret"), S("backspace"), S("c", ("ctrl",))]
    assert keycodes.strokes_from_text(b"\x1b[A\x1b[3~\x1bOP\x1b") == [S("up"), S("delete"), S("f1"), S("esc")]


def test_key_names_and_numbers_as_qemu_spells_them() -> None:
    assert keycodes.lookup("ret") == "ret" and keycodes.lookup("Shift_L") == "shift"
    assert keycodes.lookup("nosuchkey") is None
    assert keycodes.key_from_number(0x1E) == "a" and keycodes.key_from_number(0xC8) == "up"
