"""Fixed-shape minibatches, so a jitted step compiles once."""

from collections.abc import Iterator

import jax
import numpy as np
from jaxtyping import PRNGKeyArray


def _check(x, y, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"expected batch_size a positive int, got {type(batch_size).__name__}")
    if batch_size <= 0:
        raise ValueError(f"expected batch_size a positive int, got {batch_size}")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y):
        raise ValueError(
            f"expected x and y with the same number of rows, got shapes {x.shape} and {y.shape}"
        )
    return x, y


def num_train_batches(n: int, batch_size: int) -> int:
    """Batches per epoch from [`train_batches`][] for `n` examples: `ceil(n / batch_size)`."""
    if batch_size <= 0:
        raise ValueError(f"expected batch_size a positive int, got {batch_size}")
    return -(-n // batch_size)


def train_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, key: PRNGKeyArray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One shuffled epoch of `(x_batch, y_batch)`, every batch exactly `batch_size` rows.

    The order is `jax.random.permutation(key, n)`. A ragged last batch is filled with the first
    indices of the same permutation (wrapping around as often as needed when `n < batch_size`),
    so every example is seen at least once per epoch and a jitted step never recompiles. There
    are [`num_train_batches`][]`(n, batch_size)` batches.

    **Arguments:**

    - `x`, `y`: arrays with the same number of rows.
    - `batch_size`: rows per batch, positive.
    - `key`: a JAX PRNG key; the same key gives the same order.
    """
    x, y = _check(x, y, batch_size)
    n = len(x)
    perm = np.asarray(jax.random.permutation(key, n))
    order = np.resize(perm, num_train_batches(n, batch_size) * batch_size)  # cyclic fill

    def batches():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]

    return batches()


def eval_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """In-order `(x_batch, y_batch, num_valid)`, every batch exactly `batch_size` rows.

    The last batch is padded by repeating its final example; `num_valid` counts its real rows,
    so metrics should use `[:num_valid]` (or a mask).

    **Arguments:**

    - `x`, `y`: arrays with the same number of rows.
    - `batch_size`: rows per batch, positive.
    """
    x, y = _check(x, y, batch_size)
    n = len(x)

    def batches():
        for start in range(0, n, batch_size):
            num_valid = min(batch_size, n - start)
            idx = np.arange(start, start + batch_size).clip(max=n - 1)
            yield x[idx], y[idx], num_valid

    return batches()
