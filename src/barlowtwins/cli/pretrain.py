"""``pretrain``, ``demo`` and ``export``: parse, build the config, call the library.

The named pretrain flags are declared once, in :data:`PRETRAIN_FLAGS` (flag -> config key, help): the parser,
the overrides they make and the defaults their help shows (the chosen recipe's) all come from that table;
each flag's type follows its field in :mod:`barlowtwins.config`.
"""

from __future__ import annotations

import argparse
import json
import logging
import typing
from collections.abc import Mapping
from typing import Any, NamedTuple

from barlowtwins.cli.helptext import add_command, shown
from barlowtwins.config import FORMULATIONS, OPTIMIZERS, PRECISIONS, PretrainConfig
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.recipes import dropped_eval, flatten, make_config, override, parse_override, recipe_names

logger = logging.getLogger(__name__)


def _learning_rate(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got '{text}'") from None


class Flag(NamedTuple):
    """A named pretrain flag: the config key it sets, its help, and what its field's type does not say."""

    key: str
    help: str
    extra: Mapping[str, Any] = {}


# Named pretrain flags (``--eval-data`` -> ``eval_data``) and the config key each one sets; anything else
# goes through --set. tests/cli/test_cli_help.py checks that every key names a config field.
PRETRAIN_FLAGS: dict[str, Flag] = {
    "data": Flag(
        "data.train", "image folder, .tar shards (pattern or paths), or dataset name (cifar10, cifar100, stl10, digits)"
    ),
    "eval_data": Flag("data.eval", "labelled test data: kNN against --data while training and at the end"),
    "data_root": Flag("data.root", "where torchvision datasets are stored"),
    "download": Flag("data.download", "download torchvision datasets if missing"),
    "limit": Flag("data.limit", "use only the first N training samples (0: all)"),
    "eval_limit": Flag("data.eval_limit", "use only the first N samples of --eval-data (0: all)"),
    "workers": Flag("data.workers", "data loading processes (-1: one per usable CPU, at most 8)"),
    "method": Flag("model.method", "self-supervised method: barlow_twins (the paper's), simclr or byol"),
    "arch": Flag("model.arch", "torchvision ResNet (resnet18, resnet50) or timm:NAME[,key=value...]"),
    "small_stem": Flag("model.small_stem", "3x3 stride-1 first convolution, no max-pool: for 32-96 px images"),
    "projector": Flag("model.projector", "widths of the projector's linear layers (paper §2.2: 8192-8192-8192)"),
    "init": Flag(
        "model.init",
        "start a new run from these weights: a run directory, an exported .pth / .safetensors, a torchvision or "
        "timm state_dict, the authors' resnet50.pth or checkpoint.pth (docs/resuming.md)",
    ),
    "image_size": Flag("augment.image_size", "side of the two views, px"),
    "lambd": Flag("loss.lambd", "weight lambda of the redundancy-reduction term (eq. 1)"),
    "loss_formulation": Flag(
        "loss.formulation", "cross: the DxD matrix; gram: batch space, for wide projectors", {"choices": FORMULATIONS}
    ),
    "optimizer": Flag("optim.optimizer", "lars (paper §2.2), sgd or adamw", {"choices": OPTIMIZERS}),
    "lr": Flag(
        "optim.lr_weights",
        "peak learning rate of weights per 256 images, or 'auto': the authors' ImageNet value for the batch size",
        {"type": _learning_rate},
    ),
    "out": Flag("train.out", "run directory (resumes if it holds a checkpoint)"),
    "epochs": Flag("train.epochs", "training epochs"),
    "time_budget": Flag("train.time_budget", "training time, e.g. 20m: the schedule is fitted to the steps that fit"),
    "batch_size": Flag("train.batch_size", "global batch size, over all processes"),
    "precision": Flag(
        "train.precision",
        "auto: bf16 on GPUs that have it, else fp16; on a CPU fp32 or bf16, whichever measures faster",
        {"choices": PRECISIONS},
    ),
    "device": Flag("train.device", "auto (CUDA when present), cpu, cuda, cuda:1, ..."),
    "seed": Flag("train.seed", "initial weights, data order and augmentations"),
}


def _field_type(key: str) -> Any:
    """The declared type of the config field ``section.name`` (KeyError when there is no such field)."""
    section, name = key.split(".")
    return typing.get_type_hints(typing.get_type_hints(PretrainConfig)[section])[name]


def _argument(flag: Flag, default: Any) -> dict[str, Any]:
    """``add_argument`` settings: typed by the field, unset (None) unless given, help ending with ``default``."""
    hint = _field_type(flag.key)
    if hint is bool:
        kwargs: dict[str, Any] = {"action": argparse.BooleanOptionalAction}
    elif typing.get_origin(hint) is tuple:
        kwargs = {"nargs": "+"}
    else:
        kwargs = {"type": hint} if hint in (int, float) else {}
    text = f"{flag.help} (default: {shown(default)})" if shown(default) else flag.help
    return {**kwargs, "default": None, "help": text, **flag.extra}


def _add_pretrain_arguments(parser: argparse.ArgumentParser, recipe: str | None, choose_recipe: bool) -> None:
    """--recipe (if ``choose_recipe``), the named flags with ``recipe``'s values as defaults, --set."""
    if choose_recipe:
        parser.add_argument("--recipe", help=f"named recipe ({', '.join(recipe_names())}) or a YAML file")
    values = flatten(make_config(recipe).to_dict())
    for dest, flag in PRETRAIN_FLAGS.items():
        parser.add_argument("--" + dest.replace("_", "-"), **_argument(flag, values[flag.key]))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config value, e.g. --set optim.warmup_epochs=1 (repeatable)",
    )
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="evaluate the finished run in --out again (kNN on --eval-data), without training; overwrites its "
        "eval/knn.json (a finished run re-run without it changes nothing)",
    )
    if choose_recipe:
        parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _config_from_args(args: argparse.Namespace, recipe: str | None):
    overrides = [
        override(flag.key, getattr(args, dest))
        for dest, flag in PRETRAIN_FLAGS.items()
        if getattr(args, dest) is not None
    ]
    timm = (args.arch or "").startswith("timm:")
    if timm and args.small_stem is None:
        overrides.append(override("model.small_stem", False))  # a recipe's ResNet stem does not apply to timm models
    if timm or args.small_stem is False:
        overrides.append(override("model.stem_stride", 1))  # no small stem: no recipe's small-stem stride
    overrides += [parse_override(text) for text in args.set]
    config = make_config(recipe, overrides)
    if not getattr(args, "print_config", False):  # --print-config prints the YAML alone
        _say_what_applies(recipe, overrides)
    return config


