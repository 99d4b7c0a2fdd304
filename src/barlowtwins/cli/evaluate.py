"""``knn``, ``linear``, ``semi``, ``transfer`` and ``embed``: flags from the settings dataclasses, then one call.

Every flag's default is the field of :class:`~barlowtwins.config.EvalInputs` or of the protocol's settings
dataclass in :mod:`barlowtwins.config`; nothing here repeats a number.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from barlowtwins.cli.helptext import add_command
from barlowtwins.config import EvalInputs, KnnConfig, LinearConfig, SemiConfig, TransferConfig
from barlowtwins.validation import check_ranges

HELP = {
    "checkpoint": "run directory, checkpoint, exported backbone, or plain state_dict file",
    "arch": "architecture of a plain state_dict, e.g. resnet50",
    "small_stem": "the 3x3 small stem (default: the checkpoint's or its sidecar's, else none)",
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
    "workers": "data loading processes (-1: one per usable CPU)",
    "device": "auto (CUDA when present), cpu, cuda, cuda:1, ...",
    "seed": "classifier initialisation and data order; the random-init floor when the weights carry no seed",
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
    "temperature": "kNN vote weight exp(similarity / T)",
    "batch_size": "images per step",
    "epochs": "training epochs",
    "lr": "SGD learning rate",
    "lr_backbone": "SGD learning rate of the backbone",
    "lr_classifier": "SGD learning rate of the linear classifier",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay",
    "crop_scale": "RandomResizedCrop area range of the training images",
    "milestones": "epochs after which both learning rates are multiplied by --gamma",
    "gamma": "learning-rate factor of each milestone or drop",
    "drops": "learning-rate drops by --gamma, equally spaced over the epochs",
    "svm_costs": "SVM costs C, chosen by cross-validation",
    "svm_folds": "cross-validation folds for choosing C",
}
CHOICES = {"mode": ("auto", "augmented", "fast"), "classifiers": ("linear", "svm")}
REQUIRED = ("checkpoint", "train_data", "test_data")


def add_fields(
    parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (), helps: Mapping[str, str] | None = None
) -> None:
    """One ``--flag`` per field of the dataclass ``cls``, typed and defaulted by the field itself; ``helps``
    replaces :data:`HELP`'s text where a command uses a field differently."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag, hint = "--" + f.name.replace("_", "-"), hints[f.name]
        kwargs: dict[str, Any] = {"default": f.default, "help": (helps or {}).get(f.name, HELP.get(f.name))}
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


def _at_pretraining_size(args: argparse.Namespace) -> EvalInputs:
    """The inputs of ``knn``, ``linear`` and ``semi``, which evaluate at the pretraining image size: an
    ``--image-size`` the weights contradict is refused (``transfer`` and ``embed`` take any size)."""
    from barlowtwins.checkpoint import refuse_other_image_size

    inputs = from_args(EvalInputs, args)
    refuse_other_image_size(inputs.checkpoint, inputs.image_size)
    return inputs


def _cmd_knn(args: argparse.Namespace) -> None:
    from barlowtwins.evaluate import knn

    knn.run(_at_pretraining_size(args), from_args(KnnConfig, args))


def _cmd_linear(args: argparse.Namespace) -> None:
    from barlowtwins.evaluate import linear

    linear.run(_at_pretraining_size(args), from_args(LinearConfig, args))


def _cmd_semi(args: argparse.Namespace) -> None:
    from barlowtwins.evaluate import semi

    semi.run(_at_pretraining_size(args), from_args(SemiConfig, args), args.subset, args.subset_out)


def _cmd_transfer(args: argparse.Namespace) -> None:
    from barlowtwins.evaluate import transfer

    settings = from_args(TransferConfig, args)
    transfer.run(from_args(EvalInputs, args), settings, args.train_labels, args.test_labels)


def _cmd_embed(args: argparse.Namespace) -> None:
    from barlowtwins.evaluate import embed

    check_ranges(KnnConfig(batch_size=args.batch_size), flags=True)
    embed.run(from_args(EvalInputs, args), args.data, args.out, args.projector, args.batch_size)


FLOOR_SEED = "the random-init floor's weights when the checkpoint carries no seed of its own"
CHECKPOINT = "--checkpoint runs/cifar10 --train-data cifar10 --test-data cifar10:test"


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the evaluation subcommands on the ``barlowtwins`` parser's subparsers."""
    _add_knn(commands)
    _add_linear(commands)
    _add_semi(commands)
    _add_transfer(commands)
    _add_embed(commands)


def _add_knn(commands: argparse._SubParsersAction) -> None:
    """``barlowtwins knn``: weighted kNN accuracy of a backbone beside its random init."""
    p = add_command(
        commands,
        "knn",
        "weighted kNN accuracy of a backbone beside its random init",
        "Weighted kNN accuracy of a frozen backbone (votes exp(similarity / T) of the k nearest training "
        "images, L2-normalised features) beside its random initialisation, the floor. Not a protocol of the "
        "paper (that is linear, §3.1) but the cheap monitor of lightly and DINO; pretrain runs it at the end.",
        (
            f"barlowtwins knn {CHECKPOINT}",
            "barlowtwins knn --checkpoint backbone.pth --train-data train/ --test-data val/",
        ),
    )
    add_fields(p, EvalInputs, helps={"seed": FLOOR_SEED})
    add_fields(p, KnnConfig)
    p.set_defaults(run=_cmd_knn)


