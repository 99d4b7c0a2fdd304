"""``barlowtwins neighbours``: the neighbours are numpy's cosine top-k, the picture shows the photos where its layout
says, TensorBoard's own projector plugin reads the projector files, and bad input is one error line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from barlowtwins.cli import main
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.evaluate.neighbours import hit_rate, named_queries, nearest, same_label
from barlowtwins.evaluate.neighbours_picture import HIT_FRAMES, QUERY_FRAME, Layout, PanelPicture, draw_neighbours
from barlowtwins.evaluate.projector import MAX_SPRITE, sprite_side, write_projector

CLASSES = ("cats", "dogs")
THUMB = 32  # with 40 x 48 photos: no reduced JPEG decode, so PIL's own centre crop is the reference


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """2 classes x 10 generated JPEGs, 40 x 48 px: red-ish cats, blue-ish dogs."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(10):
            pixels = rng.integers(0, 90, (40, 48, 3), dtype=np.uint8)
            pixels[..., 2 * c] += 150
            Image.fromarray(pixels).save(root / name / f"{name[:-1]}{i:02d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from barlowtwins.models.backbones import build_backbone

    torch.manual_seed(1)
    backbone, _, _ = build_backbone("resnet18", small_stem=True)
    path = tmp_path_factory.mktemp("weights") / "r18.pth"
    torch.save(backbone.state_dict(), path)
    return path


def _args(weights: Path, *more: str) -> list[str]:
    common = ["--checkpoint", str(weights), "--arch", "resnet18", "--small-stem", "--image-size", "32"]
    return [*common, "--workers", "0", *more]


@pytest.fixture(scope="module")
def result(photos, weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("neighbours")
    more = ("--data", str(photos), "--queries", "3", "--k", "4", "--thumbnail", str(THUMB), "--out", str(out))
    assert main(["neighbours", *_args(weights, *more)]) == 0
    return out


def test_nearest_is_numpys_cosine_top_k_without_the_query_itself():
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(50, 16, generator=generator)
    rows = torch.tensor([3, 17, 40])
    indices, similarities = nearest(bank[rows], bank, 5, exclude=rows, chunk_size=2)
    unit = bank.numpy() / np.linalg.norm(bank.numpy(), axis=1, keepdims=True)
    cosine = unit[rows.numpy()] @ unit.T
    cosine[np.arange(3), rows.numpy()] = -np.inf
    expected = np.argsort(-cosine, axis=1)[:, :5]
    assert indices.tolist() == expected.tolist()
    assert np.allclose(similarities.numpy(), np.take_along_axis(cosine, expected, axis=1), atol=1e-6)


def test_a_hand_made_bank_gives_the_known_neighbours_and_hits():
    angles = torch.tensor([0.0, 0.1, 0.3, 1.0, 3.0])  # points on a circle, scaled: cosine ignores the length
    bank = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [5.0], [0.2], [2.0], [1.0]])
    indices, similarities = nearest(bank[:1], bank, 3, exclude=torch.tensor([0]))
    assert indices.tolist() == [[1, 2, 3]]
    assert np.allclose(similarities.numpy(), np.cos([[0.1, 0.3, 1.0]]), atol=1e-6)
    assert nearest(bank[:1], bank, 1)[0].tolist() == [[0]]  # without exclusion a bank row finds itself
    hits = same_label(["a", None], ["a", "b", "a", None, "b"], torch.tensor([[1, 2, 3], [0, 1, 2]]))
    assert hits == [[False, True, None], [None, None, None]]
    assert hit_rate(hits) == 0.5 and hit_rate([[None]]) is None


def test_queries_are_named_by_path_or_its_last_parts():
    ids = ["/d/cats/cat01.jpg", "/d/dogs/dog01.jpg", "/d/dogs/x/cat01.jpg"]
    assert named_queries(ids, ["dog01.jpg", "/d/cats/cat01.jpg", "x/cat01.jpg", "dogs/dog01.jpg"]) == [1, 0, 2, 1]
    with pytest.raises(BarlowTwinsError, match="names 2 samples"):
        named_queries(ids, ["cat01.jpg"])
    with pytest.raises(BarlowTwinsError, match="--query bird.jpg is not in --data"):
        named_queries(ids, ["bird.jpg"])


