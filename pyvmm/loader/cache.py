"""A small on-disk cache of parsed ELF files, so a repeated boot does not pay for pyelftools again.

The first load of a file parses it with pyelftools; the result (a frozen dataclass of segments and
symbols) is pickled under ~/.cache/pyvmm/elf, keyed by the file's path, size, modification time and
pyvmm's version.  Any change to the file, or any trouble with the cache, means a fresh parse.
PYVMM_NO_CACHE=1 turns it off.
"""

from __future__ import annotations

import os
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .. import __version__

T = TypeVar("T")
SCHEMA = 2   # bump when a cached dataclass changes shape


def cache_dir() -> Path:
    base = os.environ.get("PYVMM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pyvmm")
    return Path(base) / "elf"


def load_cached(loader: Callable[[Path], T], path: Path, kind: str) -> T:
    """loader(path), or its earlier result for the very same file."""
    if os.environ.get("PYVMM_NO_CACHE") == "1":
        return loader(path)
    try:
        st = os.stat(path)
        key = f"{kind}\0{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{__version__}\0{SCHEMA}"
        entry = cache_dir() / f"{zlib.crc32(key.encode()):08x}-{len(key)}.pickle"
        with open(entry, "rb") as f:
            stored_key, result = pickle.load(f)
        if stored_key == key:          # the name is a short hash; the key inside is the truth
            return result
    except Exception:
        pass  # not cached yet (or unreadable): parse, and let the loader's own errors speak
    result = loader(path)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            pickle.dump((key, result), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, entry)
    except Exception:
        pass  # a read-only home or a full disk only costs the next boot a parse
    return result
