"""The ``barlowtwins`` command: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from barlowtwins.errors import BarlowTwinsError

# Named pretrain flags and the config key each one sets; anything else goes through --set.
PRETRAIN_FLAGS = {
    "data": "data.train",
    "eval_data": "data.eval",
    "data_root": "data.root",
    "download": "data.download",
    "limit": "data.limit",
    "eval_limit": "data.eval_limit",
    "workers": "data.workers",
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
    "batch_size": "train.batch_size",
    "precision": "train.precision",
    "device": "train.device",
    "seed": "train.seed",
}


def _add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", help="named recipe (imagenet, cifar10, demo) or a YAML file")
    parser.add_argument("--data", nargs="+", help="image folder, .tar shards (pattern or paths), or dataset name")
    parser.add_argument("--eval-data", nargs="+", help="labelled test data: kNN against --data at the end")
    parser.add_argument("--data-root", help="where torchvision datasets are stored")
    parser.add_argument("--download", action="store_true", default=None, help="download torchvision datasets")
    parser.add_argument("--limit", type=int, help="use only the first N training samples")
    parser.add_argument("--eval-limit", type=int, help="use only the first N samples of --eval-data")
    parser.add_argument("--workers", type=int, help="data loading processes (-1: one per core)")
    parser.add_argument("--arch", help="torchvision backbone, e.g. resnet18, resnet50")
    parser.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--projector", help="projector widths, e.g. 8192-8192-8192")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--lambd", type=float, help="off-diagonal weight lambda")
    parser.add_argument("--loss-formulation", choices=["auto", "cross", "gram"])
    parser.add_argument("--optimizer", choices=["lars", "sgd", "adamw"])
    parser.add_argument("--lr", type=float, help="peak learning rate of weights per 256 images")
    parser.add_argument("--out", help="run directory (resumes if it holds a checkpoint)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch size")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
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
    from barlowtwins.config import make_config, override, parse_override

    overrides = [
        override(key, getattr(args, flag)) for flag, key in PRETRAIN_FLAGS.items() if getattr(args, flag) is not None
    ]
    overrides += [parse_override(text) for text in args.set]
    return make_config(recipe, overrides)


def _cmd_pretrain(args: argparse.Namespace) -> None:
    import yaml

    from barlowtwins.train import pretrain

    config = _config_from_args(args, args.recipe)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return
    if not config.data.train:
        raise BarlowTwinsError("no training data; pass --data (an image folder, .tar shards or a dataset name)")
    pretrain(config)


def _cmd_demo(args: argparse.Namespace) -> None:
    from barlowtwins.train import pretrain

    config = _config_from_args(args, "demo")
    print("demo: Barlow Twins on scikit-learn's 1,500 8x8 digits (CPU, a few minutes); kNN on 297 held-out")
    out = pretrain(config)
    report = json.loads((out / "knn.json").read_text())["top1"]
    k = str(config.train.knn_k[0])
    print(
        f"demo result: kNN accuracy (k={k}) {report['random_init'][k]:.1f}% at random initialisation -> "
        f"{report['pretrained'][k]:.1f}% after Barlow Twins pretraining ({out}/knn.json)"
    )


def _cmd_knn(args: argparse.Namespace) -> None:
    import torch

    from barlowtwins.augment import IMAGENET_MEAN, IMAGENET_STD
    from barlowtwins.checkpoint import load_backbone
    from barlowtwins.data import open_source, resolve_workers
    from barlowtwins.train import knn_report, select_device

    backbone, _, info = load_backbone(args.checkpoint, args.arch, args.small_stem)
    torch.manual_seed(info.get("seed", 0))  # a barlowtwins run's own initial weights (see train.build_model)
    random_init, _, _ = load_backbone(None, info["arch"], info["small_stem"])
    bank = open_source(args.train_data, args.data_root, args.download, args.limit, what="--train-data")
    queries = open_source(args.test_data, args.data_root, args.download, args.limit, what="--test-data")
    saved = info.get("images", {})  # the pretraining image size and normalisation, for our checkpoints
    image_size = args.image_size or saved.get("image_size") or (32 if info["small_stem"] else 224)
    mean = tuple(args.mean or saved.get("mean") or IMAGENET_MEAN)
    std = tuple(args.std or saved.get("std") or IMAGENET_STD)
    results = knn_report(
        {"pretrained": backbone, "random_init": random_init},
        bank,
        queries,
        image_size,
        mean,
        std,
        tuple(args.k),
        args.temperature,
        select_device(args.device),
        resolve_workers(args.workers),
        args.batch_size,
    )
    for k in args.k:
        print(
            f"kNN top-1 (k={k}, T={args.temperature}): {info['weights']} {results['pretrained'][k]:.2f}%  "
            f"random init {results['random_init'][k]:.2f}%"
        )
    report = {
        "protocol": "weighted kNN on L2-normalised frozen backbone features",
        "weights": info["weights"],
        "temperature": args.temperature,
        "image_size": image_size,
        "bank": bank.description,
        "queries": queries.description,
        "top1": {name: {str(k): v for k, v in accs.items()} for name, accs in results.items()},
        "command": " ".join(sys.argv),
    }
    out = Path(args.out) if args.out else None
    if out is None and Path(args.checkpoint).is_dir():
        out = Path(args.checkpoint) / "knn_eval.json"
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")


def _cmd_export(args: argparse.Namespace) -> None:
    from barlowtwins.checkpoint import export_backbone

    info = export_backbone(args.checkpoint, args.out)
    print(
        f"wrote {args.out} ({info['arch']}, epoch {info['epoch']}, step {info['step']}); load with {info['load_with']}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barlowtwins", description="Barlow Twins self-supervised learning")
    commands = parser.add_subparsers(dest="command", required=True)

    pretrain = commands.add_parser("pretrain", help="pretrain an encoder with the Barlow Twins objective")
    _add_pretrain_arguments(pretrain)
    pretrain.set_defaults(run=_cmd_pretrain)

    demo = commands.add_parser("demo", help="pretrain on the built-in digits and print kNN before/after")
    _add_pretrain_arguments(demo)
    demo.set_defaults(run=_cmd_demo)

    knn = commands.add_parser("knn", help="weighted kNN accuracy of a backbone (and of its random init)")
    knn.add_argument("--checkpoint", required=True, help="run directory, checkpoint, or plain state_dict file")
    knn.add_argument("--arch", help="architecture of a plain state_dict")
    knn.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None)
    knn.add_argument("--train-data", nargs="+", required=True, help="labelled data for the neighbour bank")
    knn.add_argument("--test-data", nargs="+", required=True, help="labelled data to classify")
    knn.add_argument("--k", type=int, nargs="+", default=[200, 20])
    knn.add_argument("--temperature", type=float, default=0.1)
    knn.add_argument("--image-size", type=int, help="default: 32 with a small stem, else 224")
    knn.add_argument("--mean", type=float, nargs=3, help="default: the pretraining normalisation, else ImageNet's")
    knn.add_argument("--std", type=float, nargs=3, help="default: the pretraining normalisation, else ImageNet's")
    knn.add_argument("--batch-size", type=int, default=256)
    knn.add_argument("--limit", type=int, default=0, help="use only the first N samples of each set")
    knn.add_argument("--data-root", default="data")
    knn.add_argument("--download", action="store_true")
    knn.add_argument("--device", default="auto")
    knn.add_argument("--workers", type=int, default=-1)
    knn.add_argument("--out", help="JSON result file (default: knn_eval.json in the run directory)")
    knn.set_defaults(run=_cmd_knn)

    export = commands.add_parser("export", help="write the backbone as a torchvision state_dict")
    export.add_argument("--checkpoint", required=True, help="run directory or checkpoint file")
    export.add_argument("--out", required=True, help="output .pth file")
    export.set_defaults(run=_cmd_export)
    __import__("barlowtwins.evaluate.commands", fromlist=["add_commands"]).add_commands(commands)
    return parser


def _one_line(error: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it with a traceback."""
    text = str(error).strip()
    if "Traceback" in text:
        text = text.splitlines()[-1].split("BarlowTwinsError: ", 1)[-1]
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except BarlowTwinsError as error:
        print(f"barlowtwins: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "barlowtwins: interrupted; the last checkpoint is intact, run the same command to resume",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
