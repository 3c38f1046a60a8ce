"""Population statistics for `BatchNorm` backbones ("precise BatchNorm", Wu & Johnson 2021):
the mean over training batches of each layer's training-mode statistics, written into the model.

`noprop-eqx train` calls `recalibrate_batch_norm` after every epoch, before it evaluates or
saves; a hand-written loop calls it before `evaluate_accuracy`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree

from ._seeds import stack_trees
from .models import ResNetWrapper
from .models._batch_norm import BATCH_AXIS, is_batch_norm
from .models._factory import index_stacked


def has_batch_norm(model: PyTree) -> bool:
    """Whether `model` holds any `BatchNorm` layer."""
    return any(is_batch_norm(n) for n in jax.tree.leaves(model, is_leaf=is_batch_norm))


def _batch_norm_backbones(model: PyTree) -> list[ResNetWrapper]:
    is_backbone = lambda n: isinstance(n, ResNetWrapper)  # noqa: E731
    return [
        n
        for n in jax.tree.leaves(model, is_leaf=is_backbone)
        if is_backbone(n) and n.norm == "batch"
    ]


@eqx.filter_jit
def _batch_statistics(net: ResNetWrapper, x):
    return jax.vmap(net.batch_norm_statistics, axis_name=BATCH_AXIS, out_axes=None)(x)


def _population(net: ResNetWrapper, batches: list[jax.Array]) -> list[tuple]:
    """Each layer's (mean, variance) over the images of `batches`: the mean of the batch means,
    and the mean of the batch variances plus the variance of the batch means (equal batches)."""

    def combine(means, variances):
        mean = jnp.mean(means, axis=0)
        return mean, jnp.mean(variances, axis=0) + jnp.mean((means - mean[None]) ** 2, axis=0)

    per_layer = stack_trees([_batch_statistics(net, b) for b in batches])  # leading batch axis
    return [combine(means, variances) for means, variances in per_layer]


def _recalibrated(net: ResNetWrapper, batches: list[jax.Array]) -> ResNetWrapper:
    """`net` (one backbone, or stacked backbones with a leading block axis) with every
    BatchNorm's population statistics set from `batches`."""
    if net.stem_norm.mean.ndim == 2:  # stacked blocks: each on its own, restacked
        blocks = range(net.stem_norm.mean.shape[0])
        stats = stack_trees([_population(index_stacked(net, t), batches) for t in blocks])
    else:
        stats = _population(net, batches)

    def where(n):
        layers = n.norm_layers()
        return [layer.mean for layer in layers] + [layer.var for layer in layers]

    return eqx.tree_at(where, net, [m for m, _ in stats] + [v for _, v in stats])


def recalibrate_batch_norm(
    model: PyTree,
    x: np.ndarray,
    *,
    num_images: int = 5_000,
    batch_size: int = 128,
    key: PRNGKeyArray | None = None,
) -> PyTree:
    """`model` with the population statistics of every `BatchNorm` layer set from training
    images: each layer's training-mode batch statistics, averaged over the batches of
    `num_images` images of `x` (a random subset drawn with `key`; the first ones without a key),
    `batch_size` images a batch, as in training. Every block of a NoProp-DT model is
    recalibrated on the same images. A model without BatchNorm is returned unchanged.

        model = npx.recalibrate_batch_norm(model, data.x_train, key=jr.key(0))
        npx.evaluate_accuracy(model, data.x_test, data.y_test)
    """
    backbones = _batch_norm_backbones(model)
    if not backbones:
        return model
    if not (isinstance(batch_size, int) and batch_size >= 2):
        raise ValueError(
            f"expected batch_size to be an int >= 2 (a batch's variance needs two images), "
            f"got {batch_size!r}"
        )
    if not (isinstance(num_images, int) and num_images >= 1):
        raise ValueError(f"expected num_images to be a positive int, got {num_images!r}")
    n = len(x)
    if n < batch_size:
        raise ValueError(
            f"expected at least batch_size={batch_size} images to recalibrate BatchNorm "
            f"on, got {n}: pass a smaller batch_size"
        )
    order = np.arange(n) if key is None else np.asarray(jr.permutation(key, n))
    count = max(1, min(num_images, n) // batch_size)
    batches = [jnp.asarray(x[order[i * batch_size : (i + 1) * batch_size]]) for i in range(count)]
    updated = [_recalibrated(b, batches) for b in backbones]
    return eqx.tree_at(_batch_norm_backbones, model, updated)
