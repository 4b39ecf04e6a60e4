"""The guest-physical memory map of a pyvmm machine: the one place that decides where things live."""

from __future__ import annotations

MiB = 1 << 20
GiB = 1 << 30

# RAM sits below the 32-bit MMIO hole and continues above 4 GiB for large guests.
RAM_LOW_END = 0xC000_0000          # 3 GiB: start of the MMIO hole
HIGH_RAM_START = 0x1_0000_0000     # 4 GiB

# Boot information written by the VMM (all in the first MiB, below the kernel at 1 MiB).
BOOT_GDT = 0x0500                  # GDT for the direct 32/64-bit entry paths
BOOT_INFO = 0x6000                 # hvm_start_info (PVH) or boot_params (Linux boot protocol)
BOOT_MEMMAP = 0x6800               # hvm_memmap_table_entry[] (PVH)
BOOT_CMDLINE = 0x8000              # kernel command line
BOOT_CMDLINE_MAX = 0x1000
BOOT_PAGE_TABLES = 0x9000          # identity page tables for a 64-bit entry (Linux boot protocol)
BOOT_MODULES = 0x9000              # Multiboot: module list, module strings, boot loader name (the same
BOOT_MODULES_END = 0x1_0000        # pages as the Linux path's page tables: one boot uses one of them)
VGA_TEXT_BUFFER = 0xB_8000         # the colour text mode's 80x25 character/attribute cells (guest RAM)
ACPI_START = 0xE_0000              # ACPI tables (RSDP must lie in 0xE0000-0xFFFFF for legacy scan)
EBDA_START = 0x9_FC00
EBDA_END = 0xA_0000                # the end of base memory: the EBDA is its last KiB
KERNEL_START = 0x10_0000           # 1 MiB

# The 32-bit MMIO hole.
VIRTIO_MMIO_BASE = 0xD000_0000
VIRTIO_MMIO_STRIDE = 0x1000
VIRTIO_IRQ_BASE = 5                # serial has 4
IOAPIC_BASE = 0xFEC0_0000
LAPIC_BASE = 0xFEE0_0000
FIRMWARE_SIZE = 0x1_0000           # 64 KiB boot ROM
FIRMWARE_BASE = 0x1_0000_0000 - FIRMWARE_SIZE   # so the reset vector 0xFFFFFFF0 lands in it
TSS_ADDR = 0xFFFB_D000             # three pages KVM needs for real mode on VMX hosts; below the ROM

# Port I/O.
SERIAL_COM1 = 0x3F8
SERIAL_IRQ = 4
DEBUG_EXIT_PORT = 0xF4             # where QEMU's isa-debug-exit sits
POST_PORT = 0x80                   # firmware boot-stage codes (the PC's POST code port)
I8042_DATA_PORT = 0x60             # the keyboard controller: data at 0x60, status/command at 0x64
I8042_COMMAND_PORT = 0x64          # (command 0xFE pulses the CPU's reset line)
I8042_KBD_IRQ = 1                  # the keyboard's ISA interrupt (the PIC's IRQ 1, IOAPIC pin 1)
VGA_CRTC_INDEX = 0x3D4             # colour CRTC index/data (cursor position and shape)
VGA_PORTS = (0x3C0, 0x3E0)         # the VGA register block: attribute, misc output, sequencer, ... 0x3DA


def ram_layout(ram_size: int) -> list[tuple[int, int]]:
    """(gpa, size) of each RAM region for a guest of ram_size bytes."""
    low = min(ram_size, RAM_LOW_END)
    regions = [(0, low)]
    if ram_size > low:
        regions.append((HIGH_RAM_START, ram_size - low))
    return regions


def virtio_mmio_slot(index: int) -> tuple[int, int]:
    """(base gpa, irq) of the index-th virtio-mmio device."""
    return VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_STRIDE, VIRTIO_IRQ_BASE + index


E820_RAM = 1
E820_RESERVED = 2


def e820_map(ram_size: int) -> list[tuple[int, int, int]]:
    """The guest's memory map, (addr, size, type) sorted, for both boot paths (PVH's memmap and the
    boot protocol's e820 table).

    Low RAM stops at the EBDA; the EBDA and 0xE0000-0xFFFFF (ACPI tables, ROM) are reserved, so the
    kernel never hands them out; RAM resumes at 1 MiB and, for large guests, above 4 GiB.
    """
    entries = [
        (0, EBDA_START, E820_RAM),
        (EBDA_START, EBDA_END - EBDA_START, E820_RESERVED),
        (ACPI_START, KERNEL_START - ACPI_START, E820_RESERVED),
    ]
    for gpa, size in ram_layout(ram_size):
        start = max(gpa, KERNEL_START)
        if gpa + size > start:
            entries.append((start, gpa + size - start, E820_RAM))
    return entries
