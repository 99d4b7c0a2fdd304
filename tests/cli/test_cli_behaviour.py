"""How ``pretrain``, ``knn``, ``linear`` and ``export`` meet a newcomer's mistakes: the recipe in use said at
start-up, data the recipe cannot fit, evaluation data that cannot work refused before anything is written, a
finished run left as it is, and settings that contradict the weights refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from barlowtwins.cli import main
from barlowtwins.recipes import make_config, override

FAST = ["--workers", "0", "--precision", "fp32", "--projector", "32-32"]
# A run of 2 steps on 64 digits, kNN on 32 held-out ones at the end; no kNN or pictures while training.
TINY_RUN = [
    "pretrain",
    "--recipe",
    "demo",
    "--data",
    "digits",
    "--limit",
    "64",
    "--eval-limit",
    "32",
    "--batch-size",
    "32",
    "--epochs",
    "1",
    *FAST,
    "--set",
    "monitor.knn_every_epochs=0",
    "--set",
    "monitor.picture_every=0",
]
KNN_DATA = ["--train-data", "digits", "--test-data", "digits:test", "--limit", "32", "--workers", "0"]


def images(folder: Path, count: int, classes: tuple[str, ...] = ()) -> Path:
    """``count`` random 8x8 PNGs in ``folder`` (flat: unlabelled), or as many in each class sub-folder."""
    rng = np.random.default_rng(0)
    for sub in classes or ("",):
        (folder / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / sub / f"{i}.png")
    return folder


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` and its bytes, but the run lock (it holds the pid of the last command)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def refused(capsys, *argv: str) -> str:
    """The one error line of a command that must exit with status 2 (what it said before on ``refused.said``)."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    said = capsys.readouterr()
    err = said.err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("barlowtwins: error: ")
    refused.said = said.out
    return err


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished tiny run with its kNN results."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main([*TINY_RUN, "--out", str(out)]) == 0
    assert (out / "eval" / "knn.json").is_file()
    return out


def test_no_recipe_says_so_and_data_too_small_for_it_names_a_small_data_recipe(tmp_path, capsys):
    folder = images(tmp_path / "my_folder", 60)
    out = tmp_path / "runs" / "x"
    line = refused(capsys, "pretrain", "--data", str(folder), "--out", str(out))
    assert "batch size 2048 is larger than the dataset (60 samples)" in line
    assert "--batch-size 32" in line and "--recipe cifar10-cpu" in line and "--recipe demo" in line
    assert "no --recipe: using the imagenet recipe (the paper's settings: resnet50, batch 2048" in refused.said
    assert make_config() == make_config("imagenet")  # what that line says: no recipe is the imagenet recipe
    assert not (tmp_path / "runs").exists()


def test_views_names_its_own_way_to_set_a_batch_that_fits(tmp_path, capsys):
    """``views`` has no --batch-size: the shared batch check names the --set key that sets it."""
    folder = images(tmp_path / "my_folder", 60)
    line = refused(
        capsys, "views", "--data", str(folder), "--recipe", "cifar10-cpu", "--count", "2", "--out", str(tmp_path / "v")
    )
    assert "batch size 128 is larger than the dataset (60 samples)" in line
    assert "pass --set train.batch_size=32 (or less)" in line and "--batch-size" not in line


def test_data_replacing_the_recipe_data_drops_its_evaluation_data_unless_given_again(tmp_path, capsys):
    assert make_config("demo").data.eval == ("digits:test",)
    assert make_config("demo", [override("data.train", ["my_folder"])]).data.eval == ()
    assert make_config("demo", [override("data.train", ["digits"])]).data.eval == ("digits:test",)  # not replaced
    again = [override("data.train", "my_folder"), override("data.eval", ["digits:test"])]
    assert make_config("demo", again).data.eval == ("digits:test",)
    folder = images(tmp_path / "my_unlabelled_folder", 20)
    line = refused(capsys, "pretrain", "--recipe", "demo", "--data", str(folder), "--out", str(tmp_path / "o"))
    assert "batch size 64 is larger than the dataset (20 samples)" in line
    said = refused.said
    assert "--data replaces the demo recipe's training data, so its evaluation data (digits:test) is dropped" in said
    assert "pass --eval-data" in said and not (tmp_path / "o").exists()
    line = refused(capsys, "demo", "--data", str(folder), "--out", str(tmp_path / "o"))  # it prints the kNN result
    assert "demo prints kNN on --eval-data" in line and not (tmp_path / "o").exists()


