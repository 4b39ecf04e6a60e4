"""The one exception tree of pyvmm: user and host errors that print as one line."""

from __future__ import annotations

import errno as _errno
import os


class PyvmmError(Exception):
    """An error the user can act on; the CLI prints it as one line and exits non-zero.

    The message is kept to one line whatever it quotes: a newline or other control character that came
    from the user's input (a file name, an option) is shown escaped, as repr() would show it.
    """

    exit_code = 1

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(one_line(str(message)), *args)


def one_line(text: str) -> str:
    """text with control characters escaped (\\n, \\x00, ...), so it prints as a single line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class ConfigError(PyvmmError):
    """A bad option or value given by the user."""

    exit_code = 2


class LoaderError(PyvmmError):
    """A kernel, firmware or initrd file that cannot be loaded."""


class GuestMemoryError(PyvmmError):
    """An access to guest-physical memory outside guest RAM."""

    def __init__(self, gpa: int, length: int, what: str = "access") -> None:
        super().__init__(f"guest memory {what} of {length} bytes at gpa {gpa:#x} is outside guest RAM")
        self.gpa = gpa
        self.length = length


class KvmError(PyvmmError):
    """A KVM ioctl that failed; names the ioctl and the errno."""

    def __init__(self, ioctl: str, errno: int, hint: str = "") -> None:
        name = _errno.errorcode.get(errno, str(errno))
        msg = f"{ioctl} failed: {name} ({os.strerror(errno)})"
        if not hint and errno in _LIMITS:
            hint = _LIMITS[errno].split(": ", 1)[-1].format(nofile="see ulimit -n")
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)
        self.ioctl = ioctl
        self.errno = errno


class GuestCrash(PyvmmError):
    """The guest stopped in a way it cannot recover from (triple fault, entry failure, emulation error)."""

    exit_code = 3


# Host limits, not bugs: what to say when the host refuses a resource, wherever pyvmm asked for it.
_LIMITS = {
    _errno.EMFILE: "out of file descriptors: raise the limit (ulimit -n, now {nofile})",
    _errno.ENFILE: "the host's file table is full: close files or raise fs.file-max",
    _errno.ENOMEM: "out of memory: give the VM less with -m, or the process more (ulimit -v)",
    _errno.ENOSPC: "no space left on the device",
}


def host_limit(err: OSError, doing: str) -> PyvmmError | None:
    """A one-line PyvmmError for an OSError that is a host limit (EMFILE, ENFILE, ENOMEM, ENOSPC), else None."""
    hint = _LIMITS.get(err.errno or 0)
    if hint is None:
        return None
    try:
        import resource

        nofile = str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    except (ImportError, ValueError, OSError):
        nofile = "?"
    what = f" ({err.filename})" if getattr(err, "filename", None) else ""
    return PyvmmError(f"{doing}{what}: {hint.format(nofile=nofile)}")
