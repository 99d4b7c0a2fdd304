"""``knn``, ``linear``, ``semi``, ``transfer`` and ``embed``: flags from the settings dataclasses, then one call.

Every flag's default is the field of :class:`~barlowtwins.config.EvalInputs` or of the protocol's settings
dataclass in :mod:`barlowtwins.config`; nothing here repeats a number.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from barlowtwins.config import EvalInputs, KnnConfig, LinearConfig, SemiConfig, TransferConfig
from barlowtwins.validation import check_ranges

HELP = {
    "checkpoint": "run directory, checkpoint, exported backbone, or plain state_dict file",
    "arch": "architecture of a plain state_dict, e.g. resnet50",
    "image_size": "default: the pretraining size, else 32 (small stem) or 224",
    "mean": "default: the pretraining normalisation, else ImageNet's",
    "std": "default: the pretraining normalisation, else ImageNet's",
    "resize_ratio": "test-time resize before the centre crop (default: 256/224 above 64 px, none at 64 px or less)",
    "train_data": "labelled training data (image folder, .tar shards, or dataset name)",
    "test_data": "labelled test data",
    "limit": "use only the first N samples of each set",
    "test_limit": "use only the first N test samples (default: --limit)",
    "data_root": "where torchvision datasets are stored",
    "download": "download torchvision datasets if missing",
    "workers": "data loading processes (-1: one per core)",
    "seed": "classifier init, data order, drawn subset; random init of a plain state_dict",
    "random_init": "also evaluate the randomly initialised backbone (the floor)",
    "baseline_weights": "also evaluate this state_dict (same --arch and stem), e.g. supervised weights",
    "out": "JSON result file (default: eval/<protocol>.json in the run directory)",
    "mode": "augmented: the paper's protocol (appendix B.1), a random crop + flip of every batch through the "
    "frozen backbone; fast: an approximation, features extracted once without augmentation (seconds, usually "
    "a little lower); auto (default): augmented at ImageNet scale (images of 224 px and up: the imagenet "
    "recipe, the official checkpoint), fast for smaller images",
    "feature_bn": "batch-norm without affine before the linear layer (MAE's probe; not in the paper)",
    "fraction": "class-balanced fraction of the labels to draw",
    "classifiers": "linear (SGD softmax) and/or svm (per-class linear SVMs, C by cross-validation)",
    "k": "numbers of neighbours",
}
CHOICES = {"mode": ("auto", "augmented", "fast"), "classifiers": ("linear", "svm")}
REQUIRED = ("checkpoint", "train_data", "test_data")


def add_fields(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field of the dataclass ``cls``, typed and defaulted by the field itself."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag, hint = "--" + f.name.replace("_", "-"), hints[f.name]
        kwargs: dict[str, Any] = {"default": f.default, "help": HELP.get(f.name)}
        if f.name in REQUIRED:
            kwargs["required"] = True
        if hint in (bool, bool | None):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(hint) is tuple:
            args = typing.get_args(hint)
            kwargs.update(type=args[0], nargs="+" if args[-1] is Ellipsis else len(args))
        else:
            kwargs["type"] = next(a for a in typing.get_args(hint) or (hint,) if a is not type(None))
        if f.name in CHOICES:
            kwargs["choices"] = CHOICES[f.name]
        parser.add_argument(flag, **kwargs)


def from_args(cls: type, args: argparse.Namespace):
    """An instance of ``cls`` from the parsed flags; lists become tuples, as the fields declare."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    settings = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    check_ranges(settings, flags=True)
    return settings


def _cmd_knn(args: argparse.Namespace) -> None:
    from barlowtwins.evaluate import knn

    knn.run(from_args(EvalInputs, args), from_args(KnnConfig, args))


def _cmd_linear(args: argparse.Namespace) -> None:
    from barlowtwins.evaluate import linear

    linear.run(from_args(EvalInputs, args), from_args(LinearConfig, args))


def _cmd_semi(args: argparse.Namespace) -> None:
    from barlowtwins.evaluate import semi

    semi.run(from_args(EvalInputs, args), from_args(SemiConfig, args), args.subset, args.subset_out)


def _cmd_transfer(args: argparse.Namespace) -> None:
    from barlowtwins.evaluate import transfer

    settings = from_args(TransferConfig, args)
    transfer.run(from_args(EvalInputs, args), settings, args.train_labels, args.test_labels)


def _cmd_embed(args: argparse.Namespace) -> None:
    from barlowtwins.evaluate import embed

    check_ranges(KnnConfig(batch_size=args.batch_size), flags=True)
    embed.run(from_args(EvalInputs, args), args.data, args.out, args.projector, args.batch_size)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the evaluation subcommands on the ``barlowtwins`` parser's subparsers."""
    p = commands.add_parser("knn", help="weighted kNN accuracy of a backbone beside its random init")
    add_fields(p, EvalInputs)
    add_fields(p, KnnConfig)
    p.set_defaults(run=_cmd_knn)

    p = commands.add_parser("linear", help="linear evaluation on frozen features (appendix B.1)")
    add_fields(p, EvalInputs)
    add_fields(p, LinearConfig)
    p.set_defaults(run=_cmd_linear)

    p = commands.add_parser("semi", help="semi-supervised fine-tuning on 1%% or 10%% of labels (appendix B.2)")
    add_fields(p, EvalInputs)
    add_fields(p, SemiConfig)
    p.add_argument("--subset", help="subset list file (one id or image name per line, SimCLR's format)")
    p.add_argument("--subset-out", help="where to save the drawn subset (default: beside the JSON result)")
    p.set_defaults(run=_cmd_semi)

    p = commands.add_parser("transfer", help="linear classifier and SVMs on frozen features (appendix C.1)")
    add_fields(p, EvalInputs)
    add_fields(p, TransferConfig)
    p.add_argument("--train-labels", help="multi-label targets for the SVMs: lines 'ID v1 ... vC', v in 1/0/-1")
    p.add_argument("--test-labels", help="multi-label targets of the test data, same format")
    p.set_defaults(run=_cmd_transfer)

    p = commands.add_parser("embed", help="write backbone features (+ projections), labels and ids as .npy")
    add_fields(p, EvalInputs, skip=("train_data", "test_data", "test_limit", "random_init", "baseline_weights", "out"))
    p.add_argument("--data", nargs="+", required=True, help="image folder, .tar shards, or dataset name")
    p.add_argument("--projector", action="store_true", help="also write the projector's outputs")
    p.add_argument("--batch-size", type=int, default=KnnConfig.batch_size)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(run=_cmd_embed)
