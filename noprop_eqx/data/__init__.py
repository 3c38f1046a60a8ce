"""Datasets as normalised numpy arrays, and fixed-shape batching."""

from ._augment import random_shift as random_shift, shift_images as shift_images
from ._batching import (
    eval_batches as eval_batches,
    num_train_batches as num_train_batches,
    train_batches as train_batches,
)
from ._cifar import load_cifar10 as load_cifar10, load_cifar100 as load_cifar100
from ._dataset import (
    ImageDataset as ImageDataset,
    channel_stats as channel_stats,
    normalise as normalise,
)
from ._digits import load_digits as load_digits
from ._errors import (
    DataIntegrityError as DataIntegrityError,
    DatasetNotFoundError as DatasetNotFoundError,
)
from ._hf import load_hf_dataset as load_hf_dataset
from ._mnist import load_mnist as load_mnist
from ._registry import load_dataset as load_dataset

__all__ = [
    "DataIntegrityError",
    "DatasetNotFoundError",
    "ImageDataset",
    "channel_stats",
    "eval_batches",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_digits",
    "load_hf_dataset",
    "load_mnist",
    "normalise",
    "num_train_batches",
    "random_shift",
    "shift_images",
    "train_batches",
]
