"""The command line's self-description: --version, every subcommand's --help (description, examples that
parse, defaults), pretrain's one flag table, and the dataset statistics the recipes name."""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import re
import shlex
import tarfile

import numpy as np
import pytest
import yaml
from PIL import Image

from barlowtwins.cli import build_parser, main
from barlowtwins.cli.pretrain import PRETRAIN_FLAGS
from barlowtwins.config import PretrainConfig
from barlowtwins.dataset_stats import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
)
from barlowtwins.errors import BarlowTwinsError
from barlowtwins.recipes import flatten, make_config, parse_override

COMMANDS = (
    "pretrain",
    "demo",
    "export",
    "knn",
    "linear",
    "semi",
    "transfer",
    "embed",
    "neighbours",
    "ablate",
    "detect",
    "views",
)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def help_text(capsys, *argv: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def sections(text: str) -> tuple[str, list[str]]:
    """(description, example command lines) of a --help text."""
    head = re.split(r"\n\n(?:options|positional arguments):\n", text, maxsplit=1)[0]
    description = head.split("\n\n", 1)[1] if "\n\n" in head else ""  # between the usage and the options
    examples = [line.strip() for line in text.split("\nexamples:\n", 1)[1].splitlines() if line.strip()]
    return description.strip(), examples


def default_of(text: str, flag: str) -> str:
    """The ``(default: X)`` at the end of ``flag``'s help in a --help text."""
    entry = re.split(rf"\n  {re.escape(flag)}[ \n]", text, maxsplit=1)[1].split("\n  -", 1)[0]
    return " ".join(entry.split()).rsplit("(default: ", 1)[1].split(")")[0]


def test_version_is_the_installed_packages(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"barlowtwins {importlib.metadata.version('barlowtwins')}\n"


def test_the_commands_tested_here_are_all_the_commands():
    assert set(subparsers(build_parser())) == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_has_a_description_examples_that_parse_and_defaults(capsys, command):
    text = help_text(capsys, command)
    description, examples = sections(text)
    assert len(description) > 80 and "." in description, description
    assert examples, text
    for example in examples:
        argv = shlex.split(example)
        argv = argv[argv.index("barlowtwins") + 1 :] if "barlowtwins" in argv else argv[argv.index("-m") + 2 :]
        assert argv[0] == command, example
        build_parser(argv).parse_args(argv)  # an example that does not parse would exit here
    assert "(default: " in text


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_says_what_it_does(command):
    parser = subparsers(build_parser())[command]
    silent = [a.option_strings for a in parser._actions if a.option_strings and not (a.help or "").strip()]
    assert silent == []


def test_options_with_a_default_show_it(capsys):
    text = help_text(capsys, "linear")
    assert (default_of(text, "--epochs EPOCHS"), default_of(text, "--lr LR")) == ("100", "0.3")  # appendix B.1
    assert default_of(text, "--crop-scale CROP_SCALE CROP_SCALE") == "0.08 1.0"
    assert default_of(help_text(capsys, "knn"), "--k K [K ...]") == "200 20"
    assert default_of(help_text(capsys, "views"), "--count COUNT") == "8"


def test_pretrain_help_shows_the_values_of_the_chosen_recipe(capsys):
    paper = help_text(capsys, "pretrain")
    cpu = help_text(capsys, "pretrain", "--recipe", "cifar10-cpu")
    assert "imagenet recipe's" in " ".join(paper.split()) and "cifar10-cpu recipe's" in " ".join(cpu.split())
    flags = ("--batch-size BATCH_SIZE", "--projector PROJECTOR", "--lambd LAMBD", "--epochs EPOCHS", "--lr LR")
    assert [default_of(paper, f) for f in flags] == ["2048", "8192-8192-8192", "0.0051", "1000", "0.2"]  # §2.2
    assert [default_of(cpu, f) for f in flags] == ["128", "1024-1024-1024", "0.01", "100", "0.3"]  # the YAML's
    assert default_of(cpu, "--arch ARCH") == "resnet18" and default_of(cpu, "--small-stem, --no-small-stem") == "false"
    assert default_of(help_text(capsys, "pretrain", "--recipe=cifar10"), "--small-stem, --no-small-stem") == "true"


def test_a_missing_recipe_asked_for_help_is_one_error_line(capsys):
    assert main(["pretrain", "--recipe", "no-such-recipe", "--help"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("barlowtwins: error: no recipe 'no-such-recipe'") and "\n" not in err


def test_demo_help_is_its_own(capsys):
    demo, pretrain = help_text(capsys, "demo"), help_text(capsys, "pretrain")
    assert demo != pretrain.replace("barlowtwins pretrain", "barlowtwins demo")
    assert "digits" in sections(demo)[0] and "--recipe" not in demo and "--print-config" not in demo
    assert (default_of(demo, "--epochs EPOCHS"), default_of(demo, "--batch-size BATCH_SIZE")) == ("10", "64")
    assert default_of(demo, "--data DATA [DATA ...]") == "digits"


def test_embed_offers_no_seed_it_would_ignore(capsys):
    text = help_text(capsys, "embed")
    assert "--seed" not in text and "--random-init" not in text and "classifier" not in text


def test_every_pretrain_flag_names_a_config_field():
    fields = flatten(PretrainConfig().to_dict())
    assert [flag.key for flag in PRETRAIN_FLAGS.values() if flag.key not in fields] == []
    parser = subparsers(build_parser())["pretrain"]
    not_config_values = {"help", "recipe", "set", "print_config", "eval_only"}  # what the table does not declare
    assert {a.dest for a in parser._actions} - not_config_values == set(PRETRAIN_FLAGS)


def test_every_pretrain_flag_sets_its_config_value(capsys):
    argv = ["--data", "a", "b", "--eval-data", "c", "--data-root", "r", "--download", "--limit", "5"]
    argv += ["--eval-limit", "6", "--workers", "0", "--method", "byol", "--arch", "resnet34", "--small-stem"]
    argv += ["--projector", "8-8", "--image-size", "16", "--lambd", "0.1", "--loss-formulation", "gram"]
    argv += ["--optimizer", "sgd", "--lr", "0.5", "--out", "o", "--epochs", "3", "--time-budget", "2m"]
    argv += ["--batch-size", "16", "--precision", "fp32", "--device", "cpu", "--seed", "4", "--init", "w.pth"]
    assert main(["pretrain", "--recipe", "demo", *argv, "--print-config"]) == 0
    config = flatten(yaml.safe_load(capsys.readouterr().out))
    expected = {
        "data.train": ["a", "b"],
        "data.eval": ["c"],
        "data.root": "r",
        "data.download": True,
        "data.limit": 5,
        "data.eval_limit": 6,
        "data.workers": 0,
        "model.method": "byol",
        "model.arch": "resnet34",
        "model.small_stem": True,
        "model.projector": "8-8",
        "model.init": "w.pth",
        "augment.image_size": 16,
        "loss.lambd": 0.1,
        "loss.formulation": "gram",
        "optim.optimizer": "sgd",
        "optim.lr_weights": 0.5,
        "train.out": "o",
        "train.epochs": 3,
        "train.time_budget": "2m",
        "train.batch_size": 16,
        "train.precision": "fp32",
        "train.device": "cpu",
        "train.seed": 4,
    }
    assert {key: config[key] for key in expected} == expected
    assert set(expected) == {flag.key for flag in PRETRAIN_FLAGS.values()}


# --- dataset statistics --------------------------------------------------------------------------------------


def test_the_constants_are_the_numbers_the_recipes_used_to_spell_out():
    assert (CIFAR10_MEAN, CIFAR10_STD) == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert (IMAGENET_MEAN, IMAGENET_STD) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision's
    assert (CIFAR100_MEAN, CIFAR100_STD) == ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))  # solo-learn's
    for recipe in ("cifar10", "cifar10-cpu", "cifar10-vit"):
        augment = make_config(recipe).augment
        assert (augment.mean, augment.std) == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)), recipe
    assert make_config("imagenet").augment.mean == (0.485, 0.456, 0.406)


