"""The library reports through ``logging`` (silent unless configured); the command line shows the same lines.

Progress lines are INFO on the ``barlowtwins.*`` loggers, the collapse alarm a WARNING. The ``barlowtwins`` command
installs :class:`~barlowtwins.cli.ConsoleHandler` while it runs: INFO on stdout as plain lines, warnings on stderr
as ``barlowtwins: warning: ...``, exactly what the library printed before it logged.
"""

from __future__ import annotations

import logging
import subprocess
import sys

from barlowtwins.cli import console_logging, main
from barlowtwins.recipes import make_config
from barlowtwins.train.loop import pretrain

TINY = {
    "data": {"train": ["digits"], "eval": [], "limit": 64, "workers": 0},
    "train": {"batch_size": 32, "epochs": 1, "precision": "fp32", "time_budget": ""},
    "model": {"projector": "16-16"},
    "monitor": {"picture_every": 0, "probe": False},
}
DRY_RUN = ["ablate", "table6", "--data", "digits", "--eval-data", "digits:test", "--seeds", "1", "--dry-run"]


def test_pretraining_from_python_prints_nothing_and_logs_its_progress(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="barlowtwins")
    run = pretrain(make_config("demo", [TINY, {"train": {"out": str(tmp_path / "run")}}]))
    out, err = capsys.readouterr()
    assert out == ""  # stderr holds tqdm's progress bar only
    assert not any(word in err for word in ("pretraining", "monitor:", "trained"))
    info = [(r.name, r.getMessage()) for r in caplog.records if r.levelno == logging.INFO]
    assert ("barlowtwins.train.monitor", "monitor: off") in info
    loop = [message for name, message in info if name == "barlowtwins.train.loop"]
    assert loop[0].startswith("pretraining barlow_twins: resnet18 + projector 16-16 on digits (train), 64 samples")
    assert loop[-1].startswith("trained ") and loop[-1].endswith(" min")
    assert (run / "checkpoint.pt").is_file()


def test_unconfigured_logging_prints_nothing_and_basic_config_shows_the_lines(tmp_path):
    """In a fresh interpreter (no pytest handlers): silent by default; ``logging.basicConfig`` brings the lines."""
    call = (
        "import logging, sys\n"
        "from barlowtwins.ablations.runner import StudyData, run_study\n"
        "from barlowtwins.config import AblateConfig\n"
        "if sys.argv[1] == 'info': logging.basicConfig(level=logging.INFO, format='%(name)s %(message)s')\n"
        f"run_study('table6', AblateConfig(out={str(tmp_path)!r}, seeds=1), StudyData(('digits',), ('digits:test',)),"
        " dry_run=True)\n"
    )
    quiet = subprocess.run([sys.executable, "-c", call, "quiet"], capture_output=True, text=True, check=True)
    assert (quiet.stdout, quiet.stderr) == ("", "")
    shown = subprocess.run([sys.executable, "-c", call, "info"], capture_output=True, text=True, check=True)
    assert shown.stdout == "" and shown.stderr.count("barlowtwins.ablations.runner ") == 4  # one per variant
    assert " pretrain " in shown.stderr


def test_the_command_line_shows_the_logged_lines_on_stdout(tmp_path, capsys):
    assert main([*DRY_RUN, "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(out.splitlines()) == 4 * 3 and all(" pretrain " in line for line in out.splitlines()[::3])
    assert not logging.getLogger("barlowtwins").handlers  # removed again when the command returns


def test_console_handler_streams_and_prefixes(capsys):
    root = logging.getLogger()
    stray = logging.StreamHandler(sys.stderr)  # as if a dependency had called logging.basicConfig()
    root.addHandler(stray)
    try:
        with console_logging():
            logging.getLogger("barlowtwins.train.loop").info("trained 1.0 min")
            logging.getLogger("barlowtwins.train.monitor").warning("collapse at step %d: %s", 20, "effective rank 0.00")
            logging.getLogger("barlowtwins.train.loop").debug("not shown")
    finally:
        root.removeHandler(stray)
    out, err = capsys.readouterr()
    assert out == "trained 1.0 min\n"
    assert err == "barlowtwins: warning: collapse at step 20: effective rank 0.00\n"  # once: no root duplicate
    logging.getLogger("barlowtwins.train.loop").info("after the command")
    assert capsys.readouterr() == ("", "")
