"""``barlowtwins detect`` (paper Table 4, appendix C.2), fast parts: readers, flips, batches, backbone weights inside
the detector, AP against pycocotools, recipes, one-line errors. The fine-tunes are in test_detect_train.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torchvision
from detect_shapes import draw, make_coco, make_voc, shapes
from PIL import Image

from barlowtwins.cli import main
from barlowtwins.detection.backbone import load_resnet
from barlowtwins.detection.data import DetectionDataset, StepBatches, flip_target, read_split, read_voc
from barlowtwins.detection.evaluate import coco_metrics, detections_coco, ground_truth_coco, voc07_metrics
from barlowtwins.detection.recipes import make_detect_config
from barlowtwins.detection.train import build, lr_factor
from barlowtwins.recipes import recipe_names

RACCOON = Path(__file__).resolve().parents[3] / "shared" / "data" / "raccoon"


def _voc_tree(root: Path, objects_xml: str, ids=("a",), size=(100, 80), split="trainval") -> Path:
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        Image.new("RGB", size).save(root / "JPEGImages" / f"{image_id}.jpg")
        (root / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{objects_xml}</annotation>")
    (root / "ImageSets/Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def _obj(name: str, box: tuple[int, int, int, int], difficult: int = 0) -> str:
    x0, y0, x1, y1 = box
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
    )


def test_voc_reader_boxes_and_bad_annotations(tmp_path):
    xml = _obj("cat", (11, 21, 40, 50)) + _obj("dog", (81, 61, 130, 90), difficult=1)  # dog reaches outside
    xml += _obj("cat", (50, 50, 49, 70)) + _obj("cow", (1, 1, 10, 10))  # no area; unknown class
    root = _voc_tree(tmp_path / "voc", xml, ids=("a", "b"))
    (root / "JPEGImages" / "b.jpg").unlink()  # a missing image
    (root / "ImageSets/Main/train.txt").write_text("other\n")  # trainval.txt wins over train.txt
    data = read_voc([root], ("trainval", "train"), classes=("cat", "dog"))
    assert len(data.images) == 1 and data.classes == ["cat", "dog"]
    record = data.images[0]
    assert (record.width, record.height) == (100, 80)
    assert record.boxes == [[10.0, 20.0, 40.0, 50.0], [80.0, 60.0, 100.0, 80.0]]  # 1-based -> continuous, clipped
    assert record.labels == [1, 2] and record.ignore == [False, True]
    assert data.skipped == {
        "boxes clipped to the image": 1,
        "boxes with no area inside the image": 1,
        "objects of unknown classes": 1,
        "images or annotation files missing": 1,
    }
    assert read_voc([root], ("trainval",)).classes == ["cat", "cow", "dog"]  # found in the annotations, sorted


def test_voc07_plus_12_tests_on_the_tree_with_test_txt(tmp_path):
    voc07 = _voc_tree(tmp_path / "VOC2007", _obj("cat", (1, 1, 20, 20)), ids=("t07",), split="test")
    _voc_tree(voc07, _obj("cat", (1, 1, 20, 20)), ids=("a07",), split="trainval")
    voc12 = _voc_tree(tmp_path / "VOC2012", _obj("cat", (1, 1, 20, 20)), ids=("a12",), split="trainval")
    _voc_tree(voc12, _obj("cat", (1, 1, 20, 20)), ids=("v12",), split="val")
    assert [r.path.stem for r in read_split([voc07, voc12], "train").images] == ["a07", "a12"]
    assert [r.path.stem for r in read_split([voc07, voc12], "test").images] == ["t07"]


def test_coco_reader_masks_crowd_and_bad_annotations(tmp_path):
    root = make_coco(tmp_path / "coco", train=2, test=1)
    annotations = json.loads((root / "annotations/instances_train2017.json").read_text())
    first = annotations["annotations"][0]
    annotations["annotations"] += [
        {**first, "id": 90, "category_id": 99},  # unknown category
        {**first, "id": 91, "bbox": [200, 200, 5, 5]},  # outside the image
        {**first, "id": 92, "iscrowd": 1},
    ]
    (root / "annotations/instances_train2017.json").write_text(json.dumps(annotations))
    data = read_split([root], "train")
    assert data.classes == ["square", "bar"] and data.has_masks  # category ids 3, 7 -> labels 1, 2
    assert data.skipped == {"objects of unknown classes": 1, "boxes with no area inside the image": 1}
    record, expected = data.images[0], shapes(0, 80, 64)
    assert record.image_id == 100 and record.boxes[:2] == [[float(v) for v in box] for _, box in expected]
    assert record.ignore == [False, False, True]
    image, target = DetectionDataset(data, masks=True, train=True)[(0, False)]
    assert len(target["boxes"]) == 2  # the crowd object stays out of training
    for mask, (_, (x0, y0, x1, y1)) in zip(target["masks"], expected):  # polygon and uncompressed RLE
        truth = torch.zeros(64, 80, dtype=torch.uint8)
        truth[y0:y1, x0:x1] = 1
        assert torch.equal(mask, truth)
    assert torch.allclose(image, torch.from_numpy(draw(expected, 80, 64)).permute(2, 0, 1).float() / 255)


def test_flip_moves_image_boxes_and_masks_together(tmp_path):
    target = {"boxes": torch.tensor([[10.0, 20.0, 40.0, 50.0]]), "labels": torch.tensor([1])}
    target["masks"] = torch.zeros(1, 60, 100, dtype=torch.uint8)
    target["masks"][0, 20:50, 10:40] = 1
    flipped = flip_target(target, 100)
    assert flipped["boxes"].tolist() == [[60.0, 20.0, 90.0, 50.0]]
    assert flipped["masks"][0].nonzero()[:, 1].unique().tolist() == list(range(60, 90))
    data = read_split([make_coco(tmp_path / "coco", train=1, test=1)], "train")
    image, target = DetectionDataset(data, masks=True, train=True)[(0, True)]
    for box, mask, label in zip(target["boxes"].long(), target["masks"], target["labels"]):
        x0, y0, x1, y1 = box.tolist()
        assert mask[y0:y1, x0:x1].all() and mask.sum() == (x1 - x0) * (y1 - y0)
        colour = torch.tensor(list(((220, 40, 40), (40, 60, 220))[label - 1])) / 255
        assert torch.allclose(image[:, y0:y1, x0:x1].mean(dim=(1, 2)), colour)  # the shape is under its box


def test_batches_resume_where_they_stopped():
    full = StepBatches(10, 4, seed=3)
    first = [batch for batch, _ in zip(full, range(7))]
    resumed = [batch for batch, _ in zip(StepBatches(10, 4, seed=3, step=4), range(3))]
    assert resumed == first[4:]
    order = [i for batch in first for i, _ in batch]
    assert sorted(order[:10]) == sorted(order[10:20]) == list(range(10))  # whole epochs, one after another
    assert order[:10] != order[10:20]
    assert {f for batch in first for _, f in batch} == {True, False}


def test_lr_schedule_warmup_and_scaled_milestones():
    args = {"steps": 24000, "milestones": (18000, 22000), "warmup": 1000, "warmup_factor": 0.333, "gamma": 0.1}
    assert lr_factor(0, 24000, **args) == pytest.approx(0.333)
    assert lr_factor(500, 24000, **args) == pytest.approx(0.333 * 0.5 + 0.5)
    assert lr_factor(17999, 24000, **args) == 1.0
    assert lr_factor(18000, 24000, **args) == pytest.approx(0.1)
    assert lr_factor(22000, 24000, **args) == pytest.approx(0.01)
    assert lr_factor(75, 100, **{**args, "warmup": 0}) == pytest.approx(0.1)  # a budget of 100 steps: 75 = 18k/24k


def test_recipes_read_back_appendix_c2():
    coco = make_detect_config("coco", [{"data": ["x"]}])
    c2_coco = {"model": "mask_rcnn", "variant": "c4", "norm": "sync", "lr": 0.03, "batch_size": 16, "steps": 90000}
    c2_coco |= {"milestones": (60000, 80000), "warmup_steps": 1000, "gamma": 0.1, "test_size": 800}
    assert {k: getattr(coco, k) for k in c2_coco} == c2_coco
    voc = make_detect_config("voc", [{"data": ["x"]}])
    c2_voc = {"model": "faster_rcnn", "variant": "c4", "norm": "sync", "lr": 0.1, "batch_size": 16, "steps": 24000}
    c2_voc |= {"milestones": (18000, 22000), "warmup_steps": 1000, "warmup_factor": 0.333, "gamma": 0.1}
    assert {k: getattr(voc, k) for k in c2_voc} == c2_voc and len(voc.classes) == 20
    assert make_detect_config("detect-cpu", [{"data": ["x"]}]).batch_size == 4
    assert not {"voc", "coco", "detect-cpu"} & set(recipe_names())  # not offered as pretraining recipes


@pytest.mark.parametrize("variant", ["c4", "fpn"])
def test_our_backbone_weights_are_inside_the_detector(tmp_path, variant):
    torch.manual_seed(1)
    resnet = torchvision.models.resnet18(weights=None)
    torch.nn.init.normal_(resnet.bn1.running_mean)  # statistics that are not the defaults
    torch.save(resnet.state_dict(), tmp_path / "weights.pth")
    config = make_detect_config(
        None, [{"data": ["x"], "checkpoint": str(tmp_path / "weights.pth"), "arch": "resnet18"}]
    )
    for norm in ("sync", "frozen"):
        c = make_detect_config(None, [{**config.to_dict(), "variant": variant, "norm": norm, "model": "mask_rcnn"}])
        detector, info = build(c, 2)
        inside = detector.state_dict()
        for key, value in resnet.state_dict().items():
            if key.startswith("fc.") or key.endswith("num_batches_tracked"):
                continue
            name = "backbone.body." + key  # FPN: torchvision's IntermediateLayerGetter keeps the names
            if variant == "c4":  # stem, res2-res4 as the feature map, res5 in the box head
                name = "roi_heads.box_head.res5." + key[7:] if key.startswith("layer4") else "backbone." + key
                name = name if key.startswith("layer") else "backbone.stem." + key
            assert torch.equal(inside[name], value), name
        assert info["weights"] == str(tmp_path / "weights.pth")
        frozen = sum(isinstance(m, torchvision.ops.FrozenBatchNorm2d) for m in detector.modules())
        assert (frozen > 0) == (norm == "frozen")
    if variant == "c4":  # Mask R-CNN C4: the mask head is the box head's res5, the same tensors
        assert detector.roi_heads.mask_head is detector.roi_heads.box_head.res5


def _truth_and_results(tmp_path):
    data = read_split([make_voc(tmp_path / "voc", train=1, test=3)], "test", ["square", "bar"])
    truth = ground_truth_coco(data)
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in truth["annotations"]
    ]
    return data, truth, perfect


def test_ap_against_known_answers(tmp_path):
    data, truth, perfect = _truth_and_results(tmp_path)
    assert coco_metrics(truth, perfect)["AP"] == 100.0 and voc07_metrics(data, perfect)["AP50"] == 100.0
    squares = [r for r in perfect if r["category_id"] == 1]
    bars = [r for r in perfect if r["category_id"] == 2]
    half = squares + bars[:1] + [dict(bars[0], bbox=[0, 0, 4, 4], score=0.95)]
    # bars: 3 objects, one found, a false positive scored above it; squares perfect
    metrics, voc = coco_metrics(truth, half), voc07_metrics(data, half)
    # COCO's 101-point AP for bars: precision 1/2 up to recall 1/3, then 0: 34 of 101 points at 0.5
    assert metrics["AP50"] == pytest.approx(100 * (1 + 34 * 0.5 / 101) / 2, abs=1e-3)
    assert voc["per_class"] == {"square": 100.0, "bar": pytest.approx(100 * 4 * 0.5 / 11, abs=1e-3)}
    assert voc["AP50"] == pytest.approx((100 + 100 * 2 / 11) / 2, abs=1e-3)
    assert coco_metrics(truth, [])["AP"] == 0.0


def test_results_files_rescore_with_pycocotools_alone(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data, truth, perfect = _truth_and_results(tmp_path)
    outputs, ids = [], []
    for record in data.images:
        boxes = torch.tensor(record.boxes) + torch.tensor([[1.0, 0.0, 1.0, 2.0]])  # slightly off: AP75 < AP50
        masks = torch.zeros(len(boxes), 1, record.height, record.width)
        for m, (x0, y0, x1, y1) in zip(masks, torch.tensor(record.boxes).long().tolist()):
            m[0, y0:y1, x0:x1] = 0.9
        scores = torch.linspace(0.9, 0.5, len(boxes))
        outputs.append({"boxes": boxes, "labels": torch.tensor(record.labels), "scores": scores, "masks": masks})
        ids.append(record.image_id)
    results = detections_coco(outputs, ids)
    (tmp_path / "gt.json").write_text(json.dumps(truth))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    gt = COCO(str(tmp_path / "gt.json"))
    evaluation = COCOeval(gt, gt.loadRes(str(tmp_path / "dt.json")), "bbox")
    evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    ours = coco_metrics(truth, results)
    assert [ours[k] for k in ("AP", "AP50", "AP75")] == [round(100 * v, 3) for v in evaluation.stats[:3]]
    assert 0 < ours["AP"] < 100
    assert (
        coco_metrics(truth, [{k: v for k, v in r.items() if k != "segmentation"} for r in results])["AP"] == ours["AP"]
    )


def test_mask_results_are_rle_and_score_perfect_masks(tmp_path):
    root = make_coco(tmp_path / "coco", train=1, test=2)
    data = read_split([root], "test")
    truth = ground_truth_coco(data)
    outputs = []
    for record in data.images:
        _, target = DetectionDataset(data, masks=True, train=False)[(data.images.index(record), False)]
        n = len(target["boxes"])
        outputs.append({**target, "scores": torch.ones(n), "masks": target["masks"][:, None].float()})
    results = detections_coco(outputs, [r.image_id for r in data.images])
    assert isinstance(results[0]["segmentation"]["counts"], str)
    assert coco_metrics(truth, results, "segm")["AP"] == 100.0


@pytest.fixture
def raccoon() -> Path:
    if not (RACCOON / "Annotations").is_dir():
        message = f"raccoon set not found at {RACCOON} (it lives in the project's shared/ folder)"
        if os.environ.get("BARLOWTWINS_REQUIRE_SHARED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return RACCOON


def test_raccoon_reads_as_its_readme_says(raccoon):
    train, test = read_split([raccoon], "train"), read_split([raccoon], "test")
    assert (len(train.images), len(test.images)) == (160, 40) and train.classes == ["raccoon"]
    assert sum(len(r.boxes) for r in train.images + test.images) == 217
    assert not train.skipped and not test.skipped  # every box inside its image
    assert {r.path.stem for r in train.images}.isdisjoint(r.path.stem for r in test.images)
    record = next(r for r in train.images if r.path.stem == "raccoon-1")
    assert (record.width, record.height, record.boxes) == (650, 417, [[80.0, 87.0, 522.0, 408.0]])


def _error(capsys, *argv: str) -> str:
    assert main(["detect", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_input_one_line_errors(tmp_path, capsys):
    voc = make_voc(tmp_path / "voc", train=1, test=1)
    out = ["--out", str(tmp_path / "out")]
    assert "neither a VOC tree" in _error(capsys, "--data", str(tmp_path), "--checkpoint", "random", *out)
    assert "needs --arch" in _error(capsys, "--data", str(voc), "--checkpoint", "random", *out)
    assert "needs masks" in _error(capsys, "--data", str(voc), "--checkpoint", "random", "--arch", "resnet18",
                                   "--model", "mask_rcnn", *out)  # fmt: skip
    assert "no checkpoint" in _error(capsys, "--data", str(voc), "--checkpoint", str(tmp_path / "nope"), *out)
    assert "unknown config key" in _error(capsys, "--data", str(voc), "--checkpoint", "random", "--set", "lr_x=1", *out)
    assert "variant must be" in _error(
        capsys, "--data", str(voc), "--checkpoint", "random", "--set", "variant=c5", *out
    )
    assert "no detection recipe" in _error(capsys, "--data", str(voc), "--checkpoint", "random", "--recipe", "x", *out)
    (voc / "Annotations" / "img000.xml").write_text("<annotation><object>")
    assert "cannot read the VOC annotation" in _error(capsys, "--data", str(voc), "--checkpoint", "random", *out)


def test_resnet_check_names_the_architecture(tmp_path):
    pytest.importorskip("timm")
    resnet, info = load_resnet("random", "timm:resnet10t")  # a timm ResNet has layer1-layer4 too
    assert info["arch"] == "timm:resnet10t" and hasattr(resnet, "layer4")
    with pytest.raises(Exception, match="needs a ResNet"):
        load_resnet("random", "timm:convnext_atto")


def test_processes_share_each_global_batch_without_overlap():
    """Under torchrun each of W processes takes every W-th key of the same global batch: together, the batch."""
    whole = [batch for batch, _ in zip(StepBatches(10, 4, seed=3, step=2), range(5))]
    shares = [[b for b, _ in zip(StepBatches(10, 4, seed=3, step=2, rank=r, world=2), range(5))] for r in (0, 1)]
    for step, batch in enumerate(whole):
        assert len(shares[0][step]) == len(shares[1][step]) == 2
        assert sorted(shares[0][step] + shares[1][step]) == sorted(batch)