def test_evaluation_that_would_fail_after_training_is_refused_before_anything_is_written(tmp_path, capsys):
    unlabelled = images(tmp_path / "unlabelled", 20)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    before = snapshot(out)
    common = ["pretrain", "--recipe", "demo", "--batch-size", "16", *FAST, "--out", str(out)]

    line = refused(capsys, *common, "--data", str(unlabelled), "--eval-data", "digits:test")
    assert "--eval-data needs labelled training data" in line and "has no labels" in line
    labelled = images(tmp_path / "labelled", 8, ("a", "b", "c"))
    line = refused(capsys, *common, "--data", str(labelled), "--eval-data", str(unlabelled))
    assert "--eval-data" in line and "has no labels" in line
    other = images(tmp_path / "other", 4, ("a", "c"))
    line = refused(capsys, *common, "--data", str(labelled), "--eval-data", str(other))
    assert "classes differ" in line and "a, c" in line and "a, b, c" in line
    line = refused(capsys, *common, "--data", "digits", "--eval-data", str(tmp_path / "nowhere"))
    assert "--eval-data: no such file or directory" in line
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_finished_run_re_run_changes_nothing_and_eval_only_evaluates_it_again(run, tmp_path, capsys):
    knn = ["knn", "--checkpoint", str(run), *KNN_DATA]
    assert main([*knn, "--k", "5", "20"]) == 0  # a later evaluation writes its own results into eval/knn.json
    results = run / "eval" / "knn.json"
    assert set(json.loads(results.read_text())["results"]["pretrained"]["top1"]) == {"5", "20"}
    before = snapshot(run)
    capsys.readouterr()
    assert main([*TINY_RUN, "--out", str(run)]) == 0
    said = capsys.readouterr().out
    assert f"{run} is finished (step 2): nothing to do, nothing changed; --eval-only" in said
    assert "resuming" not in said and snapshot(run) == before  # knn.json byte for byte among them

    line = refused(capsys, *TINY_RUN, "--epochs", "2", "--out", str(run), "--eval-only")
    assert "--eval-only" in line and "is not finished (step 2 of 4)" in line and snapshot(run) == before
    line = refused(capsys, *TINY_RUN, "--out", str(tmp_path / "none"), "--eval-only")
    assert "holds no run to evaluate" in line and not (tmp_path / "none").exists()

    assert main([*TINY_RUN, "--out", str(run), "--eval-only"]) == 0
    assert "is rewritten" in capsys.readouterr().out
    assert set(json.loads(results.read_text())["results"]["pretrained"]["top1"]) == {"20", "200"}  # the recipe's k
    results.unlink()  # evaluation interrupted after training: the re-run evaluates, nothing to overwrite
    assert main([*TINY_RUN, "--out", str(run)]) == 0
    assert "has no" in capsys.readouterr().out and results.is_file()


def test_settings_that_contradict_the_weights_are_refused_naming_both(run, tmp_path, capsys):
    before = snapshot(run)
    knn = ["knn", "--checkpoint", str(run), *KNN_DATA]
    line = refused(capsys, *knn, "--arch", "resnet50")
    assert "arch 'resnet50' contradicts" in line and "arch 'resnet18'" in line and "drop --arch" in line
    line = refused(capsys, *knn, "--image-size", "32")
    assert "--image-size 32 contradicts" in line and "8 px" in line
    linear = ["linear", "--checkpoint", str(run / "checkpoint.pt"), *KNN_DATA, "--image-size", "32"]
    assert "--image-size 32 contradicts" in refused(capsys, *linear)
    assert snapshot(run) == before

    exported = tmp_path / "backbone.pth"
    assert main(["export", "--checkpoint", str(run), "--out", str(exported)]) == 0
    exports = snapshot(tmp_path)
    knn = ["knn", "--checkpoint", str(exported), *KNN_DATA]
    assert "--image-size 32 contradicts" in refused(capsys, *knn, "--image-size", "32")
    line = refused(capsys, *knn, "--no-small-stem")
    assert "small_stem False contradicts" in line and "small_stem True" in line and "drop --no-small-stem" in line
    with pytest.raises(SystemExit) as stop:  # export takes the run's own size: no such flag
        main(["export", "--checkpoint", str(run), "--out", str(exported), "--image-size", "32"])
    assert stop.value.code == 2 and "unrecognized arguments: --image-size 32" in capsys.readouterr().err
    assert snapshot(tmp_path) == exports
