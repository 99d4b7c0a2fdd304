"""What every subcommand's ``--help`` shares: a description, examples to copy, and each option's default."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


def shown(value: Any) -> str:
    """A default as one would type it on the command line ('' when there is none worth showing)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None or value in ("", (), []):
        return ""
    text = " ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    return text.replace("%", "%%")  # argparse %-formats help strings


class HelpFormatter(argparse.HelpFormatter):
    """Wraps text paragraphs to the terminal, keeps paragraphs with indented lines (examples) as they are, and
    ends each option's help with its default."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        paragraphs = text.split("\n\n")
        kept = [any(line.startswith(" ") for line in p.splitlines()) for p in paragraphs]  # examples
        return "\n\n".join(p if keep else fill(p, width, indent) for p, keep in zip(paragraphs, kept, strict=True))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        switch = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)  # --dry-run, --help
        if switch or not action.option_strings or action.default is argparse.SUPPRESS or "default" in text:
            return text
        default = shown(action.default)
        return f"{text} (default: {default})" if default else text


def add_command(
    commands: argparse._SubParsersAction, name: str, summary: str, description: str, examples: Sequence[str]
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` has ``description`` (paragraphs split by blank lines) and ``examples``."""
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog="examples:\n" + "\n".join(f"  {example}" for example in examples),
        formatter_class=HelpFormatter,
    )
