"""``detect``: fine-tune a detector on a backbone and score it (paper Table 4, appendix C.2).

Flags become overrides of :class:`~barlowtwins.config.DetectConfig` on top of the recipe; nothing here
repeats a default.
"""

from __future__ import annotations

import argparse

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
    p = commands.add_parser("detect", help="detection / instance segmentation transfer (Table 4, appendix C.2)")
    p.add_argument("--data", nargs="+", required=True, help="VOC tree(s) (VOC07+12: both) or a COCO 2017 folder")
    p.add_argument("--checkpoint", required=True, help="run directory, exported .pth / .safetensors, or 'random'")
    p.add_argument("--arch", help="architecture of a plain state_dict or of 'random', e.g. resnet50")
    p.add_argument("--model", choices=DETECT_MODELS, help="default: the recipe's (faster_rcnn for voc)")
    p.add_argument("--recipe", help="voc, coco (appendix C.2) or detect-cpu (small data on a CPU); or a YAML path")
    p.add_argument("--time-budget", help="fit the steps to a training time, e.g. 20m")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any DetectConfig field")
    p.add_argument("--out", required=True, help="run directory (config, metrics, checkpoint, eval/)")
    p.set_defaults(run=_cmd_detect)
