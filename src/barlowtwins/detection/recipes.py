"""Detection recipes (``recipes/detection/<name>.yaml``) and ``--set`` overrides -> one validated DetectConfig.

Same rules as pretraining's :mod:`barlowtwins.recipes` (whose merging and type checks this reuses): a recipe
holds only what differs from :class:`~barlowtwins.config.DetectConfig`'s defaults, unknown keys and
wrongly typed values are refused. Kept in their own folder, the detection recipes never show up as
pretraining recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from barlowtwins.config import DETECT_MODELS, DETECT_NORMS, DETECT_VARIANTS, DetectConfig
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.recipes import RECIPE_DIR, _build, _merge, load_recipe
from barlowtwins.validation import parse_duration

DETECT_RECIPE_DIR = RECIPE_DIR / "detection"


def detect_recipe_names() -> list[str]:
    return sorted(p.stem for p in DETECT_RECIPE_DIR.glob("*.yaml"))


def make_detect_config(recipe: str | None = None, overrides: list[dict[str, Any]] | None = None) -> DetectConfig:
    """Defaults <- recipe (a name or a YAML path) <- overrides (in order), validated."""
    values: dict[str, Any] = {}
    if recipe:
        path = Path(recipe) if Path(recipe).suffix else DETECT_RECIPE_DIR / f"{recipe}.yaml"
        if not path.is_file():
            raise BarlowTwinsError(f"no detection recipe '{recipe}'; use one of {', '.join(detect_recipe_names())}")
        values = load_recipe(str(path))
    for override in overrides or []:
        values = _merge(values, override)
    config = _build(DetectConfig, values, "")
    validate_detect(config)
    return config


def validate_detect(c: DetectConfig) -> None:
    """Reject settings that cannot work, naming the fix."""
    for name, value, allowed in (
        ("model", c.model, DETECT_MODELS),
        ("variant", c.variant, DETECT_VARIANTS),
        ("norm", c.norm, DETECT_NORMS),
    ):
        if value not in allowed:
            raise BarlowTwinsError(f"{name} must be one of {', '.join(allowed)} (got '{value}')")
    if not c.data:
        raise BarlowTwinsError("--data is required: a VOC tree (or several) or a folder in COCO 2017's layout")
    positive = {"batch_size": c.batch_size, "steps": c.steps, "lr": c.lr, "max_size": c.max_size}
    positive |= {"test_size": c.test_size, "box_batch_per_image": c.box_batch_per_image, "log_every": c.log_every}
    for name, value in positive.items():
        if not value > 0:
            raise BarlowTwinsError(f"{name} must be positive (got {value})")
    if not c.min_sizes or min(c.min_sizes) < 16:
        raise BarlowTwinsError(f"min_sizes must be shorter sides of at least 16 px (got {list(c.min_sizes)})")
    if not 0 < c.warmup_factor <= 1 or not 0 < c.gamma <= 1:
        raise BarlowTwinsError(f"warmup_factor and gamma must be in (0, 1] (got {c.warmup_factor}, {c.gamma})")
    if list(c.milestones) != sorted(c.milestones) or any(m <= 0 or m >= c.steps for m in c.milestones):
        raise BarlowTwinsError(
            f"milestones must increase and lie inside (0, steps={c.steps}) (got {list(c.milestones)})"
        )
    parse_duration(c.time_budget)
