"""``pretrain``, ``demo`` and ``export``: parse, build the config, call the library."""

from __future__ import annotations

import argparse
import json

from barlowtwins.config import FORMULATIONS, OPTIMIZERS, PRECISIONS
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.recipes import recipe_names

# Named pretrain flags and the config key each one sets; anything else goes through --set.
PRETRAIN_FLAGS = {
    "data": "data.train",
    "eval_data": "data.eval",
    "data_root": "data.root",
    "download": "data.download",
    "limit": "data.limit",
    "eval_limit": "data.eval_limit",
    "workers": "data.workers",
    "method": "model.method",
    "arch": "model.arch",
    "small_stem": "model.small_stem",
    "projector": "model.projector",
    "image_size": "augment.image_size",
    "lambd": "loss.lambd",
    "loss_formulation": "loss.formulation",
    "optimizer": "optim.optimizer",
    "lr": "optim.lr_weights",
    "out": "train.out",
    "epochs": "train.epochs",
    "time_budget": "train.time_budget",
    "batch_size": "train.batch_size",
    "precision": "train.precision",
    "device": "train.device",
    "seed": "train.seed",
}


def _learning_rate(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got '{text}'") from None


def _add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    names = ", ".join(recipe_names())
    parser.add_argument("--recipe", help=f"named recipe ({names}) or a YAML file")
    parser.add_argument("--data", nargs="+", help="image folder, .tar shards (pattern or paths), or dataset name")
    parser.add_argument("--eval-data", nargs="+", help="labelled test data: kNN against --data at the end")
    parser.add_argument("--data-root", help="where torchvision datasets are stored")
    parser.add_argument("--download", action="store_true", default=None, help="download torchvision datasets")
    parser.add_argument("--limit", type=int, help="use only the first N training samples")
    parser.add_argument("--eval-limit", type=int, help="use only the first N samples of --eval-data")
    parser.add_argument("--workers", type=int, help="data loading processes (-1: one per core)")
    parser.add_argument("--method", help="self-supervised method (default: barlow_twins)")
    parser.add_argument("--arch", help="torchvision ResNet (resnet18, resnet50) or timm:NAME[,key=value...]")
    parser.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--projector", help="projector widths, e.g. 8192-8192-8192")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--lambd", type=float, help="off-diagonal weight lambda")
    parser.add_argument("--loss-formulation", choices=FORMULATIONS)
    parser.add_argument("--optimizer", choices=OPTIMIZERS)
    parser.add_argument(
        "--lr",
        type=_learning_rate,
        help="peak learning rate of weights per 256 images, or 'auto': the authors' ImageNet value for the batch size",
    )
    parser.add_argument("--out", help="run directory (resumes if it holds a checkpoint)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--time-budget", help="training time, e.g. 20m: the schedule is fitted to the steps that fit")
    parser.add_argument("--batch-size", type=int, help="global batch size")
    parser.add_argument("--precision", choices=PRECISIONS)
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config value, e.g. --set optim.warmup_epochs=1 (repeatable)",
    )
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _config_from_args(args: argparse.Namespace, recipe: str | None):
    from barlowtwins.recipes import make_config, override, parse_override

    overrides = [
        override(key, getattr(args, flag)) for flag, key in PRETRAIN_FLAGS.items() if getattr(args, flag) is not None
    ]
    timm = (args.arch or "").startswith("timm:")
    if timm and args.small_stem is None:
        overrides.append(override("model.small_stem", False))  # a recipe's ResNet stem does not apply to timm models
    if timm or args.small_stem is False:
        overrides.append(override("model.stem_stride", 1))  # no small stem: no recipe's small-stem stride
    overrides += [parse_override(text) for text in args.set]
    return make_config(recipe, overrides)


def _cmd_pretrain(args: argparse.Namespace) -> None:
    config = _config_from_args(args, args.recipe)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return
    if not config.data.train:
        raise BarlowTwinsError("no training data; pass --data (an image folder, .tar shards or a dataset name)")
    from barlowtwins.train import pretrain

    pretrain(config)


def _cmd_demo(args: argparse.Namespace) -> None:
    from barlowtwins.train import pretrain

    config = _config_from_args(args, "demo")
    print("demo: Barlow Twins on scikit-learn's 1,500 8x8 digits (CPU, a few minutes); kNN on 297 held-out")
    out = pretrain(config)
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


def add_commands(commands: argparse._SubParsersAction) -> None:
    pretrain = commands.add_parser("pretrain", help="pretrain an encoder with the Barlow Twins objective")
    _add_pretrain_arguments(pretrain)
    pretrain.set_defaults(run=_cmd_pretrain)

    demo = commands.add_parser("demo", help="pretrain on the built-in digits and print kNN before/after")
    _add_pretrain_arguments(demo)
    demo.set_defaults(run=_cmd_demo)

    export = commands.add_parser("export", help="write the backbone as .pth + .safetensors + JSON sidecar")
    export.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    export.add_argument("--out", required=True, help="output .pth file; .safetensors and .json are written beside it")
    export.add_argument(
        "--safetensors", action=argparse.BooleanOptionalAction, default=True, help="also write .safetensors"
    )
    export.set_defaults(run=_cmd_export)
