"""Defaults in one place, recipes, overrides, unknown keys rejected, resume compatibility."""

from __future__ import annotations

import pytest

from barlowtwins import BarlowTwinsError, PretrainConfig, make_config
from barlowtwins.recipes import config_from_dict, incompatible_changes, parse_override, recipe_names


def test_defaults_are_the_papers_imagenet_recipe():
    c = PretrainConfig()
    assert c.loss.lambd == 0.0051
    assert (c.optim.optimizer, c.optim.lr_weights, c.optim.lr_biases) == ("lars", 0.2, 0.0048)
    assert (c.optim.weight_decay, c.optim.momentum, c.optim.lars_eta) == (1.5e-6, 0.9, 0.001)
    assert (c.optim.warmup_epochs, c.optim.final_lr_ratio) == (10.0, 0.01)  # 0.2 -> 0.002 (paper §2.2)
    assert (c.model.arch, c.model.projector, c.model.small_stem) == ("resnet50", "8192-8192-8192", False)
    assert (c.train.batch_size, c.train.epochs) == (2048, 1000)
    assert (c.augment.blur_p, c.augment.solarize_p, c.augment.crop_scale) == ((1.0, 0.1), (0.0, 0.2), (0.08, 1.0))
    assert make_config("imagenet") == c


def test_every_shipped_recipe_is_valid():
    assert {"imagenet", "cifar10", "demo"} <= set(recipe_names())
    for name in recipe_names():
        make_config(name)


def test_recipe_then_overrides_in_order():
    c = make_config(
        "cifar10",
        [
            parse_override("optim.lr_weights=0.3"),
            parse_override("train.epochs=5"),
            parse_override("augment.blur_p=[0.5, 0.5]"),
        ],
    )
    assert c.model.arch == "resnet18" and c.model.small_stem and c.augment.image_size == 32
    assert c.optim.lr_weights == 0.3 and c.train.epochs == 5 and c.augment.blur_p == (0.5, 0.5)
    assert c.loss.lambd == 0.0051  # untouched defaults stay


def test_unknown_keys_are_rejected_with_the_valid_ones_listed():
    with pytest.raises(
        BarlowTwinsError, match=r"unknown config key\(s\) in 'optim': optim.lr; valid keys: .*lr_weights"
    ):
        make_config(None, [parse_override("optim.lr=0.1")])
    with pytest.raises(BarlowTwinsError, match="unknown config key"):
        config_from_dict({"optimizer": {"lr_weights": 1}})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=1", "at least 2"),
        ("train.batch_size=abc", "expected an integer"),
        ("loss.formulation=fast", "formulation"),
        ("augment.blur_p=0.5", "expected 2 values"),
        ("model.projector=8192x8192", "projector spec"),
        ("train.precision=fp8", "precision"),
        ("augment.flip_p=1.5", "probabilities"),
        ("model.small_stem=maybe", "true or false"),
        ("noequals", "section.key=value"),
    ],
)
def test_bad_values_fail_with_a_message_that_names_them(override, message):
    with pytest.raises(BarlowTwinsError, match=message):
        make_config(None, [parse_override(override)])


def test_unknown_recipe():
    with pytest.raises(BarlowTwinsError, match="no recipe 'cifar11'"):
        make_config("cifar11")


def test_config_round_trips_through_a_plain_dict():
    c = make_config("demo")
    assert config_from_dict(c.to_dict()) == c


def test_resume_compatibility_ignores_execution_settings_only():
    saved = make_config("cifar10").to_dict()
    assert (
        incompatible_changes(
            saved, make_config("cifar10", [parse_override("train.epochs=7"), parse_override("data.workers=0")])
        )
        == []
    )
    changed = make_config("cifar10", [parse_override("model.projector=512-512"), parse_override("loss.lambd=0.1")])
    assert incompatible_changes(saved, changed) == ["loss.lambd", "model.projector"]


def test_the_cli_stem_flags_set_the_stride_the_recipe_would_otherwise_give(capsys, tmp_path):
    import yaml

    from barlowtwins.cli import main

    recipe = tmp_path / "stride2.yaml"
    recipe.write_text("model:\n  arch: resnet18\n  small_stem: true\n  stem_stride: 2\n")

    def printed(*flags: str) -> dict:
        assert main(["pretrain", "--recipe", str(recipe), *flags, "--print-config"]) == 0
        return yaml.safe_load(capsys.readouterr().out)["model"]

    assert (printed()["small_stem"], printed()["stem_stride"]) == (True, 2)  # the recipe's 3x3 stride-2 stem
    for flags in (["--no-small-stem"], ["--arch", "timm:resnet10t"]):
        assert (printed(*flags)["small_stem"], printed(*flags)["stem_stride"]) == (False, 1)
    with pytest.raises(BarlowTwinsError, match="add --small-stem"):  # a stride set by hand is not dropped
        make_config(str(recipe), [parse_override("model.small_stem=false")])
