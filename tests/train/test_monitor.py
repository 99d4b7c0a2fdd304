"""Watching a run: effective rank, C's block, the collapse alarm, the online probe, and a tiny monitored run."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from barlowtwins.checkpoint import load_checkpoint
from barlowtwins.cli import main
from barlowtwins.losses.barlow_twins import barlow_twins_terms
from barlowtwins.recipes import make_config
from barlowtwins.train.build import build_monitor
from barlowtwins.train.monitor import (
    Monitor,
    OnlineProbe,
    collapse_alarm,
    constant_fraction,
    cross_correlation,
    effective_rank,
    singular_values,
)

TINY = [
    "--data",
    "digits",
    "--recipe",
    "demo",
    "--limit",
    "96",
    "--batch-size",
    "32",
    "--projector",
    "32-32",
    "--workers",
    "0",
    "--precision",
    "fp32",
    "--epochs",
    "1",
]


def test_effective_rank_of_known_spectra():
    assert effective_rank(torch.linalg.svdvals(torch.eye(16))) == pytest.approx(16, rel=1e-5)  # all equal: full
    u, v = torch.randn(40, 1), torch.randn(1, 24)
    assert effective_rank(torch.linalg.svdvals(u @ v)) == pytest.approx(1, abs=1e-3)  # rank one
    p = (0.75, 0.25)  # sigma (3, 1, 0, 0): exp of the entropy of (3/4, 1/4), by hand
    assert effective_rank(torch.tensor([3.0, 1.0, 0.0, 0.0])) == pytest.approx(
        math.exp(-sum(x * math.log(x) for x in p)), rel=1e-5
    )
    assert effective_rank(torch.zeros(5)) == 0.0


def test_cross_correlation_is_the_loss_modules_c():
    z_a = torch.randn(64, 12, dtype=torch.float64) * 3 + 1
    z_b = 0.7 * z_a + torch.randn(64, 12, dtype=torch.float64)
    c = cross_correlation(z_a, z_b).double()
    lambd = 0.01
    terms = barlow_twins_terms(z_a, z_b, lambd, "cross")
    off_diagonal = c.square().sum() - torch.diagonal(c).square().sum()
    assert torch.diagonal(c).mean().item() == pytest.approx(terms.on_diag_mean.item(), rel=1e-5)
    assert (1 - torch.diagonal(c)).square().sum().item() == pytest.approx(terms.invariance.item(), rel=1e-5)
    assert (lambd * off_diagonal).item() == pytest.approx(terms.redundancy.item(), rel=1e-5)
    pearson = np.corrcoef(z_a.numpy().T, z_b.numpy().T)[:12, 12:]  # eq. 2 is Pearson's correlation (up to eps)
    np.testing.assert_allclose(cross_correlation(z_a, z_b, block=5).numpy(), pearson[:5, :5], atol=1e-5)


def test_collapse_alarm_fires_on_collapsed_embeddings_only():
    healthy = torch.randn(128, 64)
    for z in (healthy, healthy + 0.1 * torch.randn(128, 64)):
        assert collapse_alarm(effective_rank(singular_values(z)), constant_fraction(z), 128, 64) is None
    constant = torch.ones(128, 64) * torch.randn(64)  # every sample the same embedding
    alarm = collapse_alarm(effective_rank(singular_values(constant)), constant_fraction(constant), 128, 64)
    assert alarm.startswith("effective rank") and alarm.endswith("; 100% of the embedding dimensions are constant")
    one_direction = torch.randn(128, 1) @ torch.randn(1, 64)  # dimensional collapse to one direction
    alarm = collapse_alarm(effective_rank(singular_values(one_direction)), constant_fraction(one_direction), 128, 64)
    assert alarm.startswith("effective rank 1.0")
    assert collapse_alarm(30.0, 0.0, 4096, 8192) is not None  # 30 < 1% of 4096
    assert collapse_alarm(50.0, 0.0, 4096, 8192) is None


class _Run:
    """The part of RunDir the monitor uses."""

    def __init__(self, path: Path):
        self.path, self.main, self.figures, self.latest = path, True, [], {}

    def add_png(self, tag, png, step):
        self.figures.append((tag, step))
        self.latest[tag] = png


def test_monitor_pictures_write_files_and_warn_on_collapse(tmp_path, caplog):
    method = SimpleNamespace(expose_embeddings=False, feature_dim=16)
    monitor = Monitor(method, _Run(tmp_path), 10, torch.device("cpu"), probe=False, picture_block=8)
    assert method.expose_embeddings and monitor.due(10, 100) and not monitor.due(5, 100)
    z = torch.randn(32, 20)
    fields = monitor.pictures(10, z, z + 0.1 * torch.randn(32, 20))
    assert fields["alarm"] is None and fields["effective_rank"] > 10 and fields["c_diag_mean"] > 0.9
    collapsed = torch.zeros(32, 20)
    fields = monitor.pictures(20, collapsed, collapsed)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("collapse at step 20: effective rank 0.00" in w for w in warnings)
    assert fields["alarm"] and fields["effective_rank"] == 0.0
    names = {p.name for p in (tmp_path / "monitor").iterdir()}
    assert names == {f"{n}{s}.png" for n in ("c", "spectrum") for s in ("", "-step000010", "-step000020")}
    assert (tmp_path / "monitor" / "c.png").read_bytes() == (tmp_path / "monitor" / "c-step000020.png").read_bytes()
    assert monitor.run.figures == [(f"monitor/{n}", s) for s in (10, 20) for n in ("c", "spectrum")]
    assert monitor.run.latest["monitor/spectrum"] == (tmp_path / "monitor" / "spectrum.png").read_bytes()


def test_knn_schedule_auto_and_every_n_epochs(tmp_path):
    method = SimpleNamespace(expose_embeddings=False)
    monitor = Monitor(method, _Run(tmp_path), 23, torch.device("cpu"), picture_every=0, probe=False)
    assert monitor.knn_every_epochs == -1  # the config's default: ~10 epoch ends a run
    monitor.bank = object()  # as if decoded
    assert [s for s in range(1, 231) if monitor._knn_due(s, 230)] == list(range(23, 231, 23))  # 10 epochs: each
    monitor.steps_per_epoch = 5
    assert [s for s in range(1, 5001) if monitor._knn_due(s, 5000)] == list(range(500, 5001, 500))  # ~10 a run
    monitor.knn_every_epochs = 3.0
    assert [s for s in range(1, 41) if monitor._knn_due(s, 38)] == [15, 30, 38]  # every 3 epochs, and the end
    monitor.knn_every_epochs = 0
    assert not any(monitor._knn_due(s, 38) for s in range(1, 41))  # 0: off, even with a bank


def test_online_probe_learns_ignores_unlabelled_and_restores():
    torch.manual_seed(1)
    probe = OnlineProbe(8, 4, 0.1, torch.device("cpu"))
    for _ in range(60):
        labels = torch.randint(0, 4, (32,))
        features = torch.nn.functional.one_hot(labels, 8).float() + 0.1 * torch.randn(32, 8)
        probe.step(features, torch.where(torch.arange(32) < 4, -1, labels))  # 4 unlabelled samples a batch
    assert probe.counts[1].item() == 60 * 28
    probe.report()
    probe.step(features, labels)
    state = probe.state_dict()
    assert probe.report()["probe_acc"] == 100.0
    restored = OnlineProbe(8, 4, 0.1, torch.device("cpu"))
    restored.load_state_dict(state)
    assert torch.equal(restored.linear.weight, probe.linear.weight)
    assert restored.report()["probe_acc"] == 100.0  # the running counts too


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_monitored_run_logs_knn_equal_to_evaluate_and_pictures(tmp_path):
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "--out", str(out), "--set", "train.log_every=100"]) == 0
    (row,) = _rows(out)  # the epoch end: kNN, pictures and the probe in one row
    assert row["step"] == 3 and row["epoch"] == 1.0 and row["knn_k"] == 20 and row["knn_bank"] == 96
    final = json.loads((out / "eval" / "knn.json").read_text())["results"]["pretrained"]["top1"]["20"]
    assert row["knn_top1"] == final  # the same backbone, bank and queries as evaluate/knn
    assert {"probe_acc", "probe_loss", "effective_rank", "c_diag_mean", "alarm"} <= set(row)
    assert {p.name for p in (out / "monitor").iterdir()} >= {"c.png", "spectrum.png", "c-step000003.png"}
    assert set(load_checkpoint(out)["monitor"]["probe"]) == {"linear", "optimizer", "counts"}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    (picture,) = events.Images("monitor/c")  # the same picture as the file, decoded and re-encoded
    assert picture.step == 3
    with Image.open(io.BytesIO(picture.encoded_image_string)) as shown, Image.open(out / "monitor" / "c.png") as file:
        assert np.array_equal(np.asarray(shown), np.asarray(file.convert("RGB")))


@pytest.mark.slow
def test_monitoring_changes_nothing_trained(tmp_path):
    """kNN and pictures at every step and the probe leave weights and batch-norm statistics bit-identical."""
    watched, blind = tmp_path / "watched", tmp_path / "blind"
    every_step = ["monitor.knn_every_epochs=0.34", "monitor.picture_every=1", "train.log_every=100"]
    off = ["monitor.knn_every_epochs=0", "monitor.picture_every=0", "monitor.probe=false"]
    assert main(["pretrain", *TINY, "--out", str(watched), *(x for s in every_step for x in ("--set", s))]) == 0
    assert main(["pretrain", *TINY, "--out", str(blind), *(x for s in off for x in ("--set", s))]) == 0
    assert [r["step"] for r in _rows(watched) if "knn_top1" in r] == [1, 2, 3]
    a, b = load_checkpoint(watched)["model"], load_checkpoint(blind)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_checkpoint(blind)["monitor"] is None


def test_training_batches_without_labels_turn_the_probe_off(tmp_path, caplog):
    caplog.set_level("INFO", logger="barlowtwins")
    method = SimpleNamespace(expose_embeddings=False, feature_dim=6)
    monitor = Monitor(method, _Run(tmp_path), 10, torch.device("cpu"), training_labels=[0, 3, 1], picture_every=0)
    assert monitor.probe.linear.out_features == 4 and method.expose_embeddings
    monitor.train_probe({"h_a": torch.randn(3, 6)}, torch.tensor([-1, -1, -1]))
    assert monitor.probe is None and "online probe off" in caplog.text


def test_the_loop_builds_the_monitor_from_its_settings(tmp_path):
    """``build_monitor`` hands every setting the monitor reads over as a plain value."""
    overrides = {
        "data": {"eval": []},
        "augment": {"image_size": 12, "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]},
        "knn": {"k": [7, 9], "temperature": 0.5, "batch_size": 11},
        "monitor": {"knn_every_epochs": 2.0, "probe_lr": 0.3, "picture_every": 3, "picture_block": 5},
    }
    config = make_config("demo", [overrides, {"monitor": {"alarm_rank_fraction": 0.2, "alarm_constant": 0.7}}])
    method = SimpleNamespace(expose_embeddings=False, feature_dim=4)
    source = SimpleNamespace(samples=SimpleNamespace(labels=np.array([0, 2, 1])))
    setup = SimpleNamespace(method=method, source=source, steps_per_epoch=9, device=torch.device("cpu"))
    monitor = build_monitor(config, setup, _Run(tmp_path), None)
    assert (monitor.image_size, monitor.mean, monitor.std) == (12, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert (monitor.knn_k, monitor.knn_temperature, monitor.knn_batch_size, monitor.knn_every_epochs) == (7, 0.5, 11, 2)
    assert (monitor.picture_every, monitor.picture_block) == (3, 5)
    assert (monitor.alarm_rank_fraction, monitor.alarm_constant, monitor.steps_per_epoch) == (0.2, 0.7, 9)
    assert monitor.probe.linear.out_features == 3 and monitor.probe.optimizer.param_groups[0]["lr"] == 0.3
    assert monitor.bank is None and method.expose_embeddings  # no data.eval: no kNN
