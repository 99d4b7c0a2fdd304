"""The paper's §4 studies as plain data: variant name -> ``--set`` overrides, the paper's number, its claim.

Each variant is a dict with ``set`` (overrides on top of the base recipe), ``paper`` (the paper's ImageNet
linear top-1, or None where the paper shows it only in a figure), ``source`` (where that number comes from),
``expect`` (the paper's conclusion for the row, checked against the study's reference row by
:func:`barlowtwins.ablations.report.verdict`: ``lower``, ``much_lower``, ``similar``, ``higher``, or None for no
claim) and ``claim`` (the paper's words). ``grid`` (optional) maps a label to extra overrides; the report keeps
the best grid point of each variant, as the paper's learning-rate grid search per batch size did.

The paper's numbers are ImageNet, ResNet-50, 300 epochs, linear top-1 (§4); ours are whatever the base recipe
trains, so compare orderings, not values.
"""

from __future__ import annotations

from typing import Any

from barlowtwins.config import LossConfig

PAPER_METRIC = "ImageNet linear top-1 (%), ResNet-50, 300 epochs (paper §4)"
# Barlow Twins at 300 epochs per batch size: the authors' numbers in the official repository's issue #7
# (shared/reference/anchors.md); the paper's Fig. 2 plots them as differences from the best (71.7 at 1024).
PAPER_BT_BY_BATCH = {128: 69.7, 256: 70.7, 512: 71.4, 1024: 71.7, 2048: 71.4, 4096: 70.7}
PAPER_BEST_AT_4096 = {"simclr": 67.1, "byol": 72.5}  # Fig. 2 caption (SimCLR 300 epochs; BYOL Grill et al. fig. 3a)


def _row(overrides: list[str], paper: float | None, expect: str | None, claim: str, source: str) -> dict[str, Any]:
    return {"set": overrides, "paper": paper, "expect": expect, "claim": claim, "source": source}


def table5() -> dict[str, Any]:
    t5 = "Table 5"
    return {
        "title": "Loss function explorations (paper Table 5)",
        "reference": "baseline",
        "variants": {
            "baseline": _row([], 71.4, None, "the loss of eq. 1", t5),
            "invariance_only": _row(
                ["loss.objective=invariance_only"],
                57.3,
                "much_lower",
                "worse/collapsed without the redundancy term",
                t5,
            ),
            "redundancy_only": _row(
                ["loss.objective=redundancy_only"], 0.1, "much_lower", "collapses without the invariance term", t5
            ),
            "feature_norm": _row(
                ["loss.objective=feature_norm"],
                69.8,
                "slightly_lower",
                "normalising along the feature dim: slightly reduced",
                t5,
            ),
            "no_bn": _row(["model.projector_bn=false"], 71.2, "similar", "no BN in the MLP: barely affected", t5),
            "no_bn_cross_cov": _row(
                ["model.projector_bn=false", "loss.objective=cross_covariance"],
                53.4,
                "much_lower",
                "no BN + cross-covariance: substantially reduced",
                t5,
            ),
            "cross_entropy": _row(
                ["loss.objective=cross_entropy", "loss.formulation=cross"],
                63.3,
                "much_lower",
                "cross-entropy with temperature: reduced",
                t5,
            ),
        },
    }


def table6() -> dict[str, Any]:
    t6 = "Table 6"
    return {
        "title": "Breaking symmetry (paper Table 6)",
        "reference": "baseline",
        "variants": {
            "baseline": _row([], 71.4, None, "symmetric twins", t6),
            "stop_gradient": _row(["model.stop_gradient=true"], 70.5, "slightly_lower", "(a) slightly decreases", t6),
            "predictor": _row(["model.predictor=auto"], 70.2, "slightly_lower", "(b) slightly decreases", t6),
            "predictor_stop_gradient": _row(
                ["model.predictor=auto", "model.stop_gradient=true"], 61.3, "much_lower", "(c) decreases most", t6
            ),
        },
    }


