"""`python -m pyvmm`: the command line."""

import sys

try:
    from .cli import entry
except OSError as e:      # a host limit (no file descriptor left to read the next module): one line
    sys.stderr.write(f"pyvmm: cannot start: {e.strerror or e}\n")
    raise SystemExit(1) from None
except KeyboardInterrupt:  # Ctrl-C while the command line's modules load
    sys.stderr.write("pyvmm: interrupted\n")
    raise SystemExit(130) from None

entry()
