"""timm backbones by name, custom modules from Python, and their exclusion from weight decay and LARS."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from barlowtwins import BarlowTwinsError
from barlowtwins.config import LossConfig, ModelConfig
from barlowtwins.methods import METHODS
from barlowtwins.models.backbones import build_backbone, custom_backbone, initial_backbone
from barlowtwins.models.timm_backbones import parse_timm_arch
from barlowtwins.optim import build_optimizer

timm = pytest.importorskip("timm")

TINY_VIT = "timm:test_vit,patch_size=2,img_size=8"  # 6 blocks of width 64: a ViT for 8 px images


def test_timm_vit_for_small_images_returns_pooled_features():
    backbone = build_backbone(TINY_VIT)
    assert backbone.dim == 64 == backbone.module.num_features
    assert backbone.module.patch_embed.proj.kernel_size == (2, 2)
    assert backbone.module.eval()(torch.randn(3, 3, 8, 8)).shape == (3, 64)
    assert not any(name.startswith("head.") for name, _ in backbone.module.named_parameters())


def test_timm_arch_values_in_brackets_are_lists():
    """A narrower ResNet-18: timm's ``channels`` per stage, passed as a bracketed list inside --arch."""
    assert parse_timm_arch("timm:resnet18,channels=[32,64,128,256],stem_width=32") == (
        "resnet18",
        {"channels": [32, 64, 128, 256], "stem_width": 32},
    )
    backbone = build_backbone("timm:resnet18,channels=[16,32,64,128],stem_width=16")
    assert backbone.dim == 128 == backbone.module.num_features
    assert backbone.module.layer1[0].conv1.out_channels == 16
    assert backbone.module.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 128)


def test_timm_exclusions_cover_biases_norms_position_embedding_and_class_token():
    module = build_backbone(TINY_VIT).module
    expected = {name for name, p in module.named_parameters() if p.ndim <= 1} | {"pos_embed", "cls_token"}
    assert build_backbone(TINY_VIT).no_decay == frozenset(expected)
    assert {"blocks.0.norm1.weight", "norm.bias", "pos_embed", "cls_token"} <= expected
    assert "blocks.0.attn.qkv.weight" not in expected and "patch_embed.proj.weight" not in expected


