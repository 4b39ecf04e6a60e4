"""PC keyboard codes: QEMU's key names (QKeyCode), their scan codes in sets 1 and 2, and the i8042's
set 2 to set 1 translation; with the text a terminal sends mapped to key strokes."""

from __future__ import annotations

from dataclasses import dataclass

EXTENDED = 0x100          # the key's code follows an 0xE0 prefix byte

# QKeyCode name -> (set 1 code, set 2 code), EXTENDED for an 0xE0-prefixed key.  The codes are the IBM
# PC/AT keyboard's (scan code set 1 is the XT's; set 2 the AT's, which keyboards send by default).
KEYS: dict[str, tuple[int, int]] = {
    "esc": (0x01, 0x76), "1": (0x02, 0x16), "2": (0x03, 0x1E), "3": (0x04, 0x26), "4": (0x05, 0x25),
    "5": (0x06, 0x2E), "6": (0x07, 0x36), "7": (0x08, 0x3D), "8": (0x09, 0x3E), "9": (0x0A, 0x46),
    "0": (0x0B, 0x45), "minus": (0x0C, 0x4E), "equal": (0x0D, 0x55), "backspace": (0x0E, 0x66),
    "tab": (0x0F, 0x0D), "q": (0x10, 0x15), "w": (0x11, 0x1D), "e": (0x12, 0x24), "r": (0x13, 0x2D),
    "t": (0x14, 0x2C), "y": (0x15, 0x35), "u": (0x16, 0x3C), "i": (0x17, 0x43), "o": (0x18, 0x44),
    "p": (0x19, 0x4D), "bracket_left": (0x1A, 0x54), "bracket_right": (0x1B, 0x5B), "ret": (0x1C, 0x5A),
    "ctrl": (0x1D, 0x14), "a": (0x1E, 0x1C), "s": (0x1F, 0x1B), "d": (0x20, 0x23), "f": (0x21, 0x2B),
    "g": (0x22, 0x34), "h": (0x23, 0x33), "j": (0x24, 0x3B), "k": (0x25, 0x42), "l": (0x26, 0x4B),
    "semicolon": (0x27, 0x4C), "apostrophe": (0x28, 0x52), "grave_accent": (0x29, 0x0E),
    "shift": (0x2A, 0x12), "backslash": (0x2B, 0x5D), "z": (0x2C, 0x1A), "x": (0x2D, 0x22),
    "c": (0x2E, 0x21), "v": (0x2F, 0x2A), "b": (0x30, 0x32), "n": (0x31, 0x31), "m": (0x32, 0x3A),
    "comma": (0x33, 0x41), "dot": (0x34, 0x49), "slash": (0x35, 0x4A), "shift_r": (0x36, 0x59),
    "kp_multiply": (0x37, 0x7C), "alt": (0x38, 0x11), "spc": (0x39, 0x29), "caps_lock": (0x3A, 0x58),
    "f1": (0x3B, 0x05), "f2": (0x3C, 0x06), "f3": (0x3D, 0x04), "f4": (0x3E, 0x0C), "f5": (0x3F, 0x03),
    "f6": (0x40, 0x0B), "f7": (0x41, 0x83), "f8": (0x42, 0x0A), "f9": (0x43, 0x01), "f10": (0x44, 0x09),
    "num_lock": (0x45, 0x77), "scroll_lock": (0x46, 0x7E), "kp_7": (0x47, 0x6C), "kp_8": (0x48, 0x75),
    "kp_9": (0x49, 0x7D), "kp_subtract": (0x4A, 0x7B), "kp_4": (0x4B, 0x6B), "kp_5": (0x4C, 0x73),
    "kp_6": (0x4D, 0x74), "kp_add": (0x4E, 0x79), "kp_1": (0x4F, 0x69), "kp_2": (0x50, 0x72),
    "kp_3": (0x51, 0x7A), "kp_0": (0x52, 0x70), "kp_decimal": (0x53, 0x71), "less": (0x56, 0x61),
    "f11": (0x57, 0x78), "f12": (0x58, 0x07),
    "kp_enter": (EXTENDED | 0x1C, EXTENDED | 0x5A), "ctrl_r": (EXTENDED | 0x1D, EXTENDED | 0x14),
    "kp_divide": (EXTENDED | 0x35, EXTENDED | 0x4A), "print": (EXTENDED | 0x37, EXTENDED | 0x7C),
    "alt_r": (EXTENDED | 0x38, EXTENDED | 0x11), "home": (EXTENDED | 0x47, EXTENDED | 0x6C),
    "up": (EXTENDED | 0x48, EXTENDED | 0x75), "pgup": (EXTENDED | 0x49, EXTENDED | 0x7D),
    "left": (EXTENDED | 0x4B, EXTENDED | 0x6B), "right": (EXTENDED | 0x4D, EXTENDED | 0x74),
    "end": (EXTENDED | 0x4F, EXTENDED | 0x69), "down": (EXTENDED | 0x50, EXTENDED | 0x72),
    "pgdn": (EXTENDED | 0x51, EXTENDED | 0x7A), "insert": (EXTENDED | 0x52, EXTENDED | 0x70),
    "delete": (EXTENDED | 0x53, EXTENDED | 0x71), "meta_l": (EXTENDED | 0x5B, EXTENDED | 0x1F),
    "meta_r": (EXTENDED | 0x5C, EXTENDED | 0x27), "menu": (EXTENDED | 0x5D, EXTENDED | 0x2F),
}