def test_the_command_finds_numpys_neighbours_of_the_embed_commands_features(result, photos, weights, tmp_path):
    report = json.loads((result / "neighbours.json").read_text())
    assert set(report["results"]) == {"pretrained", "random_init"}
    assert main(["embed", *_args(weights, "--data", str(photos), "--out", str(tmp_path))]) == 0
    features, ids = np.load(tmp_path / "features.npy"), np.load(tmp_path / "ids.npy").tolist()
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    for query in report["results"]["pretrained"]["queries"]:
        row = ids.index(query["id"])
        cosine = unit @ unit[row]
        cosine[row] = -np.inf  # a query never retrieves itself
        expected = [ids[j] for j in np.argsort(-cosine)[:4]]
        assert [n["id"] for n in query["neighbours"]] == expected
        assert [n["similarity"] for n in query["neighbours"]] == pytest.approx(np.sort(cosine)[::-1][:4], abs=1e-3)
        assert all(n["label"] == Path(n["id"]).parent.name for n in query["neighbours"])  # class names


def test_the_picture_shows_each_query_photo_first_and_frames_hits_and_misses(result):
    report = json.loads((result / "neighbours.json").read_text())
    picture = np.asarray(Image.open(result / "neighbours.png").convert("RGB"))
    layout = Layout(THUMB, rows=3, k=4, panels=2)
    assert picture.shape == (layout.size[1], layout.size[0], 3)
    for row, query in enumerate(report["results"]["pretrained"]["queries"]):
        expected = ImageOps.fit(Image.open(query["id"]).convert("RGB"), (THUMB, THUMB), Image.Resampling.BICUBIC)
        x, y = layout.thumbnail_origin(row, -1)
        assert np.abs(picture[y : y + THUMB, x : x + THUMB].astype(int) - np.asarray(expected)).max() <= 1
        frame_x, frame_y = layout.cell_origin(row, -1)
        assert tuple(picture[frame_y, frame_x]) == QUERY_FRAME
        for panel, name in enumerate(("pretrained", "random_init")):
            for j, found in enumerate(report["results"][name]["queries"][row]["neighbours"]):
                x, y = layout.cell_origin(row, j, panel)
                assert tuple(picture[y + 1, x + 1]) == HIT_FRAMES[found["label"] == query["label"]]


def test_the_default_picture_stays_a_few_megabytes_even_of_noise(tmp_path):
    from barlowtwins.config import NeighboursConfig

    s = NeighboursConfig()
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (s.thumbnail, s.thumbnail, 3), dtype=np.uint8) for _ in range(s.queries)]
    panel = PanelPicture(
        ("a", "b"), [noise[: s.k]] * s.queries, [[0.5] * s.k] * s.queries, [["x"] * s.k] * s.queries,
        [[True] * s.k] * s.queries,
    )  # fmt: skip
    image = draw_neighbours("header", noise, [("label", "file.jpg")] * s.queries, [panel, panel], s.thumbnail)
    image.save(tmp_path / "n.png", optimize=True)
    assert image.size == Layout(s.thumbnail, s.queries, s.k, 2).size
    assert (tmp_path / "n.png").stat().st_size < 7_000_000  # incompressible noise; real photos compress to about half


