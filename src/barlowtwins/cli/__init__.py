"""The ``barlowtwins`` command: parses arguments and calls the library, nothing more.

Parsing imports no torch (``barlowtwins --help`` answers at once); each command imports what it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from importlib.metadata import version

from barlowtwins.cli import ablate, detect, evaluate, neighbours, pretrain, views
from barlowtwins.cli.helptext import HelpFormatter
from barlowtwins.errors import BarlowTwinsError, Preempted

EXAMPLES = """examples:
  barlowtwins demo                      pretrain on the built-in digits, kNN before/after (a few CPU minutes)
  barlowtwins pretrain --recipe cifar10-cpu --time-budget 20m --data cifar10 --eval-data cifar10:test --download
  barlowtwins COMMAND --help            what a command does, an example, and its defaults"""


def _help_recipe(argv: Sequence[str]) -> str | None:
    """The --recipe of ``pretrain ... --help``, whose help then shows that recipe's values (else None)."""
    if not argv or argv[0] != "pretrain" or not {"-h", "--help"} & set(argv):
        return None
    scan = argparse.ArgumentParser(add_help=False)
    scan.add_argument("--recipe")
    return scan.parse_known_args(list(argv[1:]))[0].recipe


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The whole command line; ``argv`` (the arguments about to be parsed) only picks the recipe whose
    values ``pretrain --recipe R --help`` shows."""
    parser = argparse.ArgumentParser(
        prog="barlowtwins",
        description="Barlow Twins self-supervised learning (Zbontar et al., ICML 2021): pretrain an encoder, "
        "evaluate it as the paper does, export it.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"barlowtwins {version('barlowtwins')}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pretrain.add_commands(commands, _help_recipe(argv))
    evaluate.add_commands(commands)
    neighbours.add_commands(commands)
    ablate.add_commands(commands)
    detect.add_commands(commands)
    views.add_commands(commands)
    return parser


def _one_line(error: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it with a traceback."""
    text = str(error).strip()
    if "Traceback" in text:
        text = text.splitlines()[-1].split("BarlowTwinsError: ", 1)[-1]
    return text


class ConsoleHandler(logging.Handler):
    """The command line's view of the library's log: info lines on stdout as they are, warnings on stderr as
    ``barlowtwins: warning: ...`` written around a progress bar (the library itself configures no handler)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING:
                from tqdm import tqdm

                tqdm.write(f"barlowtwins: warning: {message}", file=sys.stderr)
            else:
                print(message, file=sys.stdout, flush=True)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def console_logging() -> Iterator[None]:
    """Show the ``barlowtwins`` loggers' INFO and above on the console while a command runs, then restore them."""
    logger = logging.getLogger("barlowtwins")
    handler, saved = ConsoleHandler(), (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a root handler someone else configured must not print every line twice
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser(argv).parse_args(argv)  # a bad --recipe with --help is an error line too
        with console_logging():
            args.run(args)
    except BarlowTwinsError as error:
        print(f"barlowtwins: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Preempted as stop:
        print(f"barlowtwins: {stop}", file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:
        print(
            "barlowtwins: interrupted; the last checkpoint is intact, run the same command to resume",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
