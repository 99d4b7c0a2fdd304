"""Backbones, the small-image stem and the projector (paper §2.2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from barlowtwins import BarlowTwinsError, build_backbone, build_projector
from barlowtwins.config import LossConfig, ModelConfig
from barlowtwins.losses.barlow_twins import barlow_twins_terms
from barlowtwins.methods import METHODS
from barlowtwins.validation import parse_projector_spec


@pytest.mark.parametrize(
    ("arch", "dim"),
    [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("resnet101", 2048), ("wide_resnet50_2", 2048)],
)
def test_backbone_has_no_classifier_and_reports_its_width(arch, dim):
    backbone, feature_dim, _ = build_backbone(arch)
    assert feature_dim == dim
    assert isinstance(backbone.fc, nn.Identity)
    assert not any(k.startswith("fc.") for k in backbone.state_dict())


def test_zero_init_residual_as_the_official_code():
    basic, _, _ = build_backbone("resnet18")
    bottleneck, _, _ = build_backbone("resnet50")
    assert all(block.bn2.weight.abs().sum() == 0 for layer in (basic.layer1, basic.layer4) for block in layer)
    assert all(block.bn3.weight.abs().sum() == 0 for block in bottleneck.layer2)


def test_small_stem_keeps_resolution_for_small_images():
    backbone, _, _ = build_backbone("resnet18", small_stem=True)
    assert backbone.conv1.kernel_size == (3, 3) and backbone.conv1.stride == (1, 1)
    assert isinstance(backbone.maxpool, nn.Identity)
    features = {}
    backbone.layer4.register_forward_hook(lambda m, i, o: features.setdefault("layer4", o))
    backbone.eval()(torch.randn(2, 3, 32, 32))
    assert features["layer4"].shape[-2:] == (4, 4)  # 32 / 8: only the three stride-2 stages downsample


def test_projector_layers_follow_the_paper():
    projector = build_projector(512, "1024-1024-256")
    kinds = [type(m).__name__ for m in projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    linears = [m for m in projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 1024), (1024, 1024), (1024, 256)]
    assert all(m.bias is None for m in linears)


def test_projector_without_batch_norm_keeps_hidden_biases():
    projector = build_projector(64, "32-16", batch_norm=False)
    assert [type(m).__name__ for m in projector] == ["Linear", "ReLU", "Linear"]
    assert projector[0].bias is not None and projector[2].bias is None


def test_single_layer_projector_is_linear():
    assert [type(m).__name__ for m in build_projector(64, "128")] == ["Linear"]


@pytest.mark.parametrize("spec", ["", "8192-", "a-b", "0-10", "-5"])
def test_bad_projector_spec_is_a_clear_error(spec):
    with pytest.raises(BarlowTwinsError, match="projector spec"):
        parse_projector_spec(spec)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(BarlowTwinsError, match="unknown architecture 'resnet19'"):
        build_backbone("resnet19")


def test_twin_forward_shapes_and_per_view_batch_norm():
    model = twin(projector="64-64-32")
    y_a, y_b = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    z_a = model.projector(model.backbone(y_a))
    z_b = model.projector(model.backbone(y_b))
    assert z_a.shape == z_b.shape == (4, 32)
    # Views pass separately (official code): view A's output does not depend on view B's images.
    torch.testing.assert_close(z_a, model.projector(model.backbone(y_a)))
    terms = model(y_a, y_b)
    assert set(terms) == set(model.logged) and terms["loss"].ndim == 0
    expected = barlow_twins_terms(z_a, z_b)
    torch.testing.assert_close(terms["loss"], expected.loss)  # the method's loss is eq. 1 of its projections


def test_no_weight_decay_names_are_the_one_d_parameters_of_backbone_and_projector():
    model = twin(projector="64-64-32")
    one_d = {name for name, p in model.named_parameters() if p.ndim == 1}
    assert model.no_weight_decay() == one_d
    assert "projector.1.weight" in one_d and "backbone.bn1.bias" in one_d


def twin(arch: str = "resnet18", projector: str = "64-64-32", small_stem: bool = True, formulation: str = "auto"):
    """The Barlow Twins method as the training loop builds it."""
    return METHODS["barlow_twins"](
        build_backbone(arch, small_stem), ModelConfig(projector=projector), LossConfig(formulation=formulation)
    )


def test_python_api_snippet_in_the_readme_runs():
    """The README's Python snippet, executed as written: its loss is the loss of eq. 1 on the projector outputs."""
    import re
    from pathlib import Path

    from barlowtwins.losses.barlow_twins import barlow_twins_loss

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    snippet = re.search(r"<!-- python-api -->\n```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(snippet, "README.md", "exec"), namespace)
    z_a, z_b = namespace["z_a"], namespace["z_b"]
    torch.testing.assert_close(namespace["loss"], barlow_twins_loss(z_a, z_b))
    model, terms = namespace["model"], namespace["terms"]
    assert model.backbone.conv1.weight.grad is not None  # the snippet's backward reached the backbone
    assert set(model.logged) <= set(terms) and torch.isfinite(terms["loss"])