def _projector_plugin(logdir: Path):
    """TensorBoard's own projector plugin on ``logdir``, as ``tensorboard --logdir`` builds it, with its routes."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector import projector_plugin
    from werkzeug import test, wrappers

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    context = base_plugin.TBContext(logdir=str(logdir), data_provider=provider, multiplexer=multiplexer)
    plugin = projector_plugin.ProjectorPlugin(context)
    apps = plugin.get_plugin_apps()

    def get(route: str, **query: str) -> wrappers.Response:
        response = test.Client(apps[route], wrappers.Response).get(route, query_string=query)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response

    return plugin, get


def test_tensorboards_projector_plugin_reads_the_points_labels_files_and_sprite(result):
    plugin, get = _projector_plugin(result)
    plugin._determine_is_active()  # what is_active() starts in a thread
    assert plugin.is_active()
    assert json.loads(get("/runs").get_data()) == ["."]
    config = json.loads(get("/info", run=".").get_data())
    embeddings = {e["tensorName"]: e for e in config["embeddings"]}
    assert set(embeddings) == {"pretrained:00000", "random_init:00000"}
    for name, embedding in embeddings.items():
        assert embedding["tensorShape"] == [20, 512] and embedding["sprite"]["singleImageDim"] == [48, 48]
        tensor = np.frombuffer(get("/tensor", run=".", name=name).get_data(), dtype=np.float32).reshape(20, 512)
        assert np.allclose(np.linalg.norm(tensor, axis=1), 1, atol=1e-4)  # L2-normalised: cosine geometry
        rows = get("/metadata", run=".", name=name).get_data(as_text=True).splitlines()
        assert rows[0] == "label\tfile" and len(rows) == 21
        assert all(label == Path(file).parent.name for label, file in (r.split("\t") for r in rows[1:]))
        sprite = Image.open(result / embedding["sprite"]["imagePath"])
        assert sprite.size == (sprite_side(20, 48),) * 2 == (5 * 48,) * 2
        assert get("/sprite_image", run=".", name=name).headers["Content-Type"] == "image/png"


def test_a_sprite_tensorboard_would_refuse_is_refused_before_writing(tmp_path):
    points = (MAX_SPRITE // 64) ** 2 + 1
    with pytest.raises(BarlowTwinsError, match="--projector-points 16384 or less"):
        write_projector(tmp_path, {}, [None] * points, ["f"] * points, np.zeros((points, 64, 64, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("barlowtwins: error: ")
    return err


def test_bad_input_is_one_error_line(capsys, photos, weights, tmp_path):
    base = ["neighbours", *_args(weights, "--data", str(photos), "--out", str(tmp_path / "o"))]
    assert "--query bird.jpg is not in --data (20 samples" in _error(capsys, [*base, "--query", "bird.jpg"])
    assert "--k 20 is more than the 19 bank samples" in _error(capsys, [*base, "--k", "20"])
    assert "--queries 21 is more than the 20 samples" in _error(capsys, [*base, "--queries", "21"])
    assert "--k must be >= 1" in _error(capsys, [*base, "--k", "0"])
    assert "--class-names nowhere.txt: No such file" in _error(capsys, [*base, "--class-names", "nowhere.txt"])
    assert "TensorBoard's projector takes at most 8192" in _error(capsys, [*base, "--sprite-size", "2000"])
    assert not (tmp_path / "o").exists()


def test_named_queries_search_another_bank_and_the_output_goes_beside_the_weights(capsys, photos, weights, tmp_path):
    bank = tmp_path / "bank"
    for name in CLASSES:  # the bank: the same photos under other names; labels compared by class name
        (bank / name).mkdir(parents=True)
        for photo in sorted((photos / name).iterdir())[:3]:
            (bank / name / f"copy-{photo.name}").write_bytes(photo.read_bytes())
    copy = tmp_path / "w.pth"
    copy.write_bytes(weights.read_bytes())
    names = tmp_path / "classes.txt"
    names.write_text("# folder, readable name\ncats house cat\ndogs dog\n")
    more = ("--data", str(photos), "--bank", str(bank), "--query", "dog03.jpg", "cats/cat07.jpg", "--k", "6")
    more += ("--class-names", str(names), "--no-random-init", "--projector-points", "0")
    assert main(["neighbours", *_args(copy, *more)]) == 0
    out = tmp_path / "w-neighbours"
    report = json.loads((out / "neighbours.json").read_text())
    assert set(report["results"]) == {"pretrained"} and not (out / "projector_config.pbtxt").exists()
    queries = report["results"]["pretrained"]["queries"]
    assert [(Path(q["id"]).name, q["label"]) for q in queries] == [("dog03.jpg", "dog"), ("cat07.jpg", "house cat")]
    assert all(Path(n["id"]).parent.parent == bank for q in queries for n in q["neighbours"])
    renamed = {"cats": "house cat", "dogs": "dog"}
    assert all(n["label"] == renamed[Path(n["id"]).parent.name] for q in queries for n in q["neighbours"])
    assert Image.open(out / "neighbours.png").size == Layout(96, rows=2, k=6, panels=1).size
