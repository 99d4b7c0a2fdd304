"""The ``linear``, ``semi``, ``transfer`` and ``embed`` subcommands: parse, load, call the protocol, write JSON.

Every protocol runs on the given weights and, beside them, on the same architecture at random
initialisation (seeded) and optionally on ``--baseline-weights`` (e.g. torchvision's supervised weights),
so each number comes with its floor. Results go to a JSON file with all hyperparameters, the data, the
numbers and :func:`barlowtwins.train.run_metadata`; the per-epoch log goes beside it as ``.log``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barlowtwins.errors import BarlowTwinsError

IMAGENET_MEAN = [0.485, 0.456, 0.406]  # torchvision's normalisation, used when the weights carry none
IMAGENET_STD = [0.229, 0.224, 0.225]


# --- arguments ---


def _add_weights(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="run directory, checkpoint, or plain state_dict file")
    parser.add_argument("--arch", help="architecture of a plain state_dict, e.g. resnet50")
    parser.add_argument("--small-stem", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--image-size", type=int, help="default: the pretraining size, else 32 (small stem) or 224")
    parser.add_argument("--mean", type=float, nargs=3, help="default: the pretraining normalisation, else ImageNet's")
    parser.add_argument("--std", type=float, nargs=3, help="default: the pretraining normalisation, else ImageNet's")
    parser.add_argument(
        "--resize-ratio", type=float, default=256 / 224, help="test-time resize before the centre crop (B.1)"
    )
    parser.add_argument("--limit", type=int, default=0, help="use only the first N samples of each set")
    parser.add_argument("--data-root", default="data", help="where torchvision datasets are stored")
    parser.add_argument("--download", action="store_true", help="download torchvision datasets if missing")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=-1, help="data loading processes (-1: one per core)")
    parser.add_argument("--seed", type=int, default=0, help="classifier init, data order, subset, random init")


def _add_protocol(parser: argparse.ArgumentParser) -> None:
    _add_weights(parser)
    parser.add_argument("--train-data", nargs="+", required=True, help="labelled training data")
    parser.add_argument("--test-data", nargs="+", required=True, help="labelled test data")
    parser.add_argument(
        "--baseline-weights", help="also evaluate this state_dict (same --arch and stem), e.g. supervised weights"
    )
    parser.add_argument(
        "--random-init",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also evaluate the randomly initialised backbone (the floor)",
    )
    parser.add_argument("--test-limit", type=int, help="use only the first N test samples (default: --limit)")
    parser.add_argument("--out", help="JSON result file (default: eval/<protocol>.json in the run directory)")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the evaluation subcommands on the ``barlowtwins`` parser's subparsers."""
    from barlowtwins.evaluate import linear, semi, transfer

    p = commands.add_parser("linear", help="linear evaluation on frozen features (appendix B.1)")
    _add_protocol(p)
    p.add_argument("--mode", choices=linear.MODES, default="fast", help="fast: cached features; augmented: B.1")
    p.add_argument("--epochs", type=int, default=linear.EPOCHS)
    p.add_argument("--lr", type=float, default=linear.LR)
    p.add_argument("--momentum", type=float, default=linear.MOMENTUM)
    p.add_argument("--weight-decay", type=float, default=linear.WEIGHT_DECAY)
    p.add_argument("--batch-size", type=int, default=linear.BATCH_SIZE)
    p.add_argument("--crop-scale", type=float, nargs=2, default=list(linear.CROP_SCALE))
    p.add_argument(
        "--feature-bn",
        action="store_true",
        help="batch-norm without affine before the linear layer (MAE's probe; not in the paper)",
    )
    p.set_defaults(run=_cmd_linear)

    p = commands.add_parser("semi", help="semi-supervised fine-tuning on 1%% or 10%% of labels (appendix B.2)")
    _add_protocol(p)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--fraction", type=float, default=0.01, help="class-balanced fraction of labels to draw")
    which.add_argument("--subset", help="subset list file (one id or image name per line, SimCLR's format)")
    p.add_argument("--subset-out", help="where to save the drawn subset (default: beside the JSON result)")
    p.add_argument("--epochs", type=int, default=semi.EPOCHS)
    p.add_argument("--lr-backbone", type=float, default=semi.LR_BACKBONE)
    p.add_argument("--lr-classifier", type=float, default=semi.LR_CLASSIFIER)
    p.add_argument("--milestones", type=int, nargs="*", default=list(semi.MILESTONES))
    p.add_argument("--gamma", type=float, default=semi.GAMMA)
    p.add_argument("--momentum", type=float, default=semi.MOMENTUM)
    p.add_argument("--weight-decay", type=float, default=semi.WEIGHT_DECAY)
    p.add_argument("--batch-size", type=int, default=semi.BATCH_SIZE)
    p.add_argument("--crop-scale", type=float, nargs=2, default=list(linear.CROP_SCALE))
    p.set_defaults(run=_cmd_semi)

    p = commands.add_parser("transfer", help="linear classifier and SVMs on frozen features (appendix C.1)")
    _add_protocol(p)
    p.add_argument("--classifier", nargs="+", choices=transfer.CLASSIFIERS, default=list(transfer.CLASSIFIERS))
    p.add_argument("--epochs", type=int, default=transfer.EPOCHS)
    p.add_argument("--lr", type=float, default=transfer.LR)
    p.add_argument("--momentum", type=float, default=transfer.MOMENTUM)
    p.add_argument("--weight-decay", type=float, default=transfer.WEIGHT_DECAY)
    p.add_argument("--batch-size", type=int, default=transfer.BATCH_SIZE)
    p.add_argument("--svm-costs", type=float, nargs="+", default=list(transfer.SVM_COSTS))
    p.add_argument("--svm-folds", type=int, default=transfer.SVM_FOLDS)
    p.add_argument("--train-labels", help="multi-label targets for the SVMs: lines 'ID v1 ... vC', v in 1/0/-1")
    p.add_argument("--test-labels", help="multi-label targets of the test data, same format")
    p.add_argument(
        "--feature-bn",
        action="store_true",
        help="batch-norm without affine before the linear layer (MAE's probe; not in the paper)",
    )
    p.set_defaults(run=_cmd_transfer)

    p = commands.add_parser("embed", help="write backbone features (+ projections), labels and ids as .npy")
    _add_weights(p)
    p.add_argument("--data", nargs="+", required=True, help="image folder, .tar shards, or dataset name")
    p.add_argument("--projector", action="store_true", help="also write the projector's outputs")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(run=_cmd_embed)