def test_lars_neither_decays_nor_adapts_the_excluded_timm_parameters():
    """One LARS step from zero momentum: excluded parameters move by exactly lr * grad (plain SGD), adapted
    weights by lr * eta * ||w|| / ||g + wd w|| * (g + wd w)."""
    model = METHODS["barlow_twins"](build_backbone(TINY_VIT), ModelConfig(projector="16"), LossConfig())
    optimizer = build_optimizer(model, model.no_weight_decay(), "lars", 256, 0.5, 0.1, 0.2, lars_eta=0.02)
    weights, excluded = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    excluded_names = {names[id(p)] for p in excluded["params"]}
    assert {"backbone.pos_embed", "backbone.cls_token", "backbone.norm.weight"} <= excluded_names
    assert (excluded["weight_decay"], excluded["lars_adaptation"]) == (0.0, False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8))["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    optimizer.step()
    params = dict(model.named_parameters())
    for name in ("backbone.pos_embed", "backbone.cls_token", "backbone.blocks.0.norm1.weight"):
        torch.testing.assert_close(params[name], before[name] - 0.1 * grads[name], rtol=1e-5, atol=1e-6)
    name = "backbone.blocks.0.attn.qkv.weight"
    update = grads[name] + 0.2 * before[name]
    trust = 0.02 * before[name].norm() / update.norm()
    torch.testing.assert_close(params[name], before[name] - 0.5 * trust * update, rtol=1e-5, atol=1e-6)


def test_timm_errors_name_the_fix(monkeypatch):
    with pytest.raises(BarlowTwinsError, match="no model 'no_such_net'"):
        build_backbone("timm:no_such_net")
    with pytest.raises(BarlowTwinsError, match="rejects the arguments"):
        build_backbone("timm:test_convnext,img_size=32")
    with pytest.raises(BarlowTwinsError, match="must be key=value"):
        build_backbone("timm:test_vit,patch_size")
    with pytest.raises(BarlowTwinsError, match="--small-stem is for torchvision ResNets"):
        build_backbone("timm:test_vit", small_stem=True)
    monkeypatch.setitem(__import__("sys").modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(BarlowTwinsError, match=r"^--arch timm:test_vit needs timm: pip install 'barlowtwins\[timm\]'$"):
        build_backbone("timm:test_vit")


def test_initial_timm_backbone_is_reproducible_from_its_seed():
    a, b = initial_backbone(TINY_VIT, False, 3).module, initial_backbone(TINY_VIT, False, 3).module
    c = initial_backbone(TINY_VIT, False, 4).module
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.pos_embed, c.pos_embed)


class TinyNet(nn.Module):
    """A user's own backbone: conv + norm + a learned token-like vector, pooled to 12 features."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.norm = nn.GroupNorm(3, 12)
        self.offset = nn.Parameter(torch.zeros(1, 12, 1, 1))

    def forward(self, x):
        return (self.norm(self.conv(x)) + self.offset).mean(dim=(2, 3))

    def no_weight_decay(self):
        return {"offset"}


def test_custom_module_exclusions():
    backbone = custom_backbone(TinyNet(), 12, no_decay=["conv.*"])
    assert backbone.no_decay == {"conv.weight", "conv.bias", "norm.weight", "norm.bias", "offset"}
    assert custom_backbone(TinyNet(), 12).no_decay == {"conv.bias", "norm.weight", "norm.bias", "offset"}


@pytest.mark.slow
def test_timm_vit_pretrains_evaluates_and_exports_through_the_cli(tmp_path):
    from barlowtwins.checkpoint import load_backbone
    from barlowtwins.cli import main
    from barlowtwins.evaluate.harness import load_subjects

    out = tmp_path / "run"
    args = ["--recipe", "demo", "--data", "digits", "--limit", "48", "--eval-limit", "48", "--batch-size", "16"]
    args += ["--projector", "32-32", "--workers", "0", "--epochs", "1", "--precision", "fp32", "--out", str(out)]
    assert main(["pretrain", *args, "--arch", TINY_VIT, "--optimizer", "adamw", "--lr", "1e-3"]) == 0
    report = json.loads((out / "eval" / "knn.json").read_text())
    assert set(report["results"]) == {"pretrained", "random_init"}
    assert report["weights"]["pretrained"]["arch"] == TINY_VIT and report["hyperparameters"]["image_size"] == 8

    # the random-init floor is the run's own initial backbone, rebuilt from the arch string and seed
    from barlowtwins.config import EvalInputs

    floor = load_subjects(EvalInputs(checkpoint=str(out)))["random_init"].backbone
    initial = initial_backbone(TINY_VIT, False, 0).module
    assert all(torch.equal(x, y) for x, y in zip(floor.state_dict().values(), initial.state_dict().values()))
    trained, dim, _ = load_backbone(out)
    assert dim == 64 and not torch.equal(trained.pos_embed, initial.pos_embed)  # three steps moved it

    exported = tmp_path / "vit.pth"
    assert main(["export", "--checkpoint", str(out), "--out", str(exported)]) == 0
    model = timm.create_model(
        "test_vit",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(exported.with_suffix(".safetensors"))),
        num_classes=0,
        patch_size=2,
        img_size=8,
    ).eval()
    images = torch.randn(4, 3, 8, 8)
    torch.testing.assert_close(model(images), trained.eval()(images), rtol=0, atol=0)


def test_vit_recipe_has_solo_learns_vit_optimiser_and_builds():
    from barlowtwins.recipes import make_config

    config = make_config("cifar10-vit")
    o = config.optim
    assert (o.optimizer, o.lr_weights, o.lr_biases, o.weight_decay, o.momentum) == ("adamw", 3e-4, 3e-4, 0.1, 0.9)
    assert (o.warmup_epochs, o.final_lr_ratio, config.train.batch_size) == (10, 0.0, 256)
    backbone = build_backbone(config.model.arch, config.model.small_stem)
    assert backbone.dim == 192 and backbone.module.patch_embed.num_patches == 64  # (32 / 4)^2 tokens
    size = config.augment.image_size
    assert backbone.module.eval()(torch.randn(2, 3, size, size)).shape == (2, 192)