def batch_size(batch_sizes: tuple[int, ...], lrs: tuple[float, ...]) -> dict[str, Any]:
    """Fig. 2: each method at each batch size, the best of a LARS learning-rate grid; reference: the method's
    best batch size. Barlow Twins and BYOL are robust to small batches, SimCLR drops (~4 p.p. at 256)."""
    variants = {}
    expects = {"barlow_twins": "similar", "byol": "similar", "simclr": "lower"}
    for method in ("barlow_twins", "simclr", "byol"):
        for b in batch_sizes:
            paper, source = PAPER_BT_BY_BATCH.get(b), "official repository issue #7 (300 epochs)"
            if method != "barlow_twins":
                paper, source = (PAPER_BEST_AT_4096[method] if b == 4096 else None), "Fig. 2 caption"
            expect = None if method == "simclr" and b == max(batch_sizes) else expects[method]
            claim = "robust to small batches" if method != "simclr" else "drops at small batches"
            overrides = [f"model.method={method}", f"train.batch_size={b}"]
            if method != "barlow_twins":  # a recipe's Barlow Twins lambda would be refused, not ignored
                overrides.append(f"loss.lambd={LossConfig.lambd}")
            row = _row(overrides, paper, expect, claim, source)
            row["group"] = method
            row["grid"] = {f"lr{lr:g}": [f"optim.lr_weights={lr}"] for lr in lrs}
            variants[f"{method}-b{b}"] = row
    return {"title": "Effect of batch size (paper Fig. 2)", "reference": "group-best", "variants": variants}


# BYOL's Fig. 3b removes operations in this order; removals accumulate (the last row is crops only).
AUGMENTATION_STEPS = (
    ("no_flip", ["augment.flip_p=0"], None),
    ("no_flip_blur", ["augment.blur_p=[0,0]"], None),
    ("no_flip_blur_color", ["augment.jitter_p=0", "augment.grayscale_p=0"], "much_lower"),
    ("crop_only", ["augment.solarize_p=[0,0]"], "much_lower"),
)


def augmentations() -> dict[str, Any]:
    """Fig. 3: Barlow Twins, like SimCLR and unlike BYOL, is not robust to removing augmentations; the figure's
    numbers are not in the paper's text (None), the claim is checked as an ordering against the baseline."""
    variants = {"baseline": _row([], None, None, "all of BYOL's augmentations", "Fig. 3")}
    removed: list[str] = []
    for name, overrides, expect in AUGMENTATION_STEPS:
        removed = removed + overrides
        claim = "not robust to removing augmentations" if expect else "no claim for this row in the text"
        variants[name] = _row(list(removed), None, expect, claim, "Fig. 3")
    return {
        "title": "Progressively removing augmentations (paper Fig. 3)",
        "reference": "baseline",
        "variants": variants,
    }


def projector_width(widths: tuple[int, ...]) -> dict[str, Any]:
    """Fig. 4: the projector's output width with lambda fixed and the ``gram`` loss (no D x D matrix); the hidden
    layers keep the base recipe's width (``{hidden}``). Each row should beat the narrower one before it."""
    variants = {}
    for i, w in enumerate(sorted(widths)):
        row = _row(
            [f"model.projector={{hidden}}-{{hidden}}-{w}", "loss.formulation=gram"],
            None,
            "higher" if i else None,
            "keeps improving with the output width",
            "Fig. 4",
        )
        row["reference"] = f"width-{sorted(widths)[i - 1]}" if i else None
        variants[f"width-{w}"] = row
    return {"title": "Projector output width (paper Fig. 4)", "reference": "previous", "variants": variants}


PROJECTOR_DEPTHS = (1, 2, 3, 4)  # §4, "Projector Network Depth & Width": the paper's projector has 3 layers


def projector_depth() -> dict[str, Any]:
    """§4: 1 to 4 linear layers, all of the base recipe's width (``{hidden}``; BN + ReLU after all but the
    last), so only the depth changes. "performs better when the projector network has more layers, with a
    saturation of the performance for 3 layers": each row against the one before it, higher up to 3, then
    similar. The paper gives no numbers in its text (None)."""
    variants = {}
    for i, depth in enumerate(PROJECTOR_DEPTHS):
        expect = None if i == 0 else "similar" if depth > 3 else "higher"
        claim = "saturates at 3 layers" if depth > 3 else "more layers perform better"
        row = _row(["model.projector=" + "-".join(["{hidden}"] * depth)], None, expect, claim, "§4 (text)")
        row["reference"] = f"depth-{PROJECTOR_DEPTHS[i - 1]}" if i else None
        variants[f"depth-{depth}"] = row
    return {"title": "Projector depth (paper §4)", "reference": "previous", "variants": variants}


STUDY_NAMES = ("table5", "table6", "batch-size", "augmentations", "projector-width", "projector-depth")


def study(name: str, batch_sizes: tuple[int, ...], lrs: tuple[float, ...], widths: tuple[int, ...]) -> dict[str, Any]:
    """The study called ``name`` (``STUDY_NAMES``), with the grids of the figure studies filled in."""
    builders = {
        "table5": table5,
        "table6": table6,
        "batch-size": lambda: batch_size(batch_sizes, lrs),
        "augmentations": augmentations,
        "projector-width": lambda: projector_width(widths),
        "projector-depth": projector_depth,
    }
    return {"name": name, **builders[name]()}
