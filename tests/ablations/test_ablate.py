"""``barlowtwins ablate``: the studies' definitions, the verdicts, the dry run, and a tiny end-to-end study."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from torch import nn

from barlowtwins.ablations import runner, studies
from barlowtwins.ablations.report import _markdown, collect, verdict
from barlowtwins.ablations.runner import Run, StudyData, check_same_settings, commands, plan
from barlowtwins.cli import main
from barlowtwins.config import AblateConfig
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.methods import refuse_unread
from barlowtwins.models.heads import build_projector
from barlowtwins.recipes import make_config, parse_override

SRC = str(Path(__file__).resolve().parents[2] / "src")
RECIPE_WIDTH = 1024  # cifar10-cpu.yaml: projector 1024-1024-1024


def _summary(mean, std=0.0):
    return {"mean": mean, "std": std}


def test_verdicts_compare_against_the_noise():
    base = _summary(50.0, 0.5)
    assert verdict("lower", _summary(47.0, 0.5), base)[0] == "holds"
    assert verdict("lower", _summary(49.5, 0.5), base)[0] == "within noise"
    assert verdict("lower", _summary(53.0, 0.5), base)[0] == "contradicted"
    assert verdict("much_lower", _summary(47.0), base)[0] == "holds in direction"
    assert verdict("much_lower", _summary(40.0), base)[0] == "holds"
    assert verdict("similar", _summary(50.4), base)[0] == "holds"
    assert verdict("higher", _summary(52.0), base)[0] == "holds"
    assert verdict(None, _summary(52.0), None)[0] == "no claim"
    none = {"mean": None, "std": None, "values": []}
    assert verdict("much_lower", none, base, diverged=True)[0] == "holds"  # diverging is the extreme of lower
    assert verdict("similar", none, base, diverged=True)[0] == "contradicted"
    assert verdict("lower", none, base)[0] == "no data"
    assert verdict("slightly_lower", _summary(48.0), base)[0] == "holds"
    assert verdict("slightly_lower", _summary(38.0), base) == (
        "holds in direction",
        "-12.0 p.p. vs reference (noise 1.0); far more than the paper's slight drop",
    )  # a failed (not diverged) run says nothing


def test_a_run_whose_loss_became_non_finite_counts_as_diverged(tmp_path):
    from barlowtwins.ablations.runner import _diverged

    log = tmp_path / "run.log"
    line = "barlowtwins: error: training diverged: the loss became non-finite at step 100; no checkpoint was written"
    log.write_text(f"$ barlowtwins pretrain ...\n{line}\n")
    assert _diverged(log)
    log.write_text("$ barlowtwins pretrain ...\nbarlowtwins: error: cannot read shard x.tar (truncated)\n")
    assert not _diverged(log)


def test_report_keeps_the_best_grid_point_shows_every_point_and_names_diverged_runs(tmp_path):
    spec = studies.batch_size((64, 256), (0.1, 0.3, 1.0))
    linear = {"barlow_twins-b64": (30.0, 40.0, 35.0), "barlow_twins-b256": (20.0, 25.0, 38.0)}
    linear["simclr-b64"] = (None, None, None)  # every run failed: empty cells, no edge
    spec["variants"] = {name: spec["variants"][name] for name in linear}
    runs = []
    for variant, values in linear.items():
        for lr, value in zip(("lr0.1", "lr0.3", "lr1"), values, strict=True):
            path = tmp_path / f"{variant}__{lr}" / "seed0"
            runs.append(Run(variant, lr, 0, path, ()))
            if value is None:
                continue
            (path / "eval").mkdir(parents=True)
            pretrained = {"pretrained": {"top1": value}}
            (path / "eval" / "linear-fast.json").write_text(json.dumps({"results": pretrained}))
            knn = {"pretrained": {"top1": {"200": value - 5}}}
            (path / "eval" / "knn.json").write_text(json.dumps({"results": knn}))
    status = {str(r.path): "diverged" for r in runs if r.variant == "simclr-b64"}
    status[str(tmp_path / "barlow_twins-b256__lr0.1" / "seed0")] = "diverged"
    rows = {r["variant"]: r for r in collect(spec, runs, status)}
    b64, b256 = rows["barlow_twins-b64"], rows["barlow_twins-b256"]
    assert (b64["point"], b64["ours"]["linear"]["mean"], b64["best_at_edge"]) == ("lr0.3", 40.0, False)
    assert (b256["point"], b256["ours"]["knn"]["mean"], b256["best_at_edge"]) == ("lr1", 33.0, True)
    assert [b256["grid"][p]["linear"]["mean"] for p in ("lr0.1", "lr0.3", "lr1")] == [20.0, 25.0, 38.0]
    assert rows["simclr-b64"]["grid"]["lr0.3"]["linear"]["mean"] is None
    assert not rows["simclr-b64"]["best_at_edge"] and rows["simclr-b64"]["diverged"]
    assert not b256["diverged"] and b256["why"].endswith("; 1 of 3 runs diverged, left out")
    report = {"title": "t", "command": "c", "our_metrics": "m", "paper_metric": "p", "rows": list(rows.values())}
    report["random_init_floor"] = {"linear": 10.0, "knn": 9.0}
    text = _markdown(report, AblateConfig(seeds=1))
    assert "| barlow_twins-b64 | 30.0 (25.0) | **40.0 (35.0)** | 35.0 (30.0) |" in text
    assert "| simclr-b64 | — | — | — |" in text
    assert "widen the grid): barlow_twins-b256\n\nDiverged (non-finite loss; left out of their row's mean" in text
    assert "see logs/): " + str(tmp_path / "barlow_twins-b256__lr0.1" / "seed0") + "\n\n![ours" in text


@pytest.mark.parametrize("name", studies.STUDY_NAMES)
def test_every_variant_makes_a_valid_config(name):
    spec = studies.study(name, (64, 128), (0.3,), (128, 16384))
    runs = plan(spec, AblateConfig(seeds=2, out="x"), StudyData(("digits",), ("digits:test",)))
    assert len(runs) == 2 * sum(len(v.get("grid") or {"": 0}) for v in spec["variants"].values())
    for run in runs[::2]:
        config = make_config("cifar10-cpu", [parse_override(o) for o in run.overrides])  # raises on a bad override
        refuse_unread(config.model.method, config.model, config.loss)  # e.g. the recipe's lambda under SimCLR
        if name == "projector-depth":  # only the depth changes: every linear layer at the recipe's width
            layers = [m for m in build_projector(512, config.model.projector) if isinstance(m, nn.Linear)]
            assert [m.out_features for m in layers] == [RECIPE_WIDTH] * int(run.variant.removeprefix("depth-"))


def test_study_contents_follow_the_paper():
    t5 = studies.table5()["variants"]
    assert [t5[k]["paper"] for k in ("baseline", "invariance_only", "no_bn_cross_cov", "cross_entropy")] == [
        71.4,
        57.3,
        53.4,
        63.3,
    ]
    assert studies.table6()["variants"]["predictor_stop_gradient"]["paper"] == 61.3
    widths = studies.projector_width((128, 16384))["variants"]["width-16384"]
    assert "loss.formulation=gram" in widths["set"] and widths["reference"] == "width-128"
    crop_only = studies.augmentations()["variants"]["crop_only"]["set"]
    assert {"augment.flip_p=0", "augment.jitter_p=0", "augment.solarize_p=[0,0]"} <= set(crop_only)
    depth = studies.projector_depth()["variants"]  # "more layers ... saturation of the performance for 3 layers"
    assert list(depth) == ["depth-1", "depth-2", "depth-3", "depth-4"]
    assert [(r["expect"], r["reference"]) for r in depth.values()] == [
        (None, None),
        ("higher", "depth-1"),
        ("higher", "depth-2"),
        ("similar", "depth-3"),
    ]
    bs = studies.batch_size((256,), (0.1, 0.3))["variants"]
    assert set(bs) == {"barlow_twins-b256", "simclr-b256", "byol-b256"} and bs["barlow_twins-b256"]["paper"] == 70.7


def test_dry_run_prints_every_command(tmp_path, capsys):
    args = ["ablate", "table6", "--data", "digits", "--eval-data", "digits:test", "--seeds", "2"]
    assert main([*args, "--out", str(tmp_path), "--dry-run", "--limit", "96", "--set", "model.projector=32-32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 * 2 * 3 and sum(" pretrain " in line for line in lines) == 8
    assert sum("--random-init" in line for line in lines) == 2  # the floor beside the first run only
    assert not list(tmp_path.iterdir())


def test_a_study_refuses_a_run_made_with_other_settings(tmp_path, monkeypatch):
    """A recipe edited after a run was made (here: its lambda) must not let a study mix two configurations:
    the run's saved config.yaml is held against what the run's command resolves to now."""
    monkeypatch.setenv("PYTHONPATH", SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    settings = AblateConfig(recipe="demo", out=str(tmp_path), seeds=1)
    data = StudyData(("digits",), ("digits:test",))
    run = plan(studies.study("table6", (64,), (0.3,), (128,)), settings, data)[0]
    pretrain = commands(run, settings, data, floor=True)["pretrain"]
    printed = subprocess.run([*pretrain, "--print-config"], capture_output=True, text=True, check=True).stdout
    run.path.mkdir(parents=True)
    (run.path / "config.yaml").write_text(printed)
    check_same_settings(run, pretrain)  # the same settings: reused
    saved = yaml.safe_load(printed)
    saved["loss"]["lambd"], saved["knn"]["k"] = 0.125, [7]  # knn.k is evaluation only: not a difference
    (run.path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(BarlowTwinsError, match=r"seed0 was made with other settings .*\(loss\.lambd: 0\.125 -> "):
        check_same_settings(run, pretrain)


def _barlowtwins_here(command: list[str], stdout=None, stderr=None, capture_output=False, text=False, check=False):
    """``subprocess.run`` for the runner's ``python -m barlowtwins ...`` commands, run through the console script's
    entry point (``cli.main``) in this process: the same arguments, exit status and output, without a new Python
    importing torch for each (7 s each on a 2-core AVX2 EPYC, 80 of the test's 85 s)."""
    assert command[:3] == [sys.executable, "-m", "barlowtwins"], command
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err if capture_output else out):
        code = main(command[3:])
    if stdout is not None:
        stdout.write(out.getvalue())
    return subprocess.CompletedProcess(command, code, out.getvalue(), err.getvalue())


