"""Each recipe that names a source resolves to that source's values, and ``lr auto`` follows the authors' table.

The tables below are transcribed from the sources (file and repository named per entry), not from our recipes,
and compared field by field with the config ``recipes.make_config`` resolves. Recipes that are ours
(demo, cifar10-cpu) must say so and name no external source.
"""

from __future__ import annotations

import math

import pytest
from torch import nn

from barlowtwins import make_config
from barlowtwins.cli import main as cli_main
from barlowtwins.optim import build_optimizer
from barlowtwins.recipes import RECIPE_DIR, auto_lr_weights, recipe_names
from barlowtwins.recipes import flatten as flat

# vturrisi/solo-learn: scripts/pretrain/cifar/barlow.yaml (+ augmentations/asymmetric.yaml) and the code
# defaults it relies on (solo/methods/barlow_twins.py lamb; solo/args/pretrain.py momentum and lr x batch/256;
# solo/methods/base.py warmup_epochs 10, min_lr 0; solo/utils/lars.py one lr for all parameters).
SOLO_LEARN_CIFAR = {
    "model.arch": "resnet18",  # backbone.name
    "model.small_stem": True,  # cifar: 3x3 stride-1 conv1, maxpool = Identity
    "model.projector": "2048-2048-2048",  # proj_hidden_dim 2048 (two layers), proj_output_dim 2048
    "loss.lambd": 0.0051,  # method_kwargs.lamb default
    "loss.scale": 0.1,  # method_kwargs.scale_loss
    "optim.optimizer": "lars",
    "optim.lr_weights": 0.3,  # optimizer.lr (per 256 images)
    "optim.lr_biases": 0.3,  # the same optimizer.lr: no separate bias lr
    "optim.weight_decay": 1e-4,
    "optim.momentum": 0.9,
    "optim.lars_eta": 0.02,  # optimizer.kwargs.eta
    "optim.clip_lr": True,  # optimizer.kwargs.clip_lr
    "optim.warmup_epochs": 10.0,  # scheduler warmup_cosine, warmup_epochs default
    "optim.final_lr_ratio": 0.0,  # min_lr 0
    "train.batch_size": 256,
    "train.epochs": 1000,  # max_epochs
    "augment.image_size": 32,  # crop_size
    "augment.crop_scale": (0.08, 1.0),
    "augment.jitter": (0.4, 0.4, 0.2, 0.1),
    "augment.jitter_p": 0.8,
    "augment.grayscale_p": 0.2,
    "augment.blur_p": (0.0, 0.0),
    "augment.solarize_p": (0.0, 0.2),
    "augment.flip_p": 0.5,
}

# facebookresearch/barlowtwins main.py and the paper §2.2 (weight decay: the paper's 1.5e-6, not main.py's 1e-6;
# final lr: the paper's 0.2 -> 0.002, i.e. 0.01 x peak).
OFFICIAL_IMAGENET = {
    "model.arch": "resnet50",
    "model.small_stem": False,
    "model.projector": "8192-8192-8192",  # --projector 8192-8192-8192
    "model.projector_bn": True,
    "loss.lambd": 0.0051,  # --lambd
    "loss.scale": 1.0,  # no loss scale at HEAD
    "optim.optimizer": "lars",
    "optim.lr_weights": 0.2,  # --learning-rate-weights at batch 2048
    "optim.lr_biases": 0.0048,  # --learning-rate-biases
    "optim.weight_decay": 1.5e-6,  # paper (main.py: 1e-6)
    "optim.momentum": 0.9,
    "optim.lars_eta": 0.001,
    "optim.clip_lr": False,
    "optim.warmup_epochs": 10.0,
    "optim.final_lr_ratio": 0.01,
    "train.batch_size": 2048,
    "train.epochs": 1000,
    "augment.image_size": 224,
    "augment.blur_p": (1.0, 0.1),
    "augment.solarize_p": (0.0, 0.2),
}

# vturrisi/solo-learn: the optimiser of scripts/pretrain/imagenet-100/mocov3_vit.yaml (with the defaults of
# solo/args/pretrain.py and solo/methods/base.py); data, projector, batch and epochs of the CIFAR Barlow Twins file.
SOLO_LEARN_VIT = {
    "model.arch": "timm:vit_tiny_patch16_224,patch_size=4,img_size=32",  # vit_tiny, patch 4 for 32 px
    "model.projector": "2048-2048-2048",
    "loss.lambd": 0.0051,
    "optim.optimizer": "adamw",
    "optim.lr_weights": 3.0e-4,  # optimizer.lr, one lr for all parameters
    "optim.lr_biases": 3.0e-4,
    "optim.weight_decay": 0.1,
    "optim.momentum": 0.9,  # AdamW betas (0.9, 0.999)
    "optim.warmup_epochs": 10.0,
    "optim.final_lr_ratio": 0.0,
    "train.batch_size": 256,
    "train.epochs": 1000,
    "augment.image_size": 32,
    "augment.blur_p": (0.0, 0.0),
    "augment.solarize_p": (0.0, 0.2),
}

