"""scikit-learn's embedded 8x8 handwritten digits."""

import numpy as np

from ._dataset import ImageDataset


def load_digits(*, test_fraction: float = 0.25, seed: int = 0) -> ImageDataset:
    """The 1797 8x8 digit images bundled with scikit-learn (no download needed).

    Pixels take values 0..16 and are scaled by 1/16 before normalising. The train/test split is
    a fixed permutation drawn from a local `np.random.default_rng(seed)`, so it is the same on
    every call (not stratified).

    **Arguments:**

    - `test_fraction`: fraction of the examples held out for testing, in (0, 1).
    - `seed`: seed of the split permutation.

    **Returns:** an [`ImageDataset`][] named `"digits"` with images of shape `(1, 8, 8)` and 10
    classes.
    """
    from sklearn.datasets import load_digits as _sklearn_load_digits

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"expected test_fraction in (0, 1), got {test_fraction}")
    bunch = _sklearn_load_digits()
    images, labels = bunch.images, bunch.target
    n = len(labels)
    num_test = int(round(n * test_fraction))
    if not 0 < num_test < n:
        raise ValueError(
            f"expected test_fraction to leave both splits non-empty for {n} examples, "
            f"got {num_test} test examples"
        )
    perm = np.random.default_rng(seed).permutation(n)
    test, train = perm[:num_test], perm[num_test:]
    return ImageDataset.from_raw(
        images[train],
        labels[train],
        images[test],
        labels[test],
        num_classes=10,
        name="digits",
        class_names=tuple(str(i) for i in range(10)),
        scale=16.0,
    )
