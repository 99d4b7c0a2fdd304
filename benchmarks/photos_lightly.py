"""The lightly arm of benchmarks/photos.py: Barlow Twins built from lightly's pieces, as lightly's users build it,
trained under the same time-budget rule as ``barlowtwins pretrain --time-budget``; it writes the backbone as a plain
torchvision state_dict (``resnet18.pth`` + a ``.json`` sidecar) for our ``barlowtwins knn`` / ``linear`` commands.

    pip install -e ".[bench]"   # lightly>=1.5,<2 (it brings pytorch-lightning; torch stays)
    python benchmarks/photos_lightly.py --data /work/shared/data/imagenette/train --image-size 128 --batch-size 128 \
        --time-budget 20m --optimizer lars --seed 0 --out /work/runs/photos/lightly-lars

What comes from where (lightly 1.6.0, github.com/lightly-ai/lightly; solo-learn, github.com/vturrisi/solo-learn):
- views: ``BYOLTransform(BYOLView1Transform(input_size), BYOLView2Transform(input_size))`` at lightly's defaults
  (view 1: blur 1.0, solarize 0; view 2: blur 0.1, solarize 0.2; crop 0.08-1, jitter 0.8 x (0.4, 0.4, 0.2, 0.1),
  grey 0.2, flip 0.5; ImageNet normalisation). lightly has no BarlowTwinsTransform: its Barlow Twins example
  (examples/pytorch/barlowtwins.py) and its Imagenette benchmark
  (docs/source/getting_started/benchmarks/imagenette_benchmark.py) use BYOL's views.
- data: ``lightly.data.LightlyDataset(input_dir, transform)`` and a shuffled DataLoader dropping the last batch, as
  that benchmark; workers as ours (one per usable CPU, at most 8), kept alive across epochs.
- model: torchvision ``resnet18()`` with ``fc`` removed (``nn.Sequential(*children[:-1])``, ImageNet stem as the
  ours rows) + ``BarlowTwinsProjectionHead(512, 2048, 2048)``: that benchmark's widths (solo-learn's too).
- loss: ``lightly.loss.BarlowTwinsLoss()`` (lambda 5e-3) times solo-learn's ``scale_loss`` 0.1 (lars only).
- ``--optimizer lars`` (default): solo-learn's scripts/pretrain/{cifar,imagenet-100}/barlow.yaml: LARS, lr 0.3 per
  256 images (solo/args/pretrain.py scales it by batch/256), momentum 0.9, weight decay 1e-4, eta 0.02,
  clip_lr True, exclude_bias_n_norm True; warmup_cosine per step (solo/methods/base.py): 10 warm-up epochs from
  3e-5, cosine to 0. ``lightly.utils.lars.LARS`` is the same port (Lightning Bolts') without clip_lr and excluding
  by weight decay 0, so the step below is solo-learn's solo/utils/lars.py (tests/config/test_photos_benchmark.py
  checks it equals lightly's without the clip).
- ``--optimizer sgd``: what lightly's Imagenette benchmark runs for Barlow Twins: SGD lr 0.06 per 256 images,
  momentum 0.9, weight decay 5e-4, cosine to 0 without warm-up, loss unscaled.
- time budget: ``barlowtwins.train.budget.Budget`` as pretrain uses it (step time measured after 2 settle steps,
  the schedule fitted to the steps that fit, warm-up at most 10% of them, training time only).
- engine, as ours resolves it (not a method choice): precision ``auto`` measures fp32 against bf16 autocast on a
  copy of the model and keeps the faster (``barlowtwins.runtime.fastest_dtype``, pretrain's rule); the loss runs
  in fp32 outside autocast (ours does too); channels_last as ours (``train.channels_last``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from contextlib import nullcontext
from pathlib import Path

import torch
import torchvision
import yaml
from torch import nn

from barlowtwins.runtime import (
    fastest_dtype,
    precision_name,
    probe_samples,
    run_metadata,
    seed_everything,
    usable_cpus,
)
from barlowtwins.validation import parse_duration

# solo-learn's Barlow Twins settings (scripts/pretrain/cifar/barlow.yaml = imagenet-100/barlow.yaml) and defaults
SOLO_LARS = dict(lr=0.3, momentum=0.9, weight_decay=1e-4, eta=0.02, clip_lr=True, exclude_bias_n_norm=True)
SOLO_SCHEDULE = dict(warmup_epochs=10, warmup_start_lr=3e-5, min_lr=0.0, scale_loss=0.1)
# lightly's Imagenette benchmark, BarlowTwinsModel.configure_optimizers
LIGHTLY_SGD = dict(lr=0.06, momentum=0.9, weight_decay=5e-4)
MAX_EPOCHS = 1000  # the budget decides; this only caps the plan (pretrain's cap is its recipe's epochs)


class SoloLARS(torch.optim.Optimizer):
    """solo-learn's LARS (solo/utils/lars.py, from Lightning Bolts), its step verbatim in substance."""

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, eta=1e-3, eps=1e-8, clip_lr=False,
                 exclude_bias_n_norm=False):  # fmt: skip
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, eps=eps, clip_lr=clip_lr)
        super().__init__(params, {**defaults, "exclude_bias_n_norm": exclude_bias_n_norm})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            weight_decay, momentum = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                p_norm, g_norm = torch.norm(p.data), torch.norm(p.grad.data)
                scaled = p.ndim != 1 or not group["exclude_bias_n_norm"]  # biases and norms: no decay, no scaling
                if scaled and p_norm != 0 and g_norm != 0:
                    lars_lr = p_norm / (g_norm + p_norm * weight_decay + group["eps"]) * group["eta"]
                    if group["clip_lr"]:
                        lars_lr = min(lars_lr / group["lr"], 1)
                    d_p = d_p.add(p, alpha=weight_decay) * lars_lr
                if momentum != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(d_p)
                    d_p = state["momentum_buffer"]
                p.add_(d_p, alpha=-group["lr"])


