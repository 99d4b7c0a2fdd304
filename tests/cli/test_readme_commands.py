"""A newcomer's path: the README's "your own folder" commands, run as written on a generated folder of photos.

The commands are the ``bash`` block after the README's ``<!-- your-own-folder ... -->`` comment. The test replaces
the placeholder folder ``~/photos`` with a folder of 40 small JPEG photos in ``tmp_path``, runs every line in
``tmp_path`` (so the README's relative ``runs/photos`` lands there) and appends, to keep it under a minute on two
cores, the tiny settings of ``TINY`` to the lines of the commands it names: argparse keeps the last value of a
repeated flag, so these win over the README's own (``--time-budget ""`` means "the epochs": one epoch of 40
photos, 3 steps of 16, instead of 20 minutes; fp32 without the precision probe, no monitor pictures). Nothing
else of the README's lines changes. Each line runs through the console script's own entry point,
``barlowtwins.cli.main``, in this process (a subprocess per line would add seconds of imports, not coverage).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from barlowtwins.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
PLACEHOLDER = "~/photos"
TINY = {
    "pretrain": ["--time-budget", "", "--epochs", "1", "--batch-size", "16", "--projector", "64-64-64"]
    + ["--workers", "0", "--precision", "fp32", "--set", "monitor.picture_every=0"],
    "embed": ["--workers", "0"],
}


def readme_folder_commands() -> list[list[str]]:
    """The argument lists of the README's "your own folder" block, continuation lines joined."""
    match = re.search(r"<!-- your-own-folder[^>]*-->\n```bash\n(.*?)```", README.read_text(), re.S)
    assert match, "README.md lost its '<!-- your-own-folder -->' block"
    text = match.group(1).replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in text.splitlines() if line.strip()]


def make_photos(folder: Path, count: int = 40) -> None:
    """``count`` small JPEG photos of two kinds (stripes, blobs) at a photo's aspect ratio, in a flat folder."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    y, x = np.mgrid[0:48, 0:64]
    for i in range(count):
        period = 2 + i % 7
        pattern = np.sin(x / period) if i % 2 else np.exp(-((x - 32) ** 2 + (y - 24) ** 2) / (40.0 * period))
        colour = rng.uniform(40, 215, size=3)
        image = colour + 80 * pattern[..., None] + rng.normal(0, 12, size=(48, 64, 3))
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"IMG_{i:04d}.jpg", quality=90)


def test_readme_names_the_placeholder_folder_and_three_commands():
    commands = readme_folder_commands()
    assert [c[:2] for c in commands] == [["barlowtwins", name] for name in ("pretrain", "embed", "export")]
    assert all(PLACEHOLDER in command for command in commands[:2])


@pytest.mark.slow
def test_readme_own_folder_commands_give_a_checkpoint_features_and_an_export(tmp_path, monkeypatch, capsys):
    photos = tmp_path / "photos"
    make_photos(photos)
    monkeypatch.chdir(tmp_path)  # the README's relative runs/photos lands in tmp_path
    for command in readme_folder_commands():
        name = command[1]
        args = [str(photos) if arg == PLACEHOLDER else arg for arg in command[1:]] + TINY.get(name, [])
        code = main(args)
        assert code == 0, f"{shlex.join(command)} failed:\n{capsys.readouterr().err[-2000:]}"
    run = tmp_path / "runs" / "photos"
    assert (run / "checkpoint.pt").is_file()
    features = np.load(run / "embeddings" / "features.npy")
    assert features.shape == (40, 512) and np.isfinite(features).all()  # one ResNet-18 feature row per photo
    assert len(set(np.load(run / "embeddings" / "ids.npy").tolist())) == 40
    sidecar = json.loads((run / "backbone.json").read_text())
    assert (run / "backbone.pth").is_file() and (run / "backbone.safetensors").is_file()
    assert sidecar["arch"] == "resnet18"
