"""The PVH boot ABI: hvm_start_info, its module list and memory map, as Xen's start_info.h lays them out."""

from __future__ import annotations

import ctypes
from ctypes import c_uint32, c_uint64

from . import layout

XEN_HVM_START_MAGIC_VALUE = 0x336EC578


class hvm_start_info(ctypes.Structure):
    _fields_ = [
        ("magic", c_uint32),
        ("version", c_uint32),
        ("flags", c_uint32),
        ("nr_modules", c_uint32),
        ("modlist_paddr", c_uint64),
        ("cmdline_paddr", c_uint64),
        ("rsdp_paddr", c_uint64),
        ("memmap_paddr", c_uint64),
        ("memmap_entries", c_uint32),
        ("reserved", c_uint32),
    ]


class hvm_modlist_entry(ctypes.Structure):
    _fields_ = [("paddr", c_uint64), ("size", c_uint64), ("cmdline_paddr", c_uint64), ("reserved", c_uint64)]


class hvm_memmap_table_entry(ctypes.Structure):
    _fields_ = [("addr", c_uint64), ("size", c_uint64), ("type", c_uint32), ("reserved", c_uint32)]


def write_start_info(mem, ram_size: int, cmdline: bytes, *, initrd: tuple[int, int] | None = None,
                     rsdp: int = 0) -> int:
    """Write hvm_start_info, the memory map and the command line into guest memory; return its gpa."""
    if len(cmdline) >= layout.BOOT_CMDLINE_MAX:
        raise ValueError("command line too long")
    mem.write(layout.BOOT_CMDLINE, cmdline + b"\0")
    entries = layout.e820_map(ram_size)
    table = (hvm_memmap_table_entry * len(entries))(*[hvm_memmap_table_entry(a, s, t) for a, s, t in entries])
    mem.write(layout.BOOT_MEMMAP, bytes(table))
    info = hvm_start_info(
        magic=XEN_HVM_START_MAGIC_VALUE,
        version=1,
        cmdline_paddr=layout.BOOT_CMDLINE,
        rsdp_paddr=rsdp,
        memmap_paddr=layout.BOOT_MEMMAP,
        memmap_entries=len(entries),
    )
    if initrd is not None:
        modlist = layout.BOOT_MEMMAP + ctypes.sizeof(table)
        mem.write(modlist, bytes(hvm_modlist_entry(paddr=initrd[0], size=initrd[1])))
        info.nr_modules = 1
        info.modlist_paddr = modlist
    mem.write(layout.BOOT_INFO, bytes(info))
    return layout.BOOT_INFO
