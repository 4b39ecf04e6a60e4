"""ioctl request numbers derived as <asm-generic/ioctl.h> does, and the one call path into libc."""

from __future__ import annotations

import ctypes
import errno
import os

from ..errors import KvmError

# <asm-generic/ioctl.h>: nr 8 bits, type 8 bits, size 14 bits, dir 2 bits.
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = 30
_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2

KVMIO = 0xAE


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    if size >= 1 << 14:
        raise ValueError(f"ioctl argument of {size} bytes does not fit the size field")
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT) | (
        size << _IOC_SIZESHIFT
    )


def _size(t) -> int:
    return t if isinstance(t, int) else ctypes.sizeof(t)


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, t) -> int:
    return _IOC(_IOC_READ, type_, nr, _size(t))


def _IOW(type_: int, nr: int, t) -> int:
    return _IOC(_IOC_WRITE, type_, nr, _size(t))


def _IOWR(type_: int, nr: int, t) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, _size(t))


# The process's own symbols (dlopen(NULL)) include libc's ioctl: no find_library(), which runs
# ldconfig in a subprocess and costs milliseconds of every start.
_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_ioctl.restype = ctypes.c_int


def ioctl(fd: int, request: int, arg=None, *, name: str) -> int:
    """ioctl(2) through libc; ``arg`` is a ctypes object (passed by reference), an int, or None.

    A failure raises KvmError naming the ioctl and the errno.  Retries on EINTR, as the KVM
    ioctls other than KVM_RUN are restartable.
    """
    if arg is None:
        ptr = None
    elif isinstance(arg, int):
        ptr = arg
    else:
        ptr = ctypes.addressof(arg)
    while True:
        ret = _ioctl(fd, request, ptr)
        if ret >= 0:
            return ret
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise KvmError(name, err)


def close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
