"""Command line: flags + TOML -> a validated Config, subcommands, and exit statuses.

The parser and the TOML keys are generated from Config's fields in
hsmpi.cli.options.  Exit status: 0 done; 2 a usage error (bad flag, config
value, task, space, data, checkpoint or output folder), reported once by rank
0 before any training; 1 an exception during the run, which aborts every rank
(`MPI_Abort`, hsmpi.errors.ends_every_rank_on_failure) so none waits forever
in a collective; 3 no member ever had a finite validation loss (the results
file is written, marked finite_model = false); 75 (EX_TEMPFAIL) stopped by
SIGTERM, SIGINT or SIGUSR1 at a session boundary with a checkpoint written:
run again with `--resume auto` to continue; 141 (128 + SIGPIPE) the reader of
the output went away (`--help | head`); 74 (EX_IOERR) a checkpoint, the
results file or an export could not be written (disk full, permission lost, a
quota): one line says what is intact.  Usage errors are raised instead of
argparse's print-and-exit (UsageError), so only rank 0 prints.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from hsmpi import __version__
from hsmpi.config import Config
from hsmpi.engine.job import Stopped
from hsmpi.engine.resume import resume_options
from hsmpi.engine.signals import install as install_signal_handlers
from hsmpi.errors import NoFiniteModel, UsageError, agreed, ends_every_rank_on_failure, user_errors
from hsmpi.io.files import DiskError
from hsmpi.parallel.comm import SerialComm, world
from hsmpi.tasks import load_task
from hsmpi.text import say

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_STOPPED = 75
EXIT_NO_MODEL = 3
EXIT_IO = 74  # EX_IOERR: a file could not be written (disk full, permission, quota)
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader went away


def interval_arg(text: str) -> float | str:
    """--checkpoint-interval: 'auto' or a number of seconds (checked by Config)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'auto', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser, generated from Config's fields by hsmpi.cli.options."""
    # Imported here, not at the top: `python -m hsmpi.cli.options` would otherwise find the module
    # already imported by its package and run a second copy of it.
    from hsmpi.cli.options import build_parser as generated

    return generated()


def parse(argv: Sequence[str], comm: SerialComm | None = None) -> Config | str:
    """Flags (over TOML, over a resumed checkpoint's settings) -> Config; or 'help' / 'version'."""
    from hsmpi.cli.options import read_toml  # not at the top: see build_parser

    comm = comm or SerialComm()

    def local() -> dict[str, Any]:
        args = vars(build_parser().parse_args(list(argv)))
        config_path = args.pop("config")
        options = read_toml(config_path) if config_path else {}
        options.update(args)
        return options

    options = agreed(comm, local)
    if options.pop("help"):
        return "help"
    if options.pop("version"):
        return "version"
    options = resume_options(options, comm)
    try:
        return Config(**options)
    except TypeError as err:  # e.g. a TOML value of the wrong kind for a dataclass field
        raise UsageError(str(err)) from None


def _say(comm: SerialComm, message: str, stream: Any = sys.stdout) -> None:
    if comm.is_root:
        say(message, stream)


def _doctor(comm: SerialComm, args: list[str]) -> int:
    from hsmpi.cli.doctor import doctor

    if args:
        _say(comm, f"hsmpi: error: doctor takes no arguments, but got {' '.join(args)}", sys.stderr)
        return EXIT_USAGE
    return doctor(comm)


def _replay(comm: SerialComm, args: list[str]) -> int:
    from hsmpi.cli.replay import main as replay_main

    return replay_main(args) if comm.is_root else 0  # one network: rank 0 alone trains it


def _report(comm: SerialComm, args: list[str]) -> int:
    from hsmpi.cli.report import main as report_main

    return report_main(args) if comm.is_root else 0


# `plot` is `report` under the name the benchmark docs use: the same table and figures.
SUBCOMMANDS = {"doctor": _doctor, "replay": _replay, "report": _report, "plot": _report}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m hsmpi` and the `hsmpi` console script."""
    argv = sys.argv[1:] if argv is None else argv
    comm = world()
    try:
        return _main(argv, comm)
    except BrokenPipeError:
        return _reader_gone(comm)


def _reader_gone(comm: SerialComm) -> int:
    """Output's reader went away (`python -m hsmpi --help | head -3`): end quietly, as a shell tool does."""
    try:  # Python flushes stdout once more at exit: into /dev/null, that flush cannot raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is no file descriptor (or closed): no flush to stop either
        pass
    if comm.size > 1:  # mid-run, the other ranks would wait forever in their next collective
        comm.abort(EXIT_BROKEN_PIPE)
    return EXIT_BROKEN_PIPE


def _main(argv: Sequence[str], comm: SerialComm) -> int:
    from hsmpi.engine.job import execute

    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](comm, list(argv[1:]))
    try:
        with ends_every_rank_on_failure(comm, (*user_errors(), Stopped, NoFiniteModel, DiskError, BrokenPipeError)):
            parsed = parse(argv, comm)
            if parsed == "help":
                _say(comm, build_parser().format_help())
                return 0
            if parsed == "version":
                _say(comm, f"hsmpi {__version__}")
                return 0
            assert isinstance(parsed, Config)
            task = agreed(comm, lambda: load_task(parsed.task))
            install_signal_handlers()
            execute(parsed, task, comm, log=say)
    except DiskError as err:  # raised on every rank alike, with rank 0's one message
        _say(comm, f"hsmpi: error: {err.strerror or err}", sys.stderr)
        return EXIT_IO
    except user_errors() as err:
        _say(comm, f"hsmpi: error: {err}", sys.stderr)
        return EXIT_USAGE
    except Stopped as stop:
        _say(comm, f"hsmpi: {stop}", sys.stderr)
        return EXIT_STOPPED
    except BrokenPipeError:  # the reader of our output went away: main ends quietly, this is no failure
        raise
    except NoFiniteModel as err:
        _say(comm, f"hsmpi: error: {err}", sys.stderr)
        return EXIT_NO_MODEL
    except SystemExit as exit_:  # sys.exit(0) from a task is a finished run; any other code a failure
        return 0 if not exit_.code else EXIT_FAILURE
    except Exception:  # reported by ends_every_rank_on_failure (with one rank; with more it aborted)
        return EXIT_FAILURE
    return 0
