"""The pyvmm command line: verbs over the Python API; a PyvmmError becomes one line and an exit code."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from . import __version__
from .cli_run import add_run_parser, cmd_run, config_from_args, run_machine, run_option_strings
from .errors import PyvmmError
from .termout import LineStream

__all__ = ["build_parser", "config_from_args", "entry", "main", "run_machine"]


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, without importing shutil at start-up just to learn the terminal width."""

    def __init__(self, prog: str, **kw) -> None:
        if kw.get("width") is None:
            try:
                kw["width"] = int(os.environ.get("COLUMNS") or os.get_terminal_size(sys.stdout.fileno()).columns) - 2
            except (OSError, ValueError):
                kw["width"] = 78
        super().__init__(prog, **kw)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kw) -> None:
        kw.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kw)

    def error(self, message: str) -> NoReturn:  # one line, exit 2, as argparse does, but with our prefix
        from .errors import one_line

        message = one_line(message)
        self.exit(2, f"pyvmm: {message} (see pyvmm {self.prog.split()[-1]} --help)\n"
                  if " " in self.prog else f"pyvmm: {message} (see pyvmm --help)\n")


def _add_kvmtrace_parser(sub) -> None:
    p = sub.add_parser(
        "kvmtrace", help="trace the KVM ioctls and exits of any VMM (pyvmm, QEMU, Firecracker, ...)",
        description="Run COMMAND (or attach to PID) under ptrace and show every ioctl it makes on /dev/kvm, "
        "a VM fd or a vCPU fd, its argument structure decoded, and every KVM_RUN exit read from the vCPU's "
        "kvm_run; a summary table at the end. Needs python-ptrace (pip install 'pyvmm[kvmtrace]'). "
        "docs/kvmtrace.md has examples and the --json schema.",
        usage="pyvmm kvmtrace [-o FILE] [--json] [--summary] [--exits | --no-exits] [-v] "
              "(-p PID | -- COMMAND [ARG...])")
    p.add_argument("-o", "--output", metavar="FILE", help="write the trace to FILE (default: standard error)")
    p.add_argument("--json", action="store_true", help="JSON lines for tools, one record per ioctl (every exit)")
    p.add_argument("--summary", action="store_true", help="only the summary: ioctls by name, exits by reason")
    ex = p.add_mutually_exclusive_group()
    ex.add_argument("--exits", action="store_true",
                    help="a line for every KVM_RUN exit (default: every one until 2000 lines, then a line a second)")
    ex.add_argument("--no-exits", action="store_true", help="no KVM_RUN lines (they still count in the summary)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="list what the structures hold: CPUID entries, MSRs, segments, GSI routes")
    p.add_argument("-p", "--pid", type=int, help="attach to a running process; Ctrl-C detaches and it runs on")
    p.add_argument("--no-seccomp", action="store_true",
                   help="stop the command at every system call, as -p must, not only at KVM ioctls")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND", help="the VMM to run, after --")
    p.set_defaults(func=_kvmtrace_main)


def _kvmtrace_main(args) -> int:
    from .tools.kvmtrace import main  # python-ptrace is loaded only when the verb runs

    return main(args)


def build_parser(only_run: bool = False) -> argparse.ArgumentParser:
    """The whole command line; `only_run` builds just the `run` verb (what `pyvmm run ...` needs, without
    importing the control verbs' modules and the monitor's command table at every start)."""
    parser = _Parser(prog="pyvmm", description="A virtual machine monitor in pure Python on Linux KVM, "
                     "with a virtio-mmio memory balloon.")
    parser.add_argument("--version", action="version", version=f"pyvmm {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    add_run_parser(sub)
    if only_run:
        return parser
    _add_kvmtrace_parser(sub)
    try:
        from .cli_control import add_control_parsers
    except ImportError:
        pass
    else:
        add_control_parsers(sub)
    return parser


def _run_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["run"]
    raise LookupError("run")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    completing = "_ARGCOMPLETE" in os.environ
    parser = build_parser(only_run=bool(argv) and argv[0] == "run" and not completing)
    if completing:      # bash asks for completions (pyvmm[completion]); else no cost
        try:
            import argcomplete
        except ImportError:
            pass
        else:
            argcomplete.autocomplete(parser)
    if argv and argv[0] == "run":
        # Before argparse, which would take QEMU's -drive for -d rive: one line for a QEMU option
        # pyvmm lacks, naming what to use instead.
        from .qemuopts import check_unsupported

        try:
            check_unsupported(argv[1:], *run_option_strings(_run_parser(parser)))
        except PyvmmError as e:
            sys.stderr.write(f"pyvmm: {e}\n")
            return e.exit_code
    args = parser.parse_args(argv)
    # Log records go out as pyvmm's other lines do: above a status line, never inside a guest line.
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="pyvmm: %(name)s: %(message)s", stream=LineStream(2))
    if sys.stderr.isatty():
        # The console may be in raw mode while the guest runs (no newline translation there).
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.terminator = "\r\n"
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        if args.verb == "run":
            return cmd_run(args)
        return args.func(args)
    except PyvmmError as e:
        sys.stderr.write(f"pyvmm: {e}\n")
        return e.exit_code
    except OSError as e:
        # A host limit met anywhere (a module import, a thread, a pipe): one line, not a traceback.
        from .errors import host_limit

        limit = host_limit(e, "cannot go on")
        if limit is None:
            raise
        sys.stderr.write(f"pyvmm: {limit}\n")
        return limit.exit_code
    except BrokenPipeError:
        return 0


def entry() -> None:
    """The process entry (console script, `python -m pyvmm`): run, flush, and leave at once.

    The VM's file descriptors and mappings are closed by Machine.close() before this point; skipping
    the interpreter's own teardown (module finalisation, garbage collection of everything) saves
    tens of milliseconds of every short run, which the boot benchmark counts.
    """
    try:
        code = main()
    except KeyboardInterrupt:   # Ctrl-C anywhere in main(): imports, argument parsing, a verb
        sys.stderr.write("pyvmm: interrupted\n")
        code = 130
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


if __name__ == "__main__":
    entry()