# HMP's older spellings that QEMU still accepts in `sendkey`.
ALIASES = {"shift_l": "shift", "ctrl_l": "ctrl", "alt_l": "alt", "space": "spc", "enter": "ret",
           "return": "ret", "escape": "esc", "backquote": "grave_accent", "sysrq": "print"}

SET1_BY_CODE = {s1: name for name, (s1, _) in KEYS.items()}


def _translation() -> bytes:
    """The i8042's set 2 to set 1 table, as far as keys go: each set 2 byte a key sends becomes that
    key's set 1 byte (an extended key shares its byte with the key it extends, so one table serves
    both).  Bytes no key sends (0xFA, 0xAA, 0xEE, ...) pass unchanged."""
    table = bytearray(range(256))
    for s1, s2 in KEYS.values():
        table[s2 & 0xFF] = s1 & 0xFF
    return bytes(table)


SET2_TO_SET1 = _translation()


def make_break(name: str, scancode_set: int, *, down: bool) -> bytes:
    """The bytes a keyboard sends for one key going down or up, in scan code set 1 or 2."""
    s1, s2 = KEYS[name]
    code = s1 if scancode_set == 1 else s2
    prefix = b"\xe0" if code & EXTENDED else b""
    code &= 0xFF
    if scancode_set == 1:
        return prefix + bytes([code if down else code | 0x80])
    return prefix + (bytes([code]) if down else b"\xf0" + bytes([code]))


def key_from_number(number: int) -> str | None:
    """QEMU's `number` keys (QMP KeyValue 'number', HMP 0x..): set 1 codes, 0x80 set for an
    0xE0-prefixed key (QEMU's "qnum")."""
    code = (number & 0x7F) | (EXTENDED if number & 0x80 else 0)
    return SET1_BY_CODE.get(code)


def lookup(name: str) -> str | None:
    """A QKeyCode name (or an HMP alias) as pyvmm knows it, or None."""
    name = name.lower()
    name = ALIASES.get(name, name)
    return name if name in KEYS else None


# --- text from a terminal -> key strokes ----------------------------------------------------------------

@dataclass(frozen=True)
class Stroke:
    """One key pressed and released, with the modifiers held around it."""

    key: str
    modifiers: tuple[str, ...] = ()


_UNSHIFTED = {"-": "minus", "=": "equal", "[": "bracket_left", "]": "bracket_right", ";": "semicolon",
              "'": "apostrophe", "`": "grave_accent", "\\": "backslash", ",": "comma", ".": "dot",
              "/": "slash", " ": "spc", "\t": "tab", "\r": "ret", "\n": "ret", "\x7f": "backspace",
              "\x08": "backspace"}
_SHIFTED = {"!": "1", "@": "2", "#": "3", "$": "4", "%": "5", "^": "6", "&": "7", "*": "8", "(": "9",
            ")": "0", "_": "minus", "+": "equal", "{": "bracket_left", "}": "bracket_right", ":": "semicolon",
            '"': "apostrophe", "~": "grave_accent", "|": "backslash", "<": "comma", ">": "dot", "?": "slash"}
# xterm's escape sequences for the keys a terminal has beyond text.
_SEQUENCES = {"[A": "up", "[B": "down", "[C": "right", "[D": "left", "[H": "home", "[F": "end",
              "OH": "home", "OF": "end", "[1~": "home", "[4~": "end", "[2~": "insert", "[3~": "delete",
              "[5~": "pgup", "[6~": "pgdn", "OP": "f1", "OQ": "f2", "OR": "f3", "OS": "f4", "[15~": "f5",
              "[17~": "f6", "[18~": "f7", "[19~": "f8", "[20~": "f9", "[21~": "f10", "[23~": "f11",
              "[24~": "f12"}


def strokes_from_text(data: bytes) -> list[Stroke]:
    """The key strokes that type data on a US keyboard: letters, digits and punctuation (shifted where
    the character needs it), Ctrl-letter for control bytes, xterm escape sequences for arrows, Home,
    End, PgUp/PgDn, Insert, Delete and F1-F12.  A lone ESC is Escape; bytes with no key are dropped."""
    out: list[Stroke] = []
    text = data.decode("latin-1")
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\x1b":
            for seq, key in _SEQUENCES.items():
                if text.startswith(seq, i + 1):
                    out.append(Stroke(key))
                    i += 1 + len(seq)
                    break
            else:
                out.append(Stroke("esc"))
                i += 1
            continue
        i += 1
        if ch in _UNSHIFTED:
            out.append(Stroke(_UNSHIFTED[ch]))
        elif ch in _SHIFTED:
            out.append(Stroke(_SHIFTED[ch], ("shift",)))
        elif "a" <= ch <= "z" or "0" <= ch <= "9":
            out.append(Stroke(ch))
        elif "A" <= ch <= "Z":
            out.append(Stroke(ch.lower(), ("shift",)))
        elif "\x01" <= ch <= "\x1a":
            out.append(Stroke(chr(ord(ch) + 0x60), ("ctrl",)))
    return out
