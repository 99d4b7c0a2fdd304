"""MkDocs hook: the CLI reference page, written at build time from the argparse parsers themselves.

Every subcommand's ``format_help()`` becomes a section of ``reference/cli.md``, so the page follows the parsers
(help texts, defaults, ``--version``) without a copy to keep in step. Parsing imports no torch.
"""

from __future__ import annotations

import argparse
import os

from mkdocs.structure.files import File

PAGE = "reference/cli.md"


def _help(parser: argparse.ArgumentParser) -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width; the page should not depend on it
    return parser.format_help().rstrip()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_markdown() -> str:
    """The page: the top-level help, then one section per subcommand in the parser's order."""
    from barlowtwins.cli import build_parser

    parser = build_parser()
    commands = _subcommands(parser)
    parts = [
        "# Command-line reference",
        "",
        "Generated from the parsers in `src/barlowtwins/cli/` when the site is built "
        "(`docs/hooks/cli_reference.py`); `barlowtwins COMMAND --help` prints the same text.",
        "",
        "```text",
        _help(parser),
        "```",
    ]
    for name, sub in commands.items():
        parts += ["", f"## `barlowtwins {name}`", "", "```text", _help(sub), "```"]
    return "\n".join(parts) + "\n"


def on_files(files, config):
    """Add the generated page to the site's files (MkDocs >= 1.6)."""
    files.append(File.generated(config, PAGE, content=cli_markdown()))
    return files
