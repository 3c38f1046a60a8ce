"""Train NoProp-DT/CT/FM and the backprop baseline on CIFAR-10 or CIFAR-100 with a ResNet.

This is `noprop-eqx train --dataset cifar10|cifar100 --model resnet18|resnet50`; every other
option is the CLI's (`noprop-eqx train --help`). Data: a local HuggingFace `save_to_disk`
folder (`--data-dir`, or `$NOPROP_DATA_DIR` holding `cifar10-jpeg/`, `cifar10/` or
`cifar100/`), else the hub (`uoft-cs/cifar10`, `uoft-cs/cifar100`) when online.

    python examples/train_cifar.py --dataset cifar10 --epochs 150 --resnet_depth 18 --variants DT
    python examples/train_cifar.py --dataset cifar10 --epochs 1 --resnet_depth 18 \\
        --variants FM --limit-train 2000 --data-dir ../shared/data
    python examples/train_cifar.py --dataset cifar10 --epochs 10 --model paper  # paper's CIFAR net
"""

import argparse
import sys

from noprop_eqx.__main__ import main


def translate(argv: list[str]) -> list[str]:
    """Turns this script's `--resnet_depth N` into the CLI's `--model resnetN`."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--dataset", choices=("cifar10", "cifar100"), default="cifar10")
    parser.add_argument("--resnet_depth", "--resnet-depth", type=int, choices=(18, 34, 50))
    args, rest = parser.parse_known_args(argv)
    model = [] if args.resnet_depth is None else ["--model", f"resnet{args.resnet_depth}"]
    if args.resnet_depth is None and "--model" not in rest:
        model = ["--model", "resnet18"]
    return ["train", "--dataset", args.dataset, *model, *rest]


if __name__ == "__main__":
    sys.exit(main(translate(sys.argv[1:])))
