"""pyvmm: a virtual machine monitor in pure Python on Linux KVM."""

__version__ = "0.1.0"
