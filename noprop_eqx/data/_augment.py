"""Random translations of training images: the one augmentation the training loop offers.

The paper trains without augmentation; `noprop-eqx train --augment-shift N` turns this on.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray


def _shift_one(
    image: Float[Array, "c h w"],
    offset: Int[Array, "2"],
    fill: Float[Array, " c"],
    max_shift: int,
) -> Float[Array, "c h w"]:
    c, h, w = image.shape
    s = max_shift
    canvas = jnp.broadcast_to(fill[:, None, None], (c, h + 2 * s, w + 2 * s))
    canvas = canvas.at[:, s : s + h, s : s + w].set(image)
    return jax.lax.dynamic_slice(canvas, (0, s + offset[0], s + offset[1]), (c, h, w))


@functools.partial(jax.jit, static_argnames="max_shift")
def shift_images(
    images: Float[ArrayLike, "batch c h w"],
    offsets: Int[ArrayLike, "batch 2"],
    fill: Float[ArrayLike, " c"],
    *,
    max_shift: int,
) -> Float[Array, "batch c h w"]:
    """Translate each image by an integer offset, filling the uncovered pixels with `fill`.

    Output pixel `[k, i, j]` is input pixel `[k, i + dy, j + dx]` for `(dy, dx) = offsets[b]`,
    or `fill[k]` where that lies outside the image: the content moves up by dy and left by dx.
    Every offset must lie in `[-max_shift, max_shift]`.
    """
    images, offsets = jnp.asarray(images), jnp.asarray(offsets)
    fill = jnp.asarray(fill, images.dtype)
    return jax.vmap(_shift_one, in_axes=(0, 0, None, None))(images, offsets, fill, max_shift)


def random_shift(
    images: Float[ArrayLike, "batch c h w"],
    *,
    max_shift: int,
    fill: Float[ArrayLike, " c"] | Sequence[float],
    key: PRNGKeyArray,
) -> Float[Array, "batch c h w"]:
    """Translate every image by its own offset `(dy, dx)`, each drawn uniformly from the integers
    in `[-max_shift, max_shift]`, filling the uncovered border with `fill` (per channel; for a
    normalised dataset, `ImageDataset.background`, the value of a black pixel).

    `max_shift=0` returns the images unchanged.
    """
    if isinstance(max_shift, bool) or not isinstance(max_shift, (int, np.integer)):
        raise TypeError(f"expected max_shift a non-negative int, got {type(max_shift).__name__}")
    if max_shift < 0:
        raise ValueError(f"expected max_shift a non-negative int, got {max_shift}")
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (batch, c, h, w), got {images.shape}")
    fill = np.asarray(fill, dtype=np.float32).reshape(-1)
    if fill.shape != (images.shape[1],):
        raise ValueError(
            f"expected one fill value per channel ({images.shape[1]}), got shape {fill.shape}"
        )
    if max_shift == 0:
        return images
    offsets = jr.randint(key, (images.shape[0], 2), -max_shift, max_shift + 1)
    return shift_images(images, offsets, fill, max_shift=int(max_shift))
