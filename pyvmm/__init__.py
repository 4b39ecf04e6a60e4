"""pyvmm: a virtual machine monitor in pure Python on Linux KVM."""

__version__ = "0.1.0"

__all__ = ["Machine", "VmConfig", "__version__"]


def __getattr__(name: str):
    # Lazy, so that `python -m pyvmm --help` does not pay for the whole machine.
    if name == "Machine":
        from .vm import Machine

        return Machine
    if name == "VmConfig":
        from .config import VmConfig

        return VmConfig
    raise AttributeError(name)
