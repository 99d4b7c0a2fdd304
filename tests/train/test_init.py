"""``pretrain --init WEIGHTS``: each kind of source, what is taken and what starts fresh, the record, the
refusals, and that a resumed run never reads the weights again. Every source is generated here, tiny."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import timm
import torch
import torchvision
import yaml
from safetensors.torch import load_file as load_safetensors
from torch import nn

from barlowtwins.checkpoint import FORMAT, load_checkpoint
from barlowtwins.cli import main
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.export import export_backbone
from barlowtwins.init_weights import initialise
from barlowtwins.recipes import make_config, override
from barlowtwins.train.build import build_method

TINY = ["--recipe", "demo", "--data", "digits", "--limit", "64", "--batch-size", "32", "--projector", "32-32"]
TINY += ["--workers", "0", "--precision", "fp32", "--set", "data.eval=[]", "--set", "monitor.picture_every=0"]
TINY += ["--set", "monitor.probe=false", "--set", "monitor.knn_every_epochs=0"]


def method_of(seed: int = 0, **settings):
    """The demo recipe's method (small-stem ResNet-18, 8 px) as a run of ``seed`` builds it, with ``settings``."""
    values = {"model.projector": "32-32", "train.seed": seed, **settings}
    config = make_config("demo", [override(k, v) for k, v in values.items()])
    return build_method(config), config


def init(method, config, path) -> dict:
    model, images = config.model, config.augment
    return initialise(method, str(path), model.arch, model.small_stem, model.stem_stride, images.mean, images.std)


def assert_equal(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), [k for k in ours if not torch.equal(ours[k], theirs[k])]


def part(method: nn.Module, name: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in getattr(method, name).state_dict().items()}


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> Path:
    """A run directory of ours, its weights from seed 1 (not the seed the runs under test start from)."""
    method, config = method_of(seed=1)
    for tensor in method.state_dict().values():  # batch-norm statistics too, so that every tensor is told apart
        if tensor.is_floating_point():
            tensor.add_(torch.rand_like(tensor))
    run = tmp_path_factory.mktemp("source")
    state = {"format": FORMAT, "model": method.state_dict(), "optimizer": {}, "scaler": {}, "epoch": 1, "step": 2}
    torch.save({**state, "config": config.to_dict(), "version": "test"}, run / "checkpoint.pt")
    return run


