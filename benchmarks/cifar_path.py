"""CIFAR-size data after the full-size change: the training path's pairs/s against the previous path's, one run.

The previous loop called ``loaders.cached_training_batches`` on a square store of the images at the view size;
today's loop calls ``views.batches.view_batches``, which stores images whole and, for images of one small shape
stored as they are (CIFAR-10), takes the same whole-batch path (tests/data/test_fullsize.py checks the batches are
bit for bit the previous ones). This times both, alternating, on the same data and settings (the ``cifar10-cpu``
recipe's views, batch 128), data + views alone, and prints pairs/s and their ratio.

Run: ``python benchmarks/cifar_path.py --shards '../shared/data/cifar10/cifar10-train-{000000..000009}.tar'``
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from barlowtwins.data import open_source
from barlowtwins.data.loaders import cached_training_batches, decoded
from barlowtwins.recipes import make_config, override
from barlowtwins.views.batched import training_views
from barlowtwins.views.batches import view_batches

CPU = torch.device("cpu")


def pairs_per_second(batches, count: int) -> float:
    next(batches)  # the first batch may carry one-off costs
    started, drawn = time.perf_counter(), 0
    while drawn < count:
        drawn += len(next(batches)[0][0])
    return drawn / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", required=True)
    parser.add_argument("--pairs", type=int, default=20000, help="pairs per timing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = make_config("cifar10-cpu", [override("data.train", [args.shards]), override("data.workers", 0)])
    source = open_source(config.data.train)
    started = time.perf_counter()
    square = decoded(source, config.augment.image_size, "memory", "", workers=2)
    print(f"{source.description}; previous store built in {time.perf_counter() - started:.1f} s")
    views = training_views(**dataclasses.asdict(config.augment))
    batch, seed = config.train.batch_size, config.train.seed
    rates = {"previous": [], "today": []}
    for round_ in range(args.rounds):
        started = time.perf_counter()
        today = view_batches(config, CPU, source)
        setup = time.perf_counter() - started
        rates["today"].append(pairs_per_second(today, args.pairs))
        rates["previous"].append(pairs_per_second(cached_training_batches(square, views, batch, seed, CPU), args.pairs))
        print(
            f"round {round_}: previous {rates['previous'][-1]:,.0f} pairs/s, today {rates['today'][-1]:,.0f} "
            f"pairs/s (today's store built in {setup:.1f} s)"
        )
    previous, today = statistics.median(rates["previous"]), statistics.median(rates["today"])
    print(f"median: previous {previous:,.0f} pairs/s, today {today:,.0f} pairs/s, ratio {today / previous:.3f}")


if __name__ == "__main__":
    main()
