"""Train NoProp-DT/CT/FM and the backprop baseline on CIFAR-10 or CIFAR-100 with a ResNet.

This is `noprop-eqx train --dataset cifar10|cifar100 --model resnetN` with N = 18, 34, 50, 101
or 152 given as `--resnet-depth N` (or `--resnet_depth N`) and the first stage's channels as
`--width` (default 64); every other option is the CLI's (`--help` lists both).

Data, never downloaded: `--data-dir` (or `$NOPROP_DATA_DIR`) names a folder holding the official
python release, as its tarball (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`) or the
folder it extracts to (`cifar-10-batches-py/`, `cifar-100-python/`), md5-checked
(`--no-verify-md5` skips the check); or a HuggingFace `save_to_disk` folder (`cifar10/`,
`cifar100/`). CIFAR-100 trains on the 100 fine classes (`--cifar100-labels coarse`: 20).

    python examples/train_cifar.py --dataset cifar100 --epochs 100 --resnet-depth 50 \\
        --data-dir ~/data --variants DT
    python examples/train_cifar.py --dataset cifar10 --epochs 1 --resnet-depth 18 --width 16 \\
        --variants FM --limit-train 2000 --limit-test 1000 --data-dir ~/data  # a quick look
    python examples/train_cifar.py --dataset cifar10 --epochs 10 --model paper  # paper's CIFAR net

`--limit-train N` trains on a seeded random sample of N images with every class in its share.
"""

import argparse
import sys

from noprop_eqx.__main__ import main

DEPTHS = (18, 34, 50, 101, 152)


def make_parser() -> argparse.ArgumentParser:
    """This script's own options; everything else goes to `noprop-eqx train` unchanged."""
    parser = argparse.ArgumentParser(
        prog="train_cifar.py",
        description="NoProp on CIFAR-10/100 with a ResNet backbone. Options not listed here "
        "are `noprop-eqx train`'s (shown below).",
        add_help=False,
        allow_abbrev=False,  # a prefix of a CLI option must reach the CLI
    )
    parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    parser.add_argument(
        "--dataset",
        choices=("cifar10", "cifar100"),
        default="cifar10",
        help="default cifar10; CIFAR-100 trains on its 100 fine classes (--cifar100-labels)",
    )
    parser.add_argument(
        "--resnet-depth",
        "--resnet_depth",
        dest="resnet_depth",
        type=int,
        choices=DEPTHS,
        help="ResNet depth, i.e. --model resnetN (default 18 unless --model is given)",
    )
    parser.add_argument(
        "--width",
        type=int,
        help="the ResNet's first-stage channels (standard 64); passed on as the CLI's --width",
    )
    return parser


def translate(argv: list[str]) -> list[str]:
    """Turns this script's `--resnet-depth N` into the CLI's `--model resnetN`; `--width`, when
    given, goes on to the CLI's `--width`."""
    args, rest = make_parser().parse_known_args(argv)
    model = [] if args.resnet_depth is None else ["--model", f"resnet{args.resnet_depth}"]
    if args.resnet_depth is None and "--model" not in rest:
        model = ["--model", "resnet18"]
    width = [] if args.width is None else ["--width", str(args.width)]
    return ["train", "--dataset", args.dataset, *model, *width, *rest]


if __name__ == "__main__":
    argv = sys.argv[1:]
    if make_parser().parse_known_args(argv)[0].help:
        make_parser().print_help()
        print("\n--- noprop-eqx train ---\n")
        sys.exit(main(["train", "--help"]))
    sys.exit(main(translate(argv)))