def test_a_run_starts_from_the_weights_records_them_and_never_reads_them_when_resumed(source_run, tmp_path, capsys):
    out = tmp_path / "run"
    frozen = ["--lr", "0", "--set", "optim.lr_biases=0"]  # no step moves a parameter: they stay those of --init
    assert main(["pretrain", *TINY, *frozen, "--epochs", "1", "--init", str(source_run), "--out", str(out)]) == 0
    logged = capsys.readouterr().out
    digest = hashlib.sha256((source_run / "checkpoint.pt").read_bytes()).hexdigest()
    line = f"--init {source_run} (checkpoint.pt, sha256 {digest[:12]}): backbone 120/120 tensors taken; projector 7/7"
    assert line in logged
    meta = json.loads((out / "meta.json").read_text())["init"]
    assert (meta["sha256"], meta["taken"], meta["fresh"], meta["not_used"]) == (
        digest,
        {"backbone": 120, "projector": 7},
        {},
        {},
    )
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["init"] == str(source_run)
    source, trained = load_checkpoint(source_run)["model"], load_checkpoint(out)["model"]
    parameters = dict(method_of()[0].named_parameters())
    assert_equal({k: trained[k] for k in parameters}, {k: source[k] for k in parameters})

    (source_run / "checkpoint.pt").rename(source_run / "kept.pt")
    (source_run / "checkpoint.pt").write_bytes(b"not weights")  # read again, it would fail
    try:
        assert main(["pretrain", *TINY, *frozen, "--epochs", "2", "--init", str(source_run), "--out", str(out)]) == 0
    finally:
        (source_run / "kept.pt").replace(source_run / "checkpoint.pt")
    logged = capsys.readouterr().out
    assert f"resuming {out} from epoch 1, step 2" in logged and "--init" not in logged
    assert load_checkpoint(out)["step"] == 4 and json.loads((out / "meta.json").read_text())["init"] == meta

    other = tmp_path / "other.pth"  # not there: a resumed run does not read it, and refuses other weights
    assert main(["pretrain", *TINY, "--epochs", "3", "--init", str(other), "--out", str(out)]) == 2
    assert f"model.init: '{source_run}' -> '{other}'" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_an_exported_backbone_is_taken_and_the_projector_starts_as_a_fresh_run_does(source_run, tmp_path, suffix):
    export_backbone(source_run, tmp_path / "backbone.pth")
    file = tmp_path / f"backbone{suffix}"
    exported = load_safetensors(file) if suffix == ".safetensors" else torch.load(file, weights_only=True)
    method, config = method_of()
    record = init(method, config, file)
    assert_equal(part(method, "backbone"), exported)
    fresh_run, _ = method_of()  # the same seed, no --init
    assert_equal(part(method, "projector"), part(fresh_run, "projector"))
    assert not torch.equal(method.projector[0].weight, load_checkpoint(source_run)["model"]["projector.0.weight"])
    assert record["taken"] == {"backbone": 120, "projector": 0}
    assert set(record["fresh"].values()) == {"not in the source"} and len(record["fresh"]) == 7
    assert (
        record["recorded"]["arch"] == "resnet18" and record["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    )


def test_a_projector_of_another_width_starts_fresh_where_its_layers_differ(source_run):
    method, config = method_of(**{"model.projector": "32-16"})
    record = init(method, config, source_run)
    source = load_checkpoint(source_run)["model"]
    assert_equal(
        part(method, "backbone"), {k.removeprefix("backbone."): v for k, v in source.items() if "backbone." in k}
    )
    assert_equal(
        {k: v for k, v in part(method, "projector").items() if not k.startswith("3.")},
        {k.removeprefix("projector."): v for k, v in source.items() if k.startswith("projector.") and ".3." not in k},
    )
    fresh_run, _ = method_of(**{"model.projector": "32-16"})
    assert torch.equal(method.projector[3].weight, fresh_run.projector[3].weight)
    assert record["fresh"] == {"projector.3.weight": "projector.3.weight is 32x32 there, 16x32 here"}
    assert "projector 6/7 taken, 1 fresh (projector.3.weight is 32x32 there, 16x32 here)" in record["summary"]


class OfficialBarlowTwins(nn.Module):
    """facebookresearch/barlowtwins main.py's module, transcribed (a ResNet-18 instead of its ResNet-50)."""

    def __init__(self, projector: str):
        super().__init__()
        self.backbone = torchvision.models.resnet18(zero_init_residual=True)
        self.backbone.fc = nn.Identity()
        sizes = [512] + list(map(int, projector.split("-")))
        layers = []
        for i in range(len(sizes) - 2):
            layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=False))
            layers.append(nn.BatchNorm1d(sizes[i + 1]))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        self.projector = nn.Sequential(*layers)
        self.bn = nn.BatchNorm1d(sizes[-1], affine=False)


