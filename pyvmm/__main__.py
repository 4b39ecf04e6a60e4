"""`python -m pyvmm`: the command line."""

try:
    from .cli import entry
except OSError as e:      # a host limit (no file descriptor left to read the next module): one line
    import sys

    sys.stderr.write(f"pyvmm: cannot start: {e.strerror or e}\n")
    raise SystemExit(1) from None

entry()
