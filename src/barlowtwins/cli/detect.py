"""``detect``: fine-tune a detector on a backbone and score it (paper Table 4, appendix C.2).

Flags become overrides of :class:`~barlowtwins.config.DetectConfig` on top of the recipe; nothing here
repeats a default.
"""

from __future__ import annotations

import argparse

from barlowtwins.cli.helptext import add_command
from barlowtwins.config import DETECT_MODELS


def _cmd_detect(args: argparse.Namespace) -> None:
    from barlowtwins.detection.recipes import make_detect_config
    from barlowtwins.detection.train import detect
    from barlowtwins.recipes import override, parse_override

    overrides = [parse_override(text) for text in args.set]
    named = {"data": args.data, "checkpoint": args.checkpoint, "out": args.out}
    named |= {k: getattr(args, k) for k in ("arch", "model", "time_budget") if getattr(args, k) is not None}
    overrides += [override(key, value) for key, value in named.items()]
    detect(make_detect_config(args.recipe, overrides))


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``detect`` on the ``barlowtwins`` parser's subparsers."""
    p = add_command(
        commands,
        "detect",
        "detection / instance segmentation transfer (Table 4, appendix C.2)",
        "Fine-tune torchvision's Faster R-CNN (VOC07+12) or Mask R-CNN (COCO) on a pretrained backbone and score "
        "AP with pycocotools: the paper's detection transfer (§3.2, Table 4; appendix C.2). A recipe gives every "
        "value (without one: C.2's VOC07+12 run); the flags and --set override it.",
        (
            "barlowtwins detect --recipe detect-cpu --data VOCdevkit/VOC2007 --checkpoint runs/cifar10 "
            "--time-budget 20m --out runs/detect",
            "torchrun --nproc_per_node 8 -m barlowtwins detect --recipe voc --data VOC2007 VOC2012 "
            "--checkpoint runs/in1k --out runs/voc",
        ),
    )
    p.add_argument("--data", nargs="+", required=True, help="VOC tree(s) (VOC07+12: both) or a COCO 2017 folder")
    p.add_argument("--checkpoint", required=True, help="run directory, exported .pth / .safetensors, or 'random'")
    p.add_argument(
        "--arch", help="architecture of a plain state_dict or of 'random', e.g. resnet50 (default: the checkpoint's)"
    )
    p.add_argument(
        "--model", choices=DETECT_MODELS, help="default: the recipe's (faster_rcnn for voc and without a recipe)"
    )
    p.add_argument(
        "--recipe",
        help="voc, coco (appendix C.2), detect-cpu (small data on a CPU) or a YAML path (default: none: C.2's VOC run)",
    )
    p.add_argument("--time-budget", help="fit the steps to a training time, e.g. 20m (default: the recipe's steps)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any DetectConfig field")
    p.add_argument("--out", required=True, help="run directory (config, metrics, checkpoint, eval/)")
    p.set_defaults(run=_cmd_detect)
