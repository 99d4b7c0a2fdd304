"""``neighbours``: a picture of query photos beside their nearest photos, and TensorBoard projector files."""

from __future__ import annotations

import argparse

from barlowtwins.cli.evaluate import add_fields, from_args
from barlowtwins.cli.helptext import add_command
from barlowtwins.config import EvalInputs, NeighboursConfig

HELP = {
    "limit": "use only the first N samples of --data and of --bank (0: all)",
    "seed": "the drawn queries and projector points; the random-init floor's weights when the checkpoint carries "
    "no seed of its own",
    "random_init": "also show the same queries' neighbours from the randomly initialised backbone, side by side",
    "baseline_weights": "also show the neighbours from this state_dict (same --arch and stem), e.g. supervised weights",
    "queries": "query photos drawn at random from --data when no --query is given",
    "k": "neighbours shown per query",
    "thumbnail": "side of each photo in neighbours.png, px",
    "projector_points": "bank samples written for TensorBoard's projector (a seeded draw if more; 0: none)",
    "sprite_size": "side of each projector thumbnail, px (the sprite may be at most 8192 px a side)",
    "batch_size": "images per forward pass",
}


def _cmd_neighbours(args: argparse.Namespace) -> None:
    from barlowtwins.evaluate import neighbours

    inputs, settings = from_args(EvalInputs, args), from_args(NeighboursConfig, args)
    neighbours.run(inputs, settings, args.data, args.query or (), args.bank, args.out, args.class_names)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``barlowtwins neighbours`` on the ``barlowtwins`` parser's subparsers."""
    p = add_command(
        commands,
        "neighbours",
        "see what a backbone learned: query photos beside their nearest photos, and a TensorBoard projector",
        "Draws DIR/neighbours.png: each row a query photo (framed blue) and its k nearest photos in the bank by "
        "cosine similarity of the frozen backbone features, the similarity under each, a green frame where the "
        "neighbour has the query's label and a red one where not; beside them the same queries' neighbours at "
        "random initialisation (the floor), each panel titled with its hit rate. Also writes TensorBoard "
        "projector files (features, label and file of each point, a sprite of thumbnails: tensorboard --logdir "
        "DIR) and DIR/neighbours.json. A query never retrieves itself. Not a protocol of the paper.",
        (
            "barlowtwins neighbours --checkpoint runs/imagenette --data imagenette/val --out neighbours",
            "barlowtwins neighbours --checkpoint backbone.pth --data photos/ --query beach.jpg dog.jpg --k 5 "
            "--no-random-init",
            "barlowtwins neighbours --checkpoint runs/cifar10 --data cifar10:test --bank cifar10 --queries 6",
        ),
    )
    skip = ("train_data", "test_data", "test_limit", "out")
    add_fields(p, EvalInputs, skip=skip, helps=HELP)
    add_fields(p, NeighboursConfig, helps=HELP)
    p.add_argument("--data", nargs="+", required=True, help="the photos queries come from: folder, shards or dataset")
    p.add_argument("--query", nargs="+", metavar="FILE", help="query photos by file name or path in --data")
    p.add_argument("--bank", nargs="+", help="where neighbours are searched (default: --data itself)")
    p.add_argument(
        "--class-names",
        default="",
        metavar="FILE",
        help="readable class names: lines 'CLASS NAME', CLASS a folder name or label number (n01440764 tench)",
    )
    where = "default: eval/neighbours in the run directory, or WEIGHTS-neighbours beside a weights file"
    p.add_argument("--out", default="", help=f"output directory ({where})")
    p.set_defaults(run=_cmd_neighbours)
