"""The repository's own files: results stay lean, the project files exist, every import of ``src/`` is declared.

Results under ``docs/`` keep a report, a config, the command and one summary plot (CONTRIBUTING.md). A *summary
plot* is a PNG named ``report.png``, ``summary*.png`` or ``*-vs-*.png`` (e.g. ``knn-vs-minutes.png``); it alone
may exceed 1 MB. Per-step and per-run pictures (the monitor's ``c-step*.png`` / ``spectrum-step*.png``, anything
under a ``monitor/`` directory, a run's ``loss.png``) may not be committed at all.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[2]
MAX_BYTES = 1_000_000
SUMMARY_PLOTS = ("report.png", "summary*.png", "*-vs-*.png")
PER_RUN_PICTURES = ("c-step*.png", "spectrum-step*.png", "loss.png", "c.png", "spectrum.png")
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"yaml": "pyyaml", "PIL": "pillow", "sklearn": "scikit-learn", "cv2": "opencv-python"}


def docs_files() -> list[PurePosixPath]:
    """Files under docs/ that git tracks or would add (not ignored), and that exist in the work tree."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", "docs"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [PurePosixPath(name) for name in listed.split("\0") if name and (REPO / name).is_file()]


def is_summary_plot(path: PurePosixPath) -> bool:
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in SUMMARY_PLOTS)


def is_per_run_picture(path: PurePosixPath) -> bool:
    return "monitor" in path.parts[:-1] or any(fnmatch.fnmatch(path.name, p) for p in PER_RUN_PICTURES)


def test_summary_and_per_run_picture_rules():
    assert is_summary_plot(PurePosixPath("docs/cpu-recipe/curve/knn-vs-minutes.png"))
    assert is_summary_plot(PurePosixPath("docs/ablations/table5/report.png"))
    assert not is_summary_plot(PurePosixPath("docs/ablations/table5/baseline/seed0/loss.png"))
    assert is_per_run_picture(PurePosixPath("docs/x/run/monitor/c-step000780.png"))
    assert is_per_run_picture(PurePosixPath("docs/x/run/monitor/c.png"))
    assert is_per_run_picture(PurePosixPath("docs/x/runs/a/loss.png"))
    assert not is_per_run_picture(PurePosixPath("docs/x/summary-loss.png"))


def test_no_result_file_above_1_mb_except_summary_plots():
    sizes = {path: (REPO / path).stat().st_size for path in docs_files()}
    large = [f"{p} ({size:,} bytes)" for p, size in sizes.items() if size > MAX_BYTES and not is_summary_plot(p)]
    assert large == []


def test_no_per_step_or_per_run_pictures_under_docs():
    assert [str(p) for p in docs_files() if is_per_run_picture(p)] == []


@pytest.mark.parametrize("name", ["LICENSE", "CHANGELOG.md", "CONTRIBUTING.md", ".pre-commit-config.yaml"])
def test_project_file_exists(name):
    assert (REPO / name).is_file() and (REPO / name).stat().st_size > 0


def test_license_is_the_one_pyproject_names():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'license = { text = "MIT" }' in pyproject and "Operating System :: POSIX" in pyproject
    assert (REPO / "LICENSE").read_text().startswith("MIT License")


def test_pre_commit_runs_ruff_check_and_format():
    config = (REPO / ".pre-commit-config.yaml").read_text()
    assert "ruff check" in config and "ruff format" in config


def third_party_imports() -> dict[str, set[str]]:
    """Top-level module names that ``src/`` imports (absolute imports only), minus the stdlib and itself,
    each with the files that import it."""
    found: dict[str, set[str]] = {}
    for path in (REPO / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "barlowtwins":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def declared_distributions() -> tuple[set[str], set[str]]:
    """(core dependencies, every optional extra's) of pyproject.toml, as normalised distribution names."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}

    extras = set().union(*(names(r) for r in project.get("optional-dependencies", {}).values()))
    return names(project["dependencies"]), extras


def test_every_third_party_import_of_src_is_declared():
    """A module ``src/`` imports is a core dependency, or an extra's when every import of it is inside a function
    (timm: ``--arch timm:NAME``); ``braceexpand`` was imported but not declared."""
    core, extras = declared_distributions()
    missing = []
    for module, files in sorted(third_party_imports().items()):
        distribution = DISTRIBUTIONS.get(module, module).lower().replace("_", "-")
        if distribution not in core and not (distribution in extras and _only_lazy(module, files)):
            missing.append(f"{module} ({distribution}), imported by {sorted(files)}")
    assert missing == []


def _only_lazy(module: str, files: set[str]) -> bool:
    """Whether every import of ``module`` in ``files`` sits inside a function (so the package imports without it)."""
    for name in files:
        tree = ast.parse((REPO / name).read_text())
        for node in tree.body:
            imported = []
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported = [node.module]
            if any(name.split(".")[0] == module for name in imported):
                return False
    return True


def test_braceexpand_is_imported_and_declared():
    """The case that was wrong: src/barlowtwins/data/shards.py imports braceexpand."""
    core, _ = declared_distributions()
    assert "braceexpand" in third_party_imports() and "braceexpand" in core