@pytest.mark.parametrize("ours", ["16-16-16", "16-16-8"])
def test_the_authors_checkpoint_pth_gives_backbone_and_projector(tmp_path, ours):
    official = nn.DataParallel(OfficialBarlowTwins("16-16-16"))  # keys module.*, as their DDP-wrapped module's
    for tensor in official.state_dict().values():
        if tensor.is_floating_point():
            tensor.add_(torch.rand_like(tensor))
    optimizer = torch.optim.SGD(official.parameters(), lr=0, momentum=0.9)  # their LARS: plain state as well
    torch.save({"epoch": 3, "model": official.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "c.pth")
    method, config = method_of(**{"model.small_stem": False, "model.projector": ours})
    record = init(method, config, tmp_path / "c.pth")
    theirs = official.module
    assert_equal(part(method, "backbone"), theirs.backbone.state_dict())
    taken = {k: v for k, v in theirs.projector.state_dict().items() if ours == "16-16-16" or not k.startswith("6.")}
    assert_equal({k: v for k, v in part(method, "projector").items() if k in taken}, taken)
    assert record["taken"]["projector"] == len(taken) == (12 if ours == "16-16-8" else 13)
    assert record["not_used"] == {"bn": 3} and "not used: bn 3 (the loss standardises" in record["summary"]


def test_the_authors_resnet50_pth_layout_and_a_torchvision_state_dict(tmp_path):
    model = torchvision.models.resnet18()
    for parameter in model.parameters():
        parameter.data.add_(1.0)
    torch.save(model.state_dict(), tmp_path / "torchvision.pth")  # with its classifier fc
    model.fc = nn.Identity()
    torch.save(model.state_dict(), tmp_path / "resnet.pth")  # the authors' file: the backbone alone
    for name, not_used in (("torchvision.pth", {"fc": 2}), ("resnet.pth", {})):
        method, config = method_of(**{"model.small_stem": False})
        record = init(method, config, tmp_path / name)
        assert_equal(part(method, "backbone"), model.state_dict())
        assert record["not_used"] == not_used and record["recorded"] == {}


def test_a_timm_state_dict_for_a_timm_arch(tmp_path):
    arch = "timm:test_vit,patch_size=2,img_size=8"
    model = timm.create_model("test_vit", patch_size=2, img_size=8)  # with its classifier head
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    method, config = method_of(**{"model.arch": arch, "model.small_stem": False, "model.stem_stride": 1})
    record = init(method, config, tmp_path / "vit.pth")
    assert_equal(part(method, "backbone"), {k: v for k, v in model.state_dict().items() if not k.startswith("head.")})
    assert record["not_used"] == {"head": 2}


def test_byol_restarts_its_target_from_the_weights(source_run):
    method, config = method_of(**{"model.method": "byol"})
    init(method, config, source_run)
    assert_equal(part(method, "target_backbone"), part(method, "backbone"))
    assert_equal(part(method, "target_projector"), part(method, "projector"))


def write_refused(tmp_path: Path, source_run: Path, case: str) -> Path:
    """The weights file of a refusal case."""
    path = tmp_path / "weights.pth"
    resnet = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    if case == "garbage":
        path.write_bytes(b"\x00 not a zip archive")
    elif case == "another arch":
        torch.save(torchvision.models.resnet34().state_dict(), path)
    elif case == "no tensor matches":
        torch.save({"encoder.weight": torch.zeros(2, 2)}, path)
    elif case == "partial backbone":
        torch.save({k: v for k, v in resnet.items() if not k.startswith("layer4.1.")}, path)
    elif case == "sidecar":
        export_backbone(source_run, path)  # small_stem true, the run says --no-small-stem
    return path


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "weights.pth: no such file or directory; pass a run directory"),
        ("garbage", "--init: cannot load"),
        ("another arch", "does not fit this run's --arch resnet18 --no-small-stem (unexpected: layer1.2."),
        ("no tensor matches", "none of its 1 tensors (encoder.weight) is a weight of this run's --arch resnet18"),
        ("partial backbone", "(missing: layer4.1.bn1.bias"),
        ("sidecar", "small_stem False contradicts --init"),
    ],
)
def test_refusals_are_one_line_and_leave_no_run_directory(source_run, tmp_path, capsys, case, expected):
    path = write_refused(tmp_path, source_run, case)
    out = tmp_path / "run"
    argv = ["pretrain", *TINY, "--no-small-stem", "--init", str(path), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()
    if case == "another arch":
        assert err.endswith("they are resnet34 weights: pass --arch resnet34 --no-small-stem")
    if case == "partial backbone":
        assert err.endswith("the backbone must be whole: pass weights of all of it")
    if case == "sidecar":
        assert err.endswith("pass --arch resnet18 --small-stem or other --init weights")


def test_a_contradiction_names_both_architectures(source_run):
    method, config = method_of(**{"model.arch": "resnet34"})
    with pytest.raises(
        BarlowTwinsError, match=r"arch 'resnet34' contradicts --init .*, whose weights are arch 'resnet18'"
    ):
        init(method, config, source_run)
