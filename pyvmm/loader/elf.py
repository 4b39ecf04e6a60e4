"""ELF kernels: PT_LOAD segments and the PVH entry note, read with pyelftools."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..errors import LoaderError

EM_X86_64 = 62
EM_386 = 3
XEN_ELFNOTE_PHYS32_ENTRY = 18


@dataclass(frozen=True)
class Segment:
    paddr: int
    data: bytes
    memsz: int


@dataclass(frozen=True)
class ElfImage:
    boot_protocol: ClassVar[str] = "pvh"    # a PVH ELF (builder.py's KernelLoad dispatches on it)
    path: Path
    machine: int
    entry: int
    pvh_entry: int | None
    segments: tuple[Segment, ...]
    note_owners: frozenset[str] = frozenset()

    @property
    def is_linux(self) -> bool:
        """Linux's vmlinux carries ELF notes owned by "Linux" (include/linux/elfnote.h)."""
        return "Linux" in self.note_owners

    @property
    def lowest(self) -> int:
        return min(s.paddr for s in self.segments)

    @property
    def highest(self) -> int:
        return max(s.paddr + s.memsz for s in self.segments)


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def load_elf(path: str | Path, *, what: str = "kernel") -> ElfImage:
    """Parse an x86 ELF kernel; a bad file is a one-line LoaderError, never a traceback."""
    path = Path(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - the with below closes it; open errors are told apart here
    except FileNotFoundError:
        raise LoaderError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise LoaderError(f"{what} {path}: is a directory, not an ELF file") from None
    except PermissionError:
        raise LoaderError(f"{what} {path}: permission denied") from None
    except OSError as e:
        raise LoaderError(f"{what} {path}: {e.strerror}") from None
    with f:
        if f.read(4) != b"\x7fELF":
            raise LoaderError(f"{what} {path}: not an ELF file (pass a PVH ELF such as guest/build/guest.elf, "
                              "or a bzImage)")
        f.seek(0)
        from elftools.common.exceptions import ELFError
        from elftools.construct import ConstructError
        from elftools.elf.elffile import ELFFile
        from elftools.elf.segments import NoteSegment

        try:
            elf = ELFFile(f)
            machine = elf["e_machine"]
            if machine not in ("EM_X86_64", "EM_386"):
                raise LoaderError(f"{what} {path}: built for {machine}, not x86-64")
            segments = []
            pvh_entry = None
            owners = set()
            for seg in elf.iter_segments():
                ptype = seg["p_type"]
                if ptype == "PT_LOAD" and seg["p_memsz"]:
                    if seg["p_filesz"] > seg["p_memsz"]:
                        raise LoaderError(f"{what} {path}: a PT_LOAD segment's file size exceeds its memory size")
                    data = seg.data()
                    if len(data) != seg["p_filesz"]:
                        raise LoaderError(f"{what} {path}: truncated: the PT_LOAD segment at {seg['p_paddr']:#x} "
                                          f"has {len(data)} of its {seg['p_filesz']} bytes")
                    segments.append(Segment(seg["p_paddr"], data, seg["p_memsz"]))
                elif ptype == "PT_NOTE" and isinstance(seg, NoteSegment):
                    for note in seg.iter_notes():
                        owners.add(note["n_name"])
                        if note["n_name"] == "Xen" and note["n_type"] == XEN_ELFNOTE_PHYS32_ENTRY:
                            desc = note["n_desc"]
                            if isinstance(desc, str):
                                desc = desc.encode("latin-1")
                            fmt = "<Q" if len(desc) >= 8 else "<I"
                            pvh_entry = struct.unpack_from(fmt, desc)[0]
            entry = elf["e_entry"]
        except (ELFError, ConstructError, struct.error, ValueError, OverflowError, EOFError, OSError) as e:
            # pyelftools reports a garbled header, table or note with any of these.
            raise LoaderError(f"{what} {path}: corrupt ELF ({type(e).__name__}: {e})") from None
    if not segments:
        raise LoaderError(f"{what} {path}: no loadable segments")
    ordered = sorted(segments, key=lambda s: s.paddr)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.paddr + a.memsz > b.paddr:
            raise LoaderError(f"{what} {path}: PT_LOAD segments overlap ({a.paddr:#x}+{a.memsz:#x} and "
                              f"{b.paddr:#x}+{b.memsz:#x})")
    if pvh_entry is not None and not any(s.paddr <= pvh_entry < s.paddr + s.memsz for s in segments):
        raise LoaderError(f"{what} {path}: the PVH entry {pvh_entry:#x} lies outside its loadable segments")
    return ElfImage(path, EM_X86_64 if machine == "EM_X86_64" else EM_386, entry, pvh_entry, tuple(segments),
                    frozenset(owners))


def place_segments(image: ElfImage, mem) -> None:
    """Copy the PT_LOAD segments into guest memory and zero their bss."""
    for s in image.segments:
        if not mem.contains(s.paddr, s.memsz):
            raise LoaderError(
                f"kernel {image.path}: segment at {s.paddr:#x}+{s.memsz:#x} does not fit in guest RAM "
                f"(give the VM more memory with -m)")
        mem.write(s.paddr, s.data)
        if s.memsz > len(s.data):
            mem.view(s.paddr + len(s.data), s.memsz - len(s.data))[:] = bytes(s.memsz - len(s.data))