# --- shared steps ---


def _image_settings(args: argparse.Namespace, info: dict[str, Any]) -> dict[str, Any]:
    """Image size and normalisation: flags, else the checkpoint's pretraining values, else by stem."""
    saved = info.get("images", {})  # load_backbone's record of a barlowtwins checkpoint's pretraining values
    return {
        "image_size": args.image_size or saved.get("image_size") or (32 if info["small_stem"] else 224),
        "mean": list(args.mean or saved.get("mean") or IMAGENET_MEAN),
        "std": list(args.std or saved.get("std") or IMAGENET_STD),
        "resize_ratio": args.resize_ratio,
    }


def _backbones(args: argparse.Namespace) -> tuple[dict[str, tuple[torch.nn.Module, int]], dict[str, Any]]:
    """``{"pretrained", "random_init"?, "baseline"?}`` -> (backbone, feature_dim), and what each one is."""
    from barlowtwins.checkpoint import load_backbone

    backbone, dim, info = load_backbone(args.checkpoint, args.arch, args.small_stem)
    models = {"pretrained": (backbone, dim)}
    described = {"pretrained": info}
    if getattr(args, "random_init", False):
        seed = info.get("seed", args.seed)  # a barlowtwins run's own initial weights (see train.build_model)
        torch.manual_seed(seed)
        random_init, dim0, info0 = load_backbone(None, info["arch"], info["small_stem"])
        models["random_init"] = (random_init, dim0)
        described["random_init"] = {**info0, "seed": seed}
    if getattr(args, "baseline_weights", None):
        baseline, dim1, info1 = load_backbone(args.baseline_weights, info["arch"], info["small_stem"])
        models["baseline"] = (baseline, dim1)
        described["baseline"] = info1
    return models, described


