"""``views``: see what the augmentations do to your own images, through the training path itself."""

from __future__ import annotations

import argparse

from barlowtwins.cli.helptext import add_command
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.recipes import recipe_names

EXAMPLES = (
    "barlowtwins views --data my_photos --recipe imagenet --count 8 --out views",
    "barlowtwins views --data cifar10 --recipe cifar10-cpu --set train.batch_size=128 --count 512 --bench",
)


def _cmd_views(args: argparse.Namespace) -> None:
    from barlowtwins.recipes import make_config, override, parse_override
    from barlowtwins.train.inputs import time_views, write_views

    overrides = [override("data.train", args.data)]
    overrides += [parse_override(text) for text in args.set]
    config = make_config(args.recipe, overrides)
    if args.bench:
        ready, rate = time_views(config, args.count)
        print(f"data ready in {ready:.1f} s (opening, decoding once into the store); then data + views alone:")
        print(f"{args.count} pairs, {rate:.1f} pairs/s")
        return
    if not args.out:
        raise BarlowTwinsError("views needs --out DIR for the picture and the tensor (or --bench to time them)")
    out = write_views(config, args.count, args.out)
    print(f"wrote {out / 'views.png'} and {out / 'views.pt'} ({args.count} pairs, uint8 N x 2 x 3 x S x S)")


def add_commands(commands: argparse._SubParsersAction) -> None:
    views = add_command(
        commands,
        "views",
        "draw view pairs of your data through the training path (a picture, a tensor, or a speed)",
        "Draws N pairs of the paper's two distorted views (§2.2) exactly as pretrain would with these settings "
        "(same code and seeds) and writes DIR/views.png (each source image beside view A and view B) and "
        "DIR/views.pt (uint8, N x 2 x 3 x S x S, before normalisation); --bench times them instead.",
        EXAMPLES,
    )
    views.add_argument("--data", nargs="+", required=True, help="image folder, .tar shards, or dataset name")
    views.add_argument(
        "--recipe",
        help=f"named recipe ({', '.join(recipe_names())}) or a YAML file (default: none, the imagenet settings)",
    )
    views.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config value")
    views.add_argument("--count", type=int, default=8, help="view pairs to draw")
    views.add_argument("--out", help="output directory for views.png and views.pt")
    views.add_argument(
        "--bench", action="store_true", help="draw the pairs as training would and print 'N pairs, X pairs/s' last"
    )
    views.set_defaults(run=_cmd_views)