def lr_at(step: int, total: int, warmup: int, peak: float, start: float, end: float) -> float:
    """solo-learn's LinearWarmupCosineAnnealingLR per step: linear from ``start`` to ``peak``, cosine to ``end``."""
    if step < warmup:
        return start + (peak - start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * progress))


def build(optimizer: str, batch_size: int) -> tuple[nn.Module, nn.Module, nn.Module, torch.optim.Optimizer, dict]:
    """(resnet, model, loss, optimizer, settings) as lightly's benchmark and solo-learn's configs build them."""
    from lightly.loss import BarlowTwinsLoss
    from lightly.models.modules import BarlowTwinsProjectionHead

    resnet = torchvision.models.resnet18()
    model = nn.Sequential(nn.Sequential(*list(resnet.children())[:-1]), nn.Flatten(1))
    model.append(BarlowTwinsProjectionHead(resnet.fc.in_features, 2048, 2048))
    if optimizer == "lars":
        settings = {**SOLO_LARS, **SOLO_SCHEDULE, "lr": SOLO_LARS["lr"] * batch_size / 256}
        kwargs = {k: settings[k] for k in SOLO_LARS}
        opt: torch.optim.Optimizer = SoloLARS(model.parameters(), **kwargs)
    else:
        settings = {**LIGHTLY_SGD, "warmup_epochs": 0, "warmup_start_lr": 0.0, "min_lr": 0.0, "scale_loss": 1.0}
        settings["lr"] = LIGHTLY_SGD["lr"] * batch_size / 256
        opt = torch.optim.SGD(model.parameters(), **LIGHTLY_SGD | {"lr": settings["lr"]})
    return resnet, model, BarlowTwinsLoss(), opt, {"optimizer": optimizer, **settings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="image folder of training photos (labels unused)")
    parser.add_argument("--out", required=True, help="run directory: resnet18.pth + .json, config/meta/timing")
    parser.add_argument("--time-budget", required=True, help="training time, e.g. 20m (pretrain's rule)")
    parser.add_argument("--image-size", type=int, default=128, help="view side, px (lightly's Imagenette: 128)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (ours' cifar10-cpu: 128)")
    parser.add_argument("--optimizer", choices=("lars", "sgd"), default="lars", help="solo-learn's, or lightly's")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: as pretrain")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="as ours")
    parser.add_argument("--seed", type=int, default=0, help="initial weights, data order, augmentations")
    args = parser.parse_args()
    from lightly.data import LightlyDataset  # imported here: the constants and SoloLARS above need neither
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform
    from lightly.transforms.utils import IMAGENET_NORMALIZE

    from barlowtwins.train.budget import Budget

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)
    views = BYOLView1Transform(input_size=args.image_size), BYOLView2Transform(input_size=args.image_size)
    dataset = LightlyDataset(input_dir=args.data, transform=BYOLTransform(*views))
    workers = min(usable_cpus(), 8)  # ours: --workers -1, one per usable CPU, at most 8
    loader = torch.utils.data.DataLoader(
        dataset, args.batch_size, shuffle=True, drop_last=True, num_workers=workers, persistent_workers=workers > 0
    )
    resnet, model, criterion, optimizer, settings = build(args.optimizer, args.batch_size)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    steps_per_epoch = len(loader)

    def epochs():
        while True:
            yield from loader

    def loss_of(x0: torch.Tensor, x1: torch.Tensor, dtype: torch.dtype | None, net: nn.Module) -> torch.Tensor:
        with torch.autocast("cpu", dtype=dtype) if dtype is not None else nullcontext():
            z0, z1 = net(x0), net(x1)
        return criterion(z0.float(), z1.float()) * settings["scale_loss"]  # fp32, outside autocast

    batches = epochs()
    (x0, x1), _, _ = next(batches)
    x0, x1 = x0.to(memory_format=memory_format), x1.to(memory_format=memory_format)
    if args.precision == "auto":  # pretrain's probe: a quarter batch through a copy in eval mode
        probe, (n, n_scout) = copy.deepcopy(model).eval(), probe_samples(len(x0))

        def probe_step(d: torch.dtype | None, few: bool) -> None:  # few: the scout's eighth of the quarter batch
            k = n_scout if few else n
            loss_of(x0[:k], x1[:k], d, probe).backward()

        dtype, seconds = fastest_dtype(probe_step)
        print(f"precision auto: {seconds}; using {precision_name(dtype)}", flush=True)
    else:
        dtype = torch.bfloat16 if args.precision == "bf16" else None
    budget = Budget(parse_duration(args.time_budget), MAX_EPOCHS * steps_per_epoch)
    warmup_epochs = settings["warmup_epochs"]
    model.train()
    step, losses = 0, []
    budget.restart_clock()
    while step < budget.total_steps:
        warmup = budget.warmup_steps(round(warmup_epochs * steps_per_epoch))
        lr = lr_at(step, budget.total_steps, warmup, settings["lr"], settings["warmup_start_lr"], settings["min_lr"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = loss_of(x0, x1, dtype, model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        step += 1
        total = budget.step_done(step)
        if step % 10 == 0 or step == total:
            print(f"step {step}/{total} loss {losses[-1]:.4f} lr {lr:.4g}", flush=True)
        if step < total:
            (x0, x1), _, _ = next(batches)
            x0, x1 = x0.to(memory_format=memory_format), x1.to(memory_format=memory_format)
    weights = {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    torch.save(weights, out / "resnet18.pth")
    sidecar = {"arch": "resnet18", "small_stem": False, "stem_stride": 1, "image_size": args.image_size}
    sidecar |= {"mean": IMAGENET_NORMALIZE["mean"], "std": IMAGENET_NORMALIZE["std"], "feature_dim": 512}
    (out / "resnet18.json").write_text(json.dumps({**sidecar, "trained_by": "benchmarks/photos_lightly.py"}) + "\n")
    config = {**vars(args), **settings, "precision_used": precision_name(dtype), "workers": workers}
    config |= {"steps_per_epoch": steps_per_epoch, "projector": "2048-2048-2048", "lambda": criterion.lambda_param}
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    import lightly

    (out / "meta.json").write_text(json.dumps({**run_metadata(), "lightly": lightly.__version__}, indent=2) + "\n")
    timing = {"train_minutes": budget.spent / 60, "steps": step, "time_budget": args.time_budget}
    timing |= {"epochs": step / steps_per_epoch, "final_loss": losses[-1]}
    (out / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
    print(f"trained {step} steps in {budget.spent / 60:.2f} min; wrote {out / 'resnet18.pth'}", flush=True)


if __name__ == "__main__":
    main()