def _say_what_applies(recipe: str | None, overrides: list[dict[str, Any]]) -> None:
    """Start-up lines: the recipe in use when none was named, and recipe data that --data replaced."""
    if recipe is None:
        paper = PretrainConfig()  # the defaults are the imagenet recipe's values
        logger.info(
            "no --recipe: using the imagenet recipe (the paper's settings: %s, batch %s, %s px views, %s epochs); "
            "--recipe photos-cpu (photos), cifar10-cpu (32 px images) or demo suit a CPU and small datasets",
            paper.model.arch,
            paper.train.batch_size,
            paper.augment.image_size,
            paper.train.epochs,
        )
    dropped = dropped_eval(recipe, overrides)
    if dropped:
        logger.info(
            "--data replaces the %s recipe's training data, so its evaluation data (%s) is dropped too; "
            "pass --eval-data to evaluate",
            recipe,
            ", ".join(dropped),
        )


def _cmd_pretrain(args: argparse.Namespace) -> None:
    config = _config_from_args(args, args.recipe)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return
    if not config.data.train:
        raise BarlowTwinsError("no training data; pass --data (an image folder, .tar shards or a dataset name)")
    from barlowtwins.train import pretrain

    pretrain(config, eval_only=args.eval_only)


def _cmd_demo(args: argparse.Namespace) -> None:
    from barlowtwins.train import pretrain

    config = _config_from_args(args, "demo")
    if not config.data.eval:  # --data replaced the digits, and the held-out digits with them
        raise BarlowTwinsError("demo prints kNN on --eval-data: pass labelled --eval-data with --data, or use pretrain")
    print("demo: Barlow Twins on scikit-learn's 1,500 8x8 digits (CPU, a few minutes); kNN on 297 held-out")
    out = pretrain(config, eval_only=args.eval_only)
    results = json.loads((out / "eval" / "knn.json").read_text())["results"]
    k = str(config.knn.k[0])
    print(
        f"demo result: kNN accuracy (k={k}) {results['random_init']['top1'][k]:.1f}% at random initialisation -> "
        f"{results['pretrained']['top1'][k]:.1f}% after Barlow Twins pretraining ({out}/eval/knn.json)"
    )


