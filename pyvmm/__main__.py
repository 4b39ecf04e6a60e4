"""`python -m pyvmm`: the command line."""

from .cli import entry

entry()
