"""The boot ROM's build outputs, for the firmware tests of every tier."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FW_DIR = ROOT / "firmware"
BUILD = FW_DIR / "build"
ELF, BIN, BAD_GDT_ELF = BUILD / "firmware.elf", BUILD / "firmware.bin", BUILD / "firmware-badgdt.elf"
