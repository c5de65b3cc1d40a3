"""Command line: flags + TOML -> a validated Config, and the abort-on-exception wrapper.

Exit status: 0 done; 2 a usage error (bad flag, config value, task, space,
data, checkpoint or output folder), reported once by rank 0 before any
training; 1 an exception during the run, which aborts every rank
(`MPI_Abort`) so none waits forever in a collective; 75 (EX_TEMPFAIL) stopped
by SIGTERM, SIGINT or SIGUSR1 at a session boundary with a checkpoint
written: run again with `--resume auto` to continue; 3 no member ever had a
finite validation loss (the results file is written, marked finite_model = false).
Usage errors are raised instead of argparse's print-and-exit (UsageError), so
only rank 0 prints.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from collections.abc import Sequence
from typing import Any, NoReturn

from hsmpi import __version__
from hsmpi.algorithm.sampling import SAMPLERS
from hsmpi.algorithm.selection import SELECTIONS
from hsmpi.config import Config
from hsmpi.engine.job import Stopped
from hsmpi.engine.resume import resume_options
from hsmpi.engine.signals import install as install_signal_handlers
from hsmpi.errors import NoFiniteModel, UsageError, agreed, ends_every_rank_on_failure, user_errors
from hsmpi.parallel.comm import SerialComm, world
from hsmpi.tasks import BUILTIN, load_task
from hsmpi.text import say

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_STOPPED = 75
EXIT_NO_MODEL = 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            raise UsageError(message.strip())
        raise SystemExit(status)


def interval_arg(text: str) -> float | str:
    """--checkpoint-interval: 'auto' or a number of seconds (checked by Config)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'auto', got {text!r}") from None


def build_parser(is_root: bool = True) -> argparse.ArgumentParser:
    p = _Parser(prog="python -m hsmpi", add_help=False,
                description="Hypersearch as an MPI job: mpirun -n 8 python -m hsmpi [options]. "
                            "Also: python -m hsmpi doctor | report RESULTS (or plot RESULTS) | replay RESULTS",
                argument_default=argparse.SUPPRESS)
    p.add_argument("-h", "--help", action="store_true", default=False, help="show this help and exit")
    p.add_argument("--version", action="store_true", default=False, help="print the version and exit")
    p.add_argument("--config", metavar="TOML", default=None, help="read options from a TOML file (flags win)")
    p.add_argument("--task", help=f"built-in ({', '.join(BUILTIN)}), package.module:Class or file.py:Class")
    p.add_argument("-S", "--population", type=int, help="members S (default: max(8, ranks x members-per-rank))")
    p.add_argument("-M", "--epochs", type=int, help="epochs in all, M (default 30)")
    p.add_argument("-m", "--sessions", type=int, help="sessions m <= M (default 6)")
    p.add_argument("--seed", type=int, help="run seed (default 0)")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), help="neighbourhood sampler (default urs)")
    p.add_argument("--radius", type=float, help="urs: box half-width in normalised units (default 0.15)")
    p.add_argument("--radius-final", type=float,
                   help="urs: shrink the box geometrically from --radius to this by the last session (default: none)")
    p.add_argument("--resample-probability", type=float, help="perturb: chance of a fresh draw (default 0.25)")
    p.add_argument("--select", choices=list(SELECTIONS), help="selection rule (default winner)")
    p.add_argument("--truncation-fraction", type=float, help="truncation: bottom/top fraction (default 0.25)")
    p.add_argument("--elitism", action=argparse.BooleanOptionalAction,
                   help="return the best member ever seen on validation; --no-elitism: the last winner (default on)")
    p.add_argument("--holdout", type=float, metavar="F",
                   help="hold back this fraction of the validation split to judge the returned model (default 0)")
    p.add_argument("--out", help="output folder (default hsmpi-out)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="device (default auto)")
    p.add_argument("--members-per-rank", type=int, help="K members per rank, trained one after the other")
    p.add_argument("--independent-init", action="store_true", help="each member its own initial weights")
    p.add_argument("--batch-size", type=int, help="training batch size when the space has none (default 64)")
    p.add_argument("--threads", type=int, help="torch threads per rank (default: cores / ranks per node)")
    p.add_argument("--resume", metavar="PATH|auto",
                   help="continue from a checkpoint file or folder; auto: the --out folder's, if it has one")
    p.add_argument("--keep-checkpoints", type=int, help="checkpoints to keep besides the backup (default 1)")
    p.add_argument("--checkpoint-interval", type=interval_arg, metavar="SECONDS|auto",
                   help="seconds between checkpoints; 0: after every session; auto: about 2%% of the run's time "
                        "(default). The last session and any stop always get one")
    p.add_argument("--progress", action="store_true",
                   help="a live bar within each session on a terminal (quiet when output is not a terminal)")
    p.add_argument("--export-top", type=int, metavar="K",
                   help="write best.pt and the final population's best K as PyTorch state dicts (default 3)")
    p.add_argument("--vectorize", choices=["auto", "on", "off"],
                   help="train a rank's members as one batched model (default auto: on for CUDA, off on CPU)")
    p.add_argument("--stop-after", type=int, metavar="K",
                   help="stop after session K with a checkpoint and exit status 75 (continue with --resume)")
    return p


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"config file {path!r} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"config file {path!r} is not valid TOML: {err}") from None
    except OSError as err:
        raise UsageError(f"cannot read config file {path!r}: {err.strerror}") from None
    fields = set(Config.field_names())
    options = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in fields:
            raise UsageError(f"config file {path!r}: unknown option {key!r}; known: {', '.join(sorted(fields))}")
        options[name] = value
    return options


def parse(argv: Sequence[str], comm: SerialComm | None = None) -> Config | str:
    """Flags (over TOML, over a resumed checkpoint's settings) -> Config; or 'help' / 'version'."""
    comm = comm or SerialComm()

    def local() -> dict[str, Any]:
        args = vars(build_parser().parse_args(list(argv)))
        config_path = args.pop("config")
        options = _read_toml(config_path) if config_path else {}
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
    from hsmpi.engine.job import execute

    if argv and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](comm, list(argv[1:]))
    try:
        with ends_every_rank_on_failure(comm, (*user_errors(), Stopped, NoFiniteModel)):
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
    except user_errors() as err:
        _say(comm, f"hsmpi: error: {err}", sys.stderr)
        return EXIT_USAGE
    except Stopped as stop:
        _say(comm, f"hsmpi: {stop}", sys.stderr)
        return EXIT_STOPPED
    except NoFiniteModel as err:
        _say(comm, f"hsmpi: error: {err}", sys.stderr)
        return EXIT_NO_MODEL
    except SystemExit as exit_:  # sys.exit(0) from a task is a finished run; any other code a failure
        return 0 if not exit_.code else EXIT_FAILURE
    except Exception:  # reported by ends_every_rank_on_failure (with one rank; with more it aborted)
        return EXIT_FAILURE
    return 0
