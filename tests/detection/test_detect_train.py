"""``barlowtwins detect`` end to end on tiny generated sets: the loss falls, the run directory resumes, Mask R-CNN
reports mask AP, and the outputs re-score with pycocotools alone."""

from __future__ import annotations

import json

import pytest
from detect_shapes import make_coco, make_voc

from barlowtwins.cli import main
from barlowtwins.detection.recipes import make_detect_config
from barlowtwins.detection.train import detect

pytestmark = pytest.mark.slow
TINY = {"arch": "resnet18", "min_sizes": [64], "test_size": 64, "max_size": 100, "workers": 0, "log_every": 1}
TINY |= {"box_batch_per_image": 32, "batch_size": 2, "warmup_steps": 2, "warmup_factor": 0.1, "pictures": 2}


def test_fine_tune_loss_falls_and_the_run_resumes(tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="barlowtwins")
    voc = make_voc(tmp_path / "voc", train=8, test=4)
    settings = {**TINY, "data": [str(voc)], "out": str(tmp_path / "run"), "variant": "fpn", "lr": 0.02}
    settings |= {"steps": 12, "milestones": [11], "checkpoint_every": 6}
    report = detect(make_detect_config("detect-cpu", [settings]))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if "loss" in line]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    assert report["steps"] == 12 and set(report["bbox"]) >= {"AP", "AP50", "AP75"} and "voc07" in report
    eval_dir = tmp_path / "run" / "eval"
    assert {p.name for p in eval_dir.iterdir()} == {
        "detection.json",
        "detections.json",
        "ground_truth.json",
        "predictions.png",
    }
    assert json.loads((eval_dir / "detection.json").read_text())["bbox"] == report["bbox"]
    assert list((tmp_path / "run" / "tensorboard").iterdir())
    # the same command again resumes from the finished checkpoint: no step is trained or logged twice
    again = detect(make_detect_config("detect-cpu", [settings]))
    assert "resuming" in caplog.text and again["bbox"] == report["bbox"]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == len(lines) + 1
    changed = [*sum((["--set", f"{k}={json.dumps(v)}"] for k, v in settings.items()), []), "--set", "lr=0.05"]
    assert main(["detect", "--data", str(voc), "--checkpoint", "random", "--out", str(tmp_path / "run"), *changed]) == 2
    assert "other settings (lr: 0.02 -> 0.05)" in capsys.readouterr().err


def test_mask_rcnn_c4_trains_on_generated_coco_and_reports_mask_ap(tmp_path):
    coco = make_coco(tmp_path / "coco", train=8, test=3)
    out = tmp_path / "run"
    argv = ["detect", "--data", str(coco), "--checkpoint", "random", "--arch", "resnet18", "--model", "mask_rcnn"]
    argv += ["--recipe", "coco", "--out", str(out)]
    tiny = {**TINY, "steps": 4, "milestones": [3], "lr": 0.01}
    argv += sum((["--set", f"{k}={json.dumps(v)}"] for k, v in tiny.items()), [])
    assert main(argv) == 0
    report = json.loads((out / "eval" / "detection.json").read_text())
    assert report["model"] == "mask_rcnn" and report["variant"] == "c4" and report["steps"] == 4
    assert set(report["segm"]) >= {"AP", "AP50", "AP75"} and "percent" in report["unit"]
    assert report["backbone"]["init"] == "random"
    detections = json.loads((out / "eval" / "detections.json").read_text())
    assert all(set(d) == {"image_id", "category_id", "bbox", "score", "segmentation"} for d in detections)
    truth = json.loads((out / "eval" / "ground_truth.json").read_text())
    assert {i["id"] for i in truth["images"]} == {108, 109, 110}
    assert [c["name"] for c in truth["categories"]] == ["square", "bar"]


@pytest.mark.distributed
@pytest.mark.parametrize("variant", ["fpn", "c4"])
def test_torchrun_fine_tunes_on_two_processes_writes_once_and_resumes_on_one(tmp_path, variant, capsys, torchrun):
    """Two gloo processes share each global batch (batch norm synchronised over them, C.2's SyncBatchNorm):
    one metrics line per step, one report; the checkpoint then resumes on one process (this one)."""
    import torch

    voc = make_voc(tmp_path / "voc", train=8, test=2)
    out = tmp_path / "run"
    tiny = {**TINY, "batch_size": 4, "steps": 3, "milestones": [2], "lr": 0.01, "variant": variant}
    tiny |= {"box_batch_per_image": 8, "pictures": 0}  # C4's box head is ResNet's layer4 on each sampled box
    sets = sum((["--set", f"{k}={json.dumps(v)}"] for k, v in tiny.items()), [])
    args = ["detect", "--data", str(voc), "--checkpoint", "random", "--recipe", "detect-cpu", "--out", str(out), *sets]

    first = torchrun(args, timeout=600)
    assert first.stdout.count("box AP / AP50 / AP75") == 1  # only the main process evaluates and reports
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 3]  # one line per step (and the final scores), from the main process only
    report = json.loads((out / "eval" / "detection.json").read_text())
    assert report["processes"] == 2 and report["steps"] == 3
    state = torch.load(out / "detector.pt", weights_only=False)
    assert not any(key.startswith("module.") for key in state["model"])  # the bare detector, not the DDP wrapper
    capsys.readouterr()
    assert main(args) == 0  # the same command on one process: resumes from the finished checkpoint, trains no step
    assert "from step 3" in capsys.readouterr().out
    assert json.loads((out / "eval" / "detection.json").read_text())["steps"] == 3


def test_a_diverging_fine_tune_names_the_detection_lr_and_keeps_no_checkpoint(tmp_path, capsys):
    voc = make_voc(tmp_path / "voc", train=4, test=2)
    out = tmp_path / "run"
    tiny = {**TINY, "steps": 3, "milestones": [2], "lr": 1e12, "warmup_steps": 0}
    argv = ["detect", "--data", str(voc), "--checkpoint", "random", "--arch", "resnet18", "--out", str(out)]
    argv += sum((["--set", f"{k}={json.dumps(v)}"] for k, v in tiny.items()), [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "training diverged" in err and "--set lr=5e+11" in err and "lr_weights" not in err
    assert not (out / "detector.pt").exists()