def test_a_later_layer_may_name_other_statistics_or_give_numbers():
    named = make_config("cifar10", [parse_override("augment.normalize=cifar100")]).augment
    assert (named.mean, named.std) == ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    numbers = make_config("cifar10", [parse_override("augment.mean=[0.5, 0.5, 0.5]")]).augment
    assert (numbers.mean, numbers.std) == ((0.5, 0.5, 0.5), (0.2470, 0.2435, 0.2616))  # explicit lists still work
    back = make_config("demo", [parse_override("augment.normalize=imagenet")]).augment
    assert (back.mean, back.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_unknown_or_doubled_statistics_are_refused(tmp_path, capsys):
    with pytest.raises(BarlowTwinsError, match="no statistics for 'mnist'; use one of imagenet, cifar10, cifar100"):
        make_config("cifar10", [parse_override("augment.normalize=mnist")])
    recipe = tmp_path / "both.yaml"
    recipe.write_text("augment:\n  normalize: cifar10\n  std: [0.2, 0.2, 0.2]\n")
    assert main(["pretrain", "--recipe", str(recipe), "--print-config"]) == 2
    assert "augment.normalize and augment.std both given" in capsys.readouterr().err


def test_the_cifar10_statistics_match_its_pixels(cifar_dir):
    """One training shard (5,000 images, JPEG re-encoded): within 0.006 of the constants, and far from the
    often-copied std (0.2023, 0.1994, 0.2010)."""
    total, squares, pixels = np.zeros(3), np.zeros(3), 0
    with tarfile.open(cifar_dir / "cifar10-train-000000.tar") as tar:
        for member in tar:
            if member.name.endswith(".jpg"):
                image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                array = np.asarray(image, dtype=np.float64) / 255
                total, squares, pixels = total + array.sum((0, 1)), squares + (array**2).sum((0, 1)), pixels + 1024
    mean = total / pixels
    std = np.sqrt(squares / pixels - mean**2)
    assert np.abs(mean - CIFAR10_MEAN).max() < 0.006 and np.abs(std - CIFAR10_STD).max() < 0.006, (mean, std)
    assert np.abs(std - (0.2023, 0.1994, 0.2010)).min() > 0.03
