"""User devices: ``-device python:MODULE_OR_FILE:CLASS[,key=value...]`` loads a class written on the device
API (pyvmm.virtio.device.VirtioDeviceBase) and builds it with the keys as keyword arguments.

Every mistake a user can make here is found when the option is parsed, before any VM exists, and said
in one line: a file or module that does not import, a name it does not define, a class that is not a
device, a key the constructor does not take.  The device's own bugs at run time are the transport's to
contain (DEVICE_NEEDS_RESET and one log line).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .device import VirtioDeviceBase

PREFIX = "python:"


def _where(text: str) -> str:
    return f"-device {PREFIX}{text}"


def load_module(source: str, what: str):
    """A module from a .py path or an importable name; ConfigError in one line if it does not load."""
    path = Path(source).expanduser()
    if source.endswith(".py") or "/" in source:
        if not path.is_file():
            raise ConfigError(f"{what}: no such file {source!r} (give a .py file or an importable module)")
        name = "pyvmm_user_" + re.sub(r"\W", "_", str(path.resolve()))
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"{what}: cannot load {source!r} as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise ConfigError(f"{what}: {source} does not import: {_first_line(e)}") from None
        return module
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as e:
        if e.name == source or source.startswith(f"{e.name}."):
            raise ConfigError(f"{what}: no module named {source!r} (give a .py file or an importable "
                              "module)") from None
        raise ConfigError(f"{what}: {source} does not import: {_first_line(e)}") from None
    except Exception as e:
        raise ConfigError(f"{what}: {source} does not import: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


@dataclass(frozen=True)
class UserDevice:
    """A user device class and the keyword arguments to build it with (what the option said)."""

    source: str
    class_name: str
    kwargs: dict[str, str] = field(default_factory=dict)
    cls: type[VirtioDeviceBase] = VirtioDeviceBase

    @property
    def name(self) -> str:
        """The transport's name stem: the class in lower case (``adder`` -> ``adder0``)."""
        return self.class_name.lower()

    def make(self) -> VirtioDeviceBase:
        what = _where(f"{self.source}:{self.class_name}")
        try:
            device = self.cls(**self.kwargs)
        except Exception as e:
            raise ConfigError(f"{what}: the constructor raised {_first_line(e)}") from None
        if not isinstance(getattr(device, "config", None), bytearray):
            raise ConfigError(f"{what}: {self.class_name}.__init__ must call super().__init__()")
        return device


def parse_user_device(driver: str, props: dict[str, str]) -> UserDevice:
    """``python:SOURCE:CLASS`` and its props -> UserDevice, with everything checked but the constructor's run."""
    rest = driver[len(PREFIX):]
    source, sep, class_name = rest.rpartition(":")
    if not sep or not source or not class_name:
        raise ConfigError(f"-device {driver}: expected python:MODULE_OR_FILE:CLASS[,key=value...]")
    what = _where(rest)
    module = load_module(source, what)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"{what}: {source} defines no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, VirtioDeviceBase)):
        raise ConfigError(f"{what}: {class_name} is not a device: subclass "
                          "pyvmm.virtio.device.VirtioDeviceBase (docs/devices.md)")
    if not cls.queues or len(cls.queue_sizes) != len(cls.queues):
        raise ConfigError(f"{what}: {class_name} must name its queues and give each a size "
                          "(queues, queue_sizes)")
    if any(s <= 0 or s & (s - 1) or s > 32768 for s in cls.queue_sizes):
        raise ConfigError(f"{what}: {class_name}.queue_sizes {cls.queue_sizes}: each a power of 2 up to 32768")
    kwargs = {k.replace("-", "_"): v for k, v in props.items() if k != "id"}
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:
        params = [p for p in inspect.signature(cls).parameters if p != "self"]
        raise ConfigError(f"{what}: {e}; {class_name} takes {', '.join(params) or 'no keys'}") from None
    return UserDevice(source, class_name, kwargs, cls)
