"""Train NoProp-DT/CT/FM and the backprop baseline on MNIST with the paper's settings.

This is `noprop-eqx train` with MNIST as the dataset; every option is the CLI's:

    python examples/train_mnist.py --variants DT --epochs 100 --out runs/mnist
    python examples/train_mnist.py --variants DT --epochs 100 --out runs/mnist --resume
    python examples/train_mnist.py --variants FM CT --epochs 5 --data-dir /path/to/mnist
"""

import sys

from noprop_eqx.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