def test_each_step_runs_as_a_subprocess_logged_with_its_command(tmp_path):
    """The runner's own step: the command line on top of the log, then everything the process printed."""
    log = tmp_path / "logs" / "run.log"
    command = [sys.executable, "-c", "import sys; print('trained'); sys.exit(3)"]
    assert runner._execute(command, log) is False
    assert runner._execute([sys.executable, "-c", "print('scored')"], log) is True
    lines = log.read_text().splitlines()
    assert lines[1:] == ["trained", f"$ {sys.executable} -c 'print('\"'\"'scored'\"'\"')'", "scored"]
    assert lines[0].startswith("$ ") and lines[0].endswith("sys.exit(3)'")


@pytest.mark.slow
def test_tiny_study_writes_the_report_and_skips_finished_runs(tmp_path, monkeypatch, capsys):
    """The projector-width study at two widths, end to end: each run's pretrain, knn and linear commands, the
    floor, the report with each row against the one before it; re-run, it skips both. (Two runs: the runner
    treats every study's rows alike, and each study's variants are checked to make valid configs above.) The
    commands run through ``cli.main`` in this process; the test above runs the runner's subprocess step."""
    monkeypatch.setattr(runner, "subprocess", SimpleNamespace(run=_barlowtwins_here, STDOUT=subprocess.STDOUT))
    out = tmp_path / "pw"
    args = ["ablate", "projector-width", "--widths", "8", "16", "--data", "digits", "--eval-data", "digits:test"]
    args += ["--recipe", "demo", "--seeds", "1", "--time-budget", "", "--limit", "64", "--eval-limit", "40"]
    args += ["--workers", "0", "--linear-epochs", "3", "--out", str(out)]
    for override in ("train.epochs=1", "train.batch_size=32", "model.projector=16-16", "train.precision=fp32"):
        args += ["--set", override]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["variant"] for r in report["rows"]] == ["width-8", "width-16"]
    assert all(r["ours"]["linear"]["mean"] is not None and r["ours"]["knn"]["mean"] is not None for r in report["rows"])
    assert report["random_init_floor"]["linear"] is not None
    for width in (8, 16):  # the hidden layers keep the base's width (--set model.projector=16-16)
        saved = yaml.safe_load((out / f"width-{width}" / "seed0" / "config.yaml").read_text())
        assert saved["model"]["projector"] == f"16-16-{width}" and saved["loss"]["formulation"] == "gram"
    text = (out / "report.md").read_text()
    assert "| width-8 | keeps improving with the output width | within noise:" in text  # width-16's reference
    assert "no claim: reference row" in text and (out / "report.png").is_file()
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 2