def _cmd_export(args: argparse.Namespace) -> None:
    from barlowtwins.export import export_backbone, export_paths

    info = export_backbone(args.checkpoint, args.out, safetensors=args.safetensors)
    written = ", ".join(str(export_paths(args.out)[k]) for k in (*info["files"], "json"))
    print(
        f"wrote {written} ({info['arch']}, {info['feature_dim']} features, epoch {info['epoch']}, "
        f"step {info['step']}); load with {info['load_with']}"
    )


PRETRAIN_DESCRIPTION = """Pretrain an encoder with the Barlow Twins objective (paper §2, Algorithm 1): two
distorted views of every image, a loss that drives the cross-correlation matrix of their embeddings to the
identity (eq. 1). A recipe gives every value; the flags and --set override it.

Defaults shown are the {which}; --recipe R --help shows R's."""
PRETRAIN_EXAMPLES = (
    "barlowtwins pretrain --recipe cifar10-cpu --time-budget 20m --data cifar10 --eval-data cifar10:test --download",
    "barlowtwins pretrain --recipe imagenet --data /data/imagenet/train --eval-data /data/imagenet/val --out runs/in1k",
    "torchrun --nproc_per_node 8 -m barlowtwins pretrain --recipe imagenet --data /data/imagenet/train",
    "barlowtwins pretrain --recipe cifar10 --data cifar10 --set optim.warmup_epochs=1 --print-config",
)
DEMO_DESCRIPTION = """Pretrain a small-stem ResNet-18 with Barlow Twins (paper §2) on scikit-learn's 1,500
built-in 8x8 digits, on a CPU in a few minutes, then print the kNN accuracy on 297 held-out digits at random
initialisation and after pretraining. Nothing to download.

It runs the demo recipe; the flags and --set override it, and the defaults shown are the demo recipe's."""
DEMO_EXAMPLES = ("barlowtwins demo", "barlowtwins demo --epochs 3 --out runs/demo-short")


def add_commands(commands: argparse._SubParsersAction, help_recipe: str | None = None) -> None:
    """``pretrain`` (its help showing ``help_recipe``'s values, else the defaults'), ``demo`` and ``export``."""
    which = f"{help_recipe} recipe's" if help_recipe else "paper's ImageNet settings (§2.2, the imagenet recipe's)"
    description = PRETRAIN_DESCRIPTION.format(which=which)
    pretrain = add_command(
        commands, "pretrain", "pretrain an encoder with the Barlow Twins objective", description, PRETRAIN_EXAMPLES
    )
    _add_pretrain_arguments(pretrain, help_recipe, choose_recipe=True)
    pretrain.set_defaults(run=_cmd_pretrain)

    summary = "pretrain on the built-in digits and print kNN before/after"
    demo = add_command(commands, "demo", summary, DEMO_DESCRIPTION, DEMO_EXAMPLES)
    _add_pretrain_arguments(demo, "demo", choose_recipe=False)
    demo.set_defaults(run=_cmd_demo)

    export = add_command(
        commands,
        "export",
        "write the backbone as .pth + .safetensors + JSON sidecar",
        "Write the backbone of a pretrained run (the encoder the paper evaluates, §3; projector and classifier "
        "removed) as torchvision-named weights: a .pth state_dict, a .safetensors file and a JSON sidecar with "
        "the architecture, stem and pretraining normalisation, which the evaluation commands read.",
        ("barlowtwins export --checkpoint runs/cifar10 --out backbone.pth",),
    )
    export.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    export.add_argument("--out", required=True, help="output .pth file; .safetensors and .json are written beside it")
    export.add_argument(
        "--safetensors", action=argparse.BooleanOptionalAction, default=True, help="also write .safetensors"
    )
    export.set_defaults(run=_cmd_export)
