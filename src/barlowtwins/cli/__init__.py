"""The ``barlowtwins`` command: parses arguments and calls the library, nothing more.

Parsing imports no torch (``barlowtwins --help`` answers at once); each command imports what it runs.
"""

from __future__ import annotations

import argparse
import sys

from barlowtwins.cli import ablate, detect, evaluate, pretrain, views
from barlowtwins.errors import BarlowTwinsError, Preempted


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barlowtwins", description="Barlow Twins self-supervised learning")
    commands = parser.add_subparsers(dest="command", required=True)
    pretrain.add_commands(commands)
    evaluate.add_commands(commands)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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