def _add_linear(commands: argparse._SubParsersAction) -> None:
    """``barlowtwins linear``: linear evaluation on frozen features (appendix B.1)."""
    p = add_command(
        commands,
        "linear",
        "linear evaluation on frozen features (appendix B.1)",
        "Train a linear classifier on the frozen backbone's features and report top-1 and top-5 accuracy beside "
        "the random-init floor: the paper's linear evaluation (§3.1, Table 1) with appendix B.1's protocol "
        "(100 epochs, SGD lr 0.3 cosine, weight decay 1e-6, batch 256, random crop and flip).",
        (
            f"barlowtwins linear {CHECKPOINT} --mode fast --epochs 30",
            "barlowtwins linear --checkpoint runs/in1k --train-data /data/imagenet/train "
            "--test-data /data/imagenet/val --mode augmented",
        ),
    )
    add_fields(p, EvalInputs)
    add_fields(p, LinearConfig)
    p.set_defaults(run=_cmd_linear)


def _add_semi(commands: argparse._SubParsersAction) -> None:
    """``barlowtwins semi``: semi-supervised fine-tuning on 1% or 10% of labels (appendix B.2)."""
    p = add_command(
        commands,
        "semi",
        "semi-supervised fine-tuning on 1%% or 10%% of labels (appendix B.2)",
        "Fine-tune the whole network with a linear classifier on 1% or 10% of the labels (paper §3.1, Table 2; "
        "appendix B.2: 20 epochs, lr 0.002 for the backbone and 0.5 for the classifier, x0.2 after epochs 12 "
        "and 16). Without --subset the labelled images are drawn class-balanced with --seed and saved.",
        (
            f"barlowtwins semi {CHECKPOINT} --fraction 0.1",
            "barlowtwins semi --checkpoint runs/in1k --train-data /data/imagenet/train "
            "--test-data /data/imagenet/val --subset 1percent.txt",
        ),
    )
    add_fields(p, EvalInputs, helps={"seed": f"classifier initialisation, data order, the drawn subset; {FLOOR_SEED}"})
    add_fields(p, SemiConfig)
    p.add_argument("--subset", help="subset list file (one id or image name per line, SimCLR's format)")
    p.add_argument("--subset-out", help="where to save the drawn subset (default: beside the JSON result)")
    p.set_defaults(run=_cmd_semi)


def _add_transfer(commands: argparse._SubParsersAction) -> None:
    """``barlowtwins transfer``: linear classifier and SVMs on frozen features (appendix C.1)."""
    p = add_command(
        commands,
        "transfer",
        "linear classifier and SVMs on frozen features (appendix C.1)",
        "Linear classifiers on the frozen features of another dataset (paper §3.2, Table 3; appendix C.1): an "
        "SGD softmax classifier (Places-205, iNaturalist) and per-class linear SVMs scored by mAP (VOC07; "
        "multi-label targets from --train-labels and --test-labels).",
        (
            "barlowtwins transfer --checkpoint runs/cifar10 --train-data cifar100 --test-data cifar100:test",
            "barlowtwins transfer --checkpoint backbone.pth --train-data voc07/trainval --test-data voc07/test "
            "--classifiers svm --train-labels trainval.txt --test-labels test.txt",
        ),
    )
    add_fields(p, EvalInputs, helps={"seed": f"classifier initialisation, data order, the SVMs' folds; {FLOOR_SEED}"})
    add_fields(p, TransferConfig)
    p.add_argument("--train-labels", help="multi-label targets for the SVMs: lines 'ID v1 ... vC', v in 1/0/-1")
    p.add_argument("--test-labels", help="multi-label targets of the test data, same format")
    p.set_defaults(run=_cmd_transfer)


def _add_embed(commands: argparse._SubParsersAction) -> None:
    """``barlowtwins embed``: write backbone features (+ projections), labels and ids as .npy."""
    p = add_command(
        commands,
        "embed",
        "write backbone features (+ projections), labels and ids as .npy",
        "Write the frozen backbone's features of --data (with --projector also the projector's outputs, §2.2) as "
        ".npy files with labels and sample ids, for UMAP, faiss or a notebook. Not a protocol of the paper; "
        "deterministic (eval mode, no augmentation, no random init).",
        ("barlowtwins embed --checkpoint runs/cifar10 --data cifar10:test --projector --out embeddings",),
    )
    skip = ("train_data", "test_data", "test_limit", "seed", "random_init", "baseline_weights", "out")
    add_fields(p, EvalInputs, skip=skip, helps={"limit": "use only the first N samples of --data (0: all)"})
    p.add_argument("--data", nargs="+", required=True, help="image folder, .tar shards, or dataset name")
    p.add_argument("--projector", action="store_true", help="also write the projector's outputs")
    p.add_argument("--batch-size", type=int, default=KnnConfig.batch_size, help="images per forward pass")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(run=_cmd_embed)
