"""Embeddings export: rows equal an independent forward pass, ids and labels stay paired across workers."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from barlowtwins.checkpoint import load_checkpoint
from barlowtwins.cli import main
from barlowtwins.data import batches, digits, open_source, sample_index
from barlowtwins.models.backbones import build_backbone
from barlowtwins.views import eval_transform


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory as ``barlowtwins pretrain`` leaves it: demo recipe at 16 px, small stem, projector 32-32.

    Saved by the training loop's own writer after a few train-mode passes, so batch-norm statistics are not
    the initial ones (pretraining itself is tested elsewhere and takes far longer).
    """
    from barlowtwins.recipes import make_config, override
    from barlowtwins.train.build import build_method
    from barlowtwins.train.run_dir import RunDir

    out = tmp_path_factory.mktemp("run")
    sizes = [
        override("augment.image_size", 16),
        override("augment.mean", [0.5] * 3),
        override("augment.std", [0.5] * 3),
    ]
    config = make_config("demo", [override("model.projector", "32-32"), *sizes])
    model = build_method(config).train()
    transform = eval_transform(16, (0.5,) * 3, (0.5,) * 3)
    data = digits("train")
    with torch.no_grad():
        for start in range(0, 96, 32):
            batch = torch.stack([transform(data[i][0]) for i in range(start, start + 32)])
            model(batch, batch.flip(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    RunDir(out, main=True).save(model, optimizer, torch.amp.GradScaler("cpu", enabled=False), config, 3, 3)
    return out


@pytest.mark.slow
def test_embed_writes_backbone_and_projector_outputs_equal_to_a_direct_forward_pass(tiny_run, tmp_path):
    out = tmp_path / "emb"
    args = ["embed", "--checkpoint", str(tiny_run), "--data", "digits:test", "--limit", "40", "--workers", "0"]
    assert main([*args, "--projector", "--out", str(out)]) == 0
    features, projections = np.load(out / "features.npy"), np.load(out / "projections.npy")
    labels, ids = np.load(out / "labels.npy"), np.load(out / "ids.npy")
    assert features.shape == (40, 512) and projections.shape == (40, 32)
    assert ids.tolist() == [str(i) for i in range(40)]
    assert labels.tolist() == digits("test").labels[:40].tolist()

    state = load_checkpoint(tiny_run)
    from barlowtwins.recipes import config_from_dict
    from barlowtwins.train.build import build_method

    model = build_method(config_from_dict(state["config"]))
    model.load_state_dict(state["model"])
    model.eval()
    transform = eval_transform(16, (0.5,) * 3, (0.5,) * 3)  # the run's size and normalisation
    test = digits("test")
    images = torch.stack([transform(test[i][0]) for i in range(40)])
    with torch.no_grad():
        h = model.backbone(images)
        z = model.projector(h)
    assert np.allclose(features, h.numpy(), atol=1e-4)
    assert np.allclose(projections, z.numpy(), atol=1e-4)
    info = json.loads((out / "embed.json").read_text())
    assert info["shapes"]["features"] == [40, 512] and info["transform"]["image_size"] == 16


def test_projector_needs_a_training_checkpoint(tmp_path, capsys):
    backbone, _, _ = build_backbone("resnet18", small_stem=True)
    torch.save(backbone.state_dict(), tmp_path / "w.pth")
    args = ["embed", "--checkpoint", str(tmp_path / "w.pth"), "--arch", "resnet18", "--small-stem"]
    assert main([*args, "--data", "digits:test", "--projector", "--out", str(tmp_path / "e")]) == 2
    assert "holds no projector" in capsys.readouterr().err


def _write_shards(directory, per_shard: int, shards: int) -> list[str]:
    data = digits("train")
    paths = []
    for s in range(shards):
        path = directory / f"d-{s}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                index = s * per_shard + i
                image, label, _ = data[index]
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                for extension, payload in (("png", buffer.getvalue()), ("cls", str(label).encode())):
                    info = tarfile.TarInfo(f"k{index:04d}.{extension}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        paths.append(str(path))
    return paths


def test_ids_stay_with_their_images_when_workers_interleave_shards(tmp_path):
    shards = _write_shards(tmp_path, per_shard=24, shards=3)
    source = open_source(shards)
    loader = batches(source, T.PILToTensor(), 10, workers=2, device=torch.device("cpu"))
    rows = [
        (key, int(label), image)
        for images, labels, keys in loader
        for image, label, key in zip(images, labels, keys, strict=True)
    ]
    ids, labels = sample_index(source)
    assert sorted(key for key, _, _ in rows) == sorted(ids)  # every sample once
    assert [key for key, _, _ in rows] != ids  # two workers really interleaved the shards
    truth = dict(zip(ids, labels.tolist(), strict=True))
    data = digits("train")
    for key, label, image in rows:
        index = int(key[1:])
        assert label == truth[key] == data.labels[index]
        assert torch.equal(image, T.PILToTensor()(data[index][0]))


def test_feature_extraction_caps_workers_at_the_number_of_shards(tmp_path):
    from barlowtwins.evaluate.features import extract

    cpu = torch.device("cpu")
    source = open_source(_write_shards(tmp_path, per_shard=12, shards=1))
    result = extract(torch.nn.Flatten(), batches(source, T.ToTensor(), 5, workers=2, device=cpu), cpu)
    assert result.features.shape == (12, 3 * 8 * 8)  # two workers on one shard would fail inside WebDataset
    assert (result.ids, result.labels.tolist()) == (sample_index(source)[0], sample_index(source)[1].tolist())
