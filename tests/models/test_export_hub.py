"""Export to .pth + .safetensors + JSON sidecar, torch.hub entries (hubconf.py), the official key layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from torch import nn

from barlowtwins import BarlowTwinsError
from barlowtwins.atomic import atomic_save
from barlowtwins.checkpoint import FORMAT, load_backbone
from barlowtwins.export import export_backbone
from barlowtwins.recipes import make_config, override
from barlowtwins.train.build import build_method

REPO = Path(__file__).resolve().parents[2]
safetensors_torch = pytest.importorskip("safetensors.torch")


def fake_run(tmp_path: Path, arch: str = "resnet18", small_stem: bool = True, stem_stride: int = 1) -> Path:
    """A run directory whose checkpoint has the real format, with weights moved off their initialisation."""
    settings = {"model.arch": arch, "model.small_stem": small_stem, "model.projector": "16-16"}
    settings["model.stem_stride"] = stem_stride
    config = make_config("cifar10", [override(key, value) for key, value in settings.items()])
    method = build_method(config)
    with torch.no_grad():
        for param in method.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    state = {"format": FORMAT, "model": method.state_dict(), "epoch": 2, "step": 7, "config": config.to_dict()}
    atomic_save({**state, "version": "0.1.0"}, tmp_path / "run" / "checkpoint.pt")
    return tmp_path / "run"


def test_a_stride_two_stem_travels_through_checkpoint_export_and_floor(tmp_path):
    from barlowtwins.config import EvalInputs
    from barlowtwins.evaluate.harness import load_subjects
    from barlowtwins.models.backbones import apply_small_stem, initial_backbone

    run = fake_run(tmp_path, stem_stride=2)
    info = export_backbone(run, tmp_path / "backbone.pth")
    assert info["stem_stride"] == 2 and info["load_with"].endswith("apply_small_stem(model, stride=2)")
    plain = torchvision.models.resnet18()
    apply_small_stem(plain, stride=2)  # what the sidecar's load_with line says, without barlowtwins
    plain.load_state_dict(torch.load(tmp_path / "backbone.pth", weights_only=True), strict=False)
    plain.fc = nn.Identity()
    images = torch.rand(2, 3, 32, 32)
    subjects = load_subjects(EvalInputs(checkpoint=str(run), random_init=True))
    from_export = load_backbone(tmp_path / "backbone.pth")[0]
    for model in (plain, from_export, subjects["pretrained"].backbone, subjects["random_init"].backbone):
        assert model.conv1.stride == (2, 2) and model.eval()(images).shape == (2, 512)
    assert torch.allclose(from_export(images), plain(images)) and torch.allclose(
        plain(images), subjects["pretrained"].backbone(images)
    )
    floor = initial_backbone("resnet18", True, 0, stem_stride=2).module.eval()  # the run's own initial weights
    assert torch.equal(floor(images), subjects["random_init"].backbone(images))


def test_a_stem_stride_without_the_small_stem_is_refused():
    with pytest.raises(BarlowTwinsError, match="add --small-stem"):
        make_config("cifar10", [override("model.small_stem", False), override("model.stem_stride", 2)])


def test_export_writes_pth_safetensors_and_sidecar_bit_exact(tmp_path):
    run = fake_run(tmp_path)
    info = export_backbone(run, tmp_path / "backbone.pth")
    pth = torch.load(tmp_path / "backbone.pth", weights_only=True)
    st = safetensors_torch.load_file(str(tmp_path / "backbone.safetensors"))
    source = torch.load(run / "checkpoint.pt", weights_only=True)["model"]
    assert set(pth) == set(st) == {k.removeprefix("backbone.") for k in source if k.startswith("backbone.")}
    assert "conv1.weight" in st and not any(k.startswith("fc.") for k in st)  # torchvision names, no classifier
    for key, value in pth.items():
        assert torch.equal(value, st[key]) and value.dtype == st[key].dtype
        assert torch.equal(value, source[f"backbone.{key}"])
    sidecar = json.loads((tmp_path / "backbone.json").read_text())
    assert sidecar == info
    assert sidecar["arch"] == "resnet18" and sidecar["small_stem"] is True and sidecar["feature_dim"] == 512
    images = (sidecar["image_size"], sidecar["mean"], sidecar["std"])
    assert images == (32, [0.4914, 0.4822, 0.4465], [0.247, 0.2435, 0.2616])
    assert (sidecar["epoch"], sidecar["step"], sidecar["barlowtwins_version"]) == (2, 7, "0.1.0")
    assert sidecar["files"] == {"pth": "backbone.pth", "safetensors": "backbone.safetensors"}
    with open(tmp_path / "backbone.safetensors", "rb") as handle:  # the header carries the sidecar too
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    assert json.loads(header["__metadata__"]["barlowtwins"]) == info


@pytest.mark.slow
def test_torch_hub_entries_give_the_exported_backbone(tmp_path):
    run = fake_run(tmp_path)
    export_backbone(run, tmp_path / "backbone.pth")
    reference, _, _ = load_backbone(run)
    images = torch.randn(3, 3, 32, 32)
    expected = reference.eval()(images)
    for entry, weights in (("resnet18", "backbone.pth"), ("backbone", "backbone.safetensors")):
        model = torch.hub.load(str(REPO), entry, source="local", weights=str(tmp_path / weights))
        assert isinstance(model.fc, nn.Identity) and model.feature_dim == 512 and not model.training
        torch.testing.assert_close(model(images), expected, rtol=0, atol=0)
    with pytest.raises(BarlowTwinsError, match="arch 'resnet50' contradicts .*whose weights are arch 'resnet18'"):
        torch.hub.load(str(REPO), "resnet50", source="local", weights=str(tmp_path / "backbone.pth"))


@pytest.mark.slow
def test_official_resnet50_layout_loads_through_the_hub_entry(tmp_path):
    """The authors' resnet50.pth is a torchvision resnet50 state_dict without fc.*."""
    official = torchvision.models.resnet50()
    state = {k: v for k, v in official.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, tmp_path / "resnet50.pth")
    model = torch.hub.load(str(REPO), "resnet50", source="local", weights=str(tmp_path / "resnet50.pth"))
    official.fc = nn.Identity()
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(images), official.eval()(images), rtol=0, atol=0)


@pytest.mark.slow
def test_custom_backbone_snippet_in_the_readme_runs(tmp_path, monkeypatch):
    """The README's custom-module snippet, executed as written (in a temporary directory)."""
    readme = (REPO / "README.md").read_text()
    snippet = re.search(r"<!-- custom-backbone -->\n```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    trained, net = namespace["trained"], namespace["net"]
    assert namespace["dim"] == 32 and trained is not net
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), net.state_dict().values()))
    assert yaml.safe_load((tmp_path / "runs/custom/config.yaml").read_text())["model"]["arch"] == "custom"