def _out_path(args: argparse.Namespace, name: str) -> Path:
    if args.out:
        return Path(args.out)
    checkpoint = Path(args.checkpoint)
    if checkpoint.is_dir():
        return checkpoint / "eval" / f"{name}.json"
    return checkpoint.parent / f"{checkpoint.stem}-{name}.json"


def _logger(path: Path) -> Callable[[str], None]:
    """Print a line and append it to ``path`` (the log beside the JSON result)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")

    def log(line: str) -> None:
        print(line, flush=True)
        with open(path, "a") as handle:
            handle.write(line + "\n")

    return log


def _write_report(out: Path, report: dict[str, Any], started: float) -> None:
    from barlowtwins.checkpoint import atomic_write_text
    from barlowtwins.train import run_metadata

    report = {**report, "seconds": round(time.perf_counter() - started, 1), "meta": run_metadata()}
    atomic_write_text(json.dumps(report, indent=2) + "\n", out)
    print(f"wrote {out}")


def _summary(results: dict[str, dict], keys: tuple[str, ...]) -> str:
    return "  ".join(f"{name}: " + ", ".join(f"{k} {r[k]:.2f}" for k in keys if k in r) for name, r in results.items())


def _sources(args: argparse.Namespace):
    from barlowtwins.data import open_source

    train = open_source(args.train_data, args.data_root, args.download, args.limit, what="--train-data")
    test_limit = args.limit if args.test_limit is None else args.test_limit
    test = open_source(args.test_data, args.data_root, args.download, test_limit, what="--test-data")
    return train, test


# --- commands ---


def _cmd_linear(args: argparse.Namespace) -> None:
    from barlowtwins.data import resolve_workers
    from barlowtwins.evaluate.linear import linear_eval
    from barlowtwins.train import select_device

    started = time.perf_counter()
    models, described = _backbones(args)
    images = _image_settings(args, described["pretrained"])
    train, test = _sources(args)
    out = _out_path(args, f"linear-{args.mode}")
    log = _logger(out.with_suffix(".log"))
    hyper = {
        "epochs": args.epochs,
        "lr": args.lr,
        "schedule": "cosine per epoch",
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "batch_size": args.batch_size,
        "crop_scale": args.crop_scale if args.mode == "augmented" else None,
        "feature_bn": args.feature_bn,
        "seed": args.seed,
        **images,
    }
    log(
        f"linear evaluation (B.1, {args.mode} mode) of {', '.join(models)}; train {train.description}; "
        f"test {test.description}"
    )
    results = linear_eval(
        models,
        train,
        test,
        args.mode,
        images["image_size"],
        images["mean"],
        images["std"],
        images["resize_ratio"],
        tuple(args.crop_scale),
        args.epochs,
        args.lr,
        args.momentum,
        args.weight_decay,
        args.batch_size,
        args.seed,
        select_device(args.device),
        resolve_workers(args.workers),
        feature_bn=args.feature_bn,
        log=log,
    )
    mode_text = {
        "fast": "frozen features extracted once (centre crop, no augmentation), linear layer trained on them",
        "augmented": "random resized crop + flip every batch through the frozen backbone (B.1)",
    }[args.mode]
    report = {
        "protocol": "linear evaluation (appendix B.1)",
        "mode": args.mode,
        "mode_description": mode_text,
        "hyperparameters": hyper,
        "train_data": train.description,
        "test_data": test.description,
        "weights": described,
        "results": results,
    }
    log(f"linear ({args.mode}) " + _summary(results, ("top1", "top5")))
    _write_report(out, report, started)


def _cmd_semi(args: argparse.Namespace) -> None:
    from barlowtwins.data import resolve_workers, sample_index, select_samples
    from barlowtwins.evaluate.semi import semi_supervised_eval
    from barlowtwins.evaluate.subsets import balanced_subset, match_ids, read_subset_file, write_subset_file
    from barlowtwins.train import select_device

    started = time.perf_counter()
    models, described = _backbones(args)
    images = _image_settings(args, described["pretrained"])
    train, test = _sources(args)
    ids, labels = sample_index(train)
    if args.subset:
        positions = match_ids(read_subset_file(args.subset), ids, args.subset)
        name, subset_file, how = f"semi-{Path(args.subset).stem}", args.subset, f"listed in {args.subset}"
    else:
        positions = balanced_subset(labels, args.fraction, args.seed)
        name = f"semi-{args.fraction * 100:g}pct"
        out = _out_path(args, name)
        subset_file = args.subset_out or str(out.with_name(out.stem + "-subset.txt"))
        write_subset_file([ids[i] for i in positions], subset_file)
        how = f"class-balanced {args.fraction:g} of the labels, seed {args.seed}, saved to {subset_file}"
    out = _out_path(args, name)
    log = _logger(out.with_suffix(".log"))
    labelled = select_samples(train, positions, f"{how} of {train.description}")
    counts = np.bincount(labels[positions]).tolist()
    log(f"semi-supervised fine-tuning (B.2) of {', '.join(models)} on {labelled.description}; per class {counts}")
    hyper = {
        "epochs": args.epochs,
        "lr_backbone": args.lr_backbone,
        "lr_classifier": args.lr_classifier,
        "milestones": args.milestones,
        "gamma": args.gamma,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "batch_size": args.batch_size,
        "crop_scale": args.crop_scale,
        "seed": args.seed,
        **images,
    }
    results = semi_supervised_eval(
        models,
        labelled,
        test,
        images["image_size"],
        images["mean"],
        images["std"],
        images["resize_ratio"],
        tuple(args.crop_scale),
        args.epochs,
        args.lr_backbone,
        args.lr_classifier,
        tuple(args.milestones),
        args.gamma,
        args.momentum,
        args.weight_decay,
        args.batch_size,
        args.seed,
        select_device(args.device),
        resolve_workers(args.workers),
        log,
    )
    report = {
        "protocol": "semi-supervised fine-tuning (appendix B.2)",
        "mode": "fine-tune all parameters",
        "hyperparameters": hyper,
        "subset": {"file": str(subset_file), "how": how, "size": len(positions), "per_class": counts},
        "train_data": labelled.description,
        "test_data": test.description,
        "weights": described,
        "results": results,
    }
    log("semi-supervised " + _summary(results, ("top1", "top5")))
    _write_report(out, report, started)


def _multilabel_targets(path: str | None, ids: list[str]) -> np.ndarray | None:
    """Rows of a multi-label file put in the order of ``ids`` (each id must be listed)."""
    if path is None:
        return None
    from barlowtwins.evaluate.subsets import match_ids
    from barlowtwins.evaluate.transfer import read_multilabel_file

    listed, matrix = read_multilabel_file(path)
    position = match_ids(ids, listed, path)  # for each sample, its row in the file
    return matrix[position]


def _cmd_transfer(args: argparse.Namespace) -> None:
    from barlowtwins.augment import eval_transform
    from barlowtwins.data import resolve_workers
    from barlowtwins.evaluate.embed import features_with_ids
    from barlowtwins.evaluate.linear import check_labels
    from barlowtwins.evaluate.transfer import linear_transfer, svm_eval
    from barlowtwins.train import select_device

    if bool(args.train_labels) != bool(args.test_labels):
        raise BarlowTwinsError("multi-label targets need both --train-labels and --test-labels")
    if args.train_labels and "linear" in args.classifier:
        raise BarlowTwinsError("the softmax linear classifier is single-label; with label files use --classifier svm")
    started = time.perf_counter()
    models, described = _backbones(args)
    images = _image_settings(args, described["pretrained"])
    train, test = _sources(args)
    out = _out_path(args, "transfer")
    log = _logger(out.with_suffix(".log"))
    device, workers = select_device(args.device), resolve_workers(args.workers)
    transform = eval_transform(images["image_size"], tuple(images["mean"]), tuple(images["std"]), args.resize_ratio)
    log(
        f"transfer (C.1: {', '.join(args.classifier)}) of {', '.join(models)}; train {train.description}; "
        f"test {test.description}"
    )
    results: dict[str, dict] = {}
    for name, (backbone, _) in models.items():
        tr = features_with_ids(backbone, train, transform, args.batch_size, workers, device)
        te = features_with_ids(backbone, test, transform, args.batch_size, workers, device)
        results[name] = {}
        if "linear" in args.classifier:
            check_labels(tr["labels"], "--train-data")
            check_labels(te["labels"], "--test-data")
            r = linear_transfer(
                tr["features"],
                tr["labels"],
                te["features"],
                te["labels"],
                args.epochs,
                args.lr,
                args.momentum,
                args.weight_decay,
                args.batch_size,
                seed=args.seed,
                feature_bn=args.feature_bn,
            )
            results[name]["linear"] = r
            log(f"{name}: linear top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%")
        if "svm" in args.classifier:
            train_y = _multilabel_targets(args.train_labels, tr["ids"])
            test_y = _multilabel_targets(args.test_labels, te["ids"])
            if train_y is None:
                check_labels(tr["labels"], "--train-data")
                check_labels(te["labels"], "--test-data")
                train_y, test_y = tr["labels"].numpy(), te["labels"].numpy()
            r = svm_eval(
                tr["features"].numpy(),
                train_y,
                te["features"].numpy(),
                test_y,
                args.svm_costs,
                args.svm_folds,
                args.seed,
            )
            results[name]["svm"] = r
            log(f"{name}: SVM mAP {r['mAP']:.2f}" + (f"  top-1 {r['top1']:.2f}%" if "top1" in r else ""))
            edge = sum(c in (min(args.svm_costs), max(args.svm_costs)) for c in r["C"])
            if edge:
                log(f"{name}: note: C is at an end of --svm-costs for {edge} of {len(r['C'])} classes; widen the grid")
    report = {
        "protocol": "transfer by linear evaluation (appendix C.1)",
        "mode": "frozen features extracted once (resize + centre crop, no augmentation)",
        "hyperparameters": {
            "classifiers": args.classifier,
            "linear": {
                "epochs": args.epochs,
                "lr": args.lr,
                "schedule": "divided by 10 at two equally spaced points",
                "momentum": args.momentum,
                "weight_decay": args.weight_decay,
                "batch_size": args.batch_size,
                "feature_bn": args.feature_bn,
            },
            "svm": {"costs": args.svm_costs, "folds": args.svm_folds, "features": "L2-normalised"},
            "seed": args.seed,
            **images,
        },
        "train_data": train.description,
        "test_data": test.description,
        "multilabel_files": [args.train_labels, args.test_labels] if args.train_labels else None,
        "weights": described,
        "results": results,
    }
    _write_report(out, report, started)


def _cmd_embed(args: argparse.Namespace) -> None:
    from barlowtwins.augment import eval_transform
    from barlowtwins.checkpoint import load_backbone
    from barlowtwins.data import open_source, resolve_workers
    from barlowtwins.evaluate.embed import features_with_ids, load_projector, write_embeddings
    from barlowtwins.train import run_metadata, select_device

    backbone, dim, info = load_backbone(args.checkpoint, args.arch, args.small_stem)
    projector = load_projector(args.checkpoint, dim) if args.projector else None
    images = _image_settings(args, info)
    source = open_source(args.data, args.data_root, args.download, args.limit)
    transform = eval_transform(images["image_size"], tuple(images["mean"]), tuple(images["std"]), args.resize_ratio)
    device, workers = select_device(args.device), resolve_workers(args.workers)
    arrays = features_with_ids(backbone, source, transform, args.batch_size, workers, device, projector)
    description = {
        "what": "frozen backbone features" + (" and projector outputs" if projector else "") + ", eval mode",
        "data": source.description,
        "weights": info,
        "transform": images,
        "meta": run_metadata(),
    }
    files = write_embeddings(arrays, args.out, description)
    print(f"wrote {len(arrays['ids'])} rows to " + ", ".join(files.values()))