SOURCES = {"cifar10": SOLO_LEARN_CIFAR, "imagenet": OFFICIAL_IMAGENET, "cifar10-vit": SOLO_LEARN_VIT}
OURS = ("demo", "cifar10-cpu", "photos-cpu")

# Official tracker, issue 7: weight lr (per 256 images) by batch size.
AUTHORS_LR = {128: 0.7, 256: 0.4, 512: 0.3, 1024: 0.25, 2048: 0.2}


@pytest.mark.parametrize("recipe", sorted(SOURCES))
def test_recipe_resolves_to_its_sources_values(recipe):
    resolved = flat(make_config(recipe).to_dict())
    expected = {key: list(v) if isinstance(v, tuple) else v for key, v in SOURCES[recipe].items()}
    differing = {key: (resolved[key], value) for key, value in expected.items() if resolved[key] != value}
    assert not differing, f"(ours, source's): {differing}"


def test_every_recipe_has_a_source_or_says_it_is_ours():
    assert set(recipe_names()) == set(SOURCES) | set(OURS)  # a new recipe must be added to one of the two
    for name in OURS:
        text = (RECIPE_DIR / f"{name}.yaml").read_text()
        assert text.startswith("# Ours, no external source"), name
    assert "vturrisi/solo-learn scripts/pretrain/cifar/barlow.yaml" in (RECIPE_DIR / "cifar10.yaml").read_text()


@pytest.mark.parametrize("batch", sorted(AUTHORS_LR))
def test_auto_lr_is_the_authors_value_at_listed_batch_sizes(batch):
    assert auto_lr_weights(batch) == pytest.approx(AUTHORS_LR[batch])
    config = make_config("imagenet", [{"train": {"batch_size": batch}}])
    assert config.optim.lr_weights == pytest.approx(AUTHORS_LR[batch])
    assert config.optim.lr_biases == pytest.approx(AUTHORS_LR[batch] * 0.0048 / 0.2)


def test_auto_lr_interpolates_in_log_batch_and_clamps():
    assert auto_lr_weights(int(math.sqrt(128 * 256))) == pytest.approx((0.7 + 0.4) / 2, abs=1e-3)  # 181: midway
    assert auto_lr_weights(384) == pytest.approx(0.4 + (0.3 - 0.4) * math.log2(1.5))
    assert auto_lr_weights(64) == 0.7 and auto_lr_weights(8192) == 0.2
    values = [auto_lr_weights(b) for b in range(64, 4096, 16)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # never rises with the batch


def test_auto_lr_gives_the_effective_lr_of_the_official_scaling():
    """The optimiser's peak lr is lr_weights x batch/256, as main.py: 0.7 x 0.5 at 128, 0.2 x 8 at 2048."""
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    no_decay = {name for name, p in model.named_parameters() if p.ndim == 1}
    for batch, effective in ((128, 0.35), (2048, 1.6)):
        o = make_config("imagenet", [{"train": {"batch_size": batch}}]).optim
        groups = build_optimizer(model, no_decay, o.optimizer, batch, o.lr_weights, o.lr_biases, o.weight_decay)
        assert groups.param_groups[0]["peak_lr"] == pytest.approx(effective)
        assert groups.param_groups[1]["peak_lr"] == pytest.approx(effective * 0.0048 / 0.2)


def test_auto_lr_from_the_command_line_keeps_an_explicit_bias_lr(capsys):
    cli_main(["pretrain", "--recipe", "cifar10", "--lr", "auto", "--batch-size", "512", "--print-config"])
    printed = capsys.readouterr().out
    assert "lr_weights: 0.3\n" in printed and "lr_biases: 0.3\n" in printed  # the recipe's bias lr stays
    cli_main(["pretrain", "--batch-size", "1024", "--set", "optim.lr_weights=auto", "--print-config"])
    printed = capsys.readouterr().out
    assert "lr_weights: 0.25\n" in printed and "lr_biases: 0.006\n" in printed


def test_loss_scale_reaches_the_training_method():
    from barlowtwins.train.build import build_method

    config = make_config("cifar10", [{"model": {"projector": "8-8-8"}}])
    assert build_method(config).scale == 0.1


def test_runs_saved_before_scale_and_clip_lr_existed_still_resume():
    from barlowtwins.recipes import incompatible_changes

    saved = make_config("demo").to_dict()
    del saved["loss"]["scale"], saved["optim"]["clip_lr"]
    assert incompatible_changes(saved, make_config("demo")) == []
    assert incompatible_changes(saved, make_config("cifar10")) != []
    changed = make_config("demo", [{"loss": {"scale": 0.5}}])
    assert incompatible_changes(saved, changed) == ["loss.scale"]
