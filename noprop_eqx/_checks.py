"""Input validation for the public entry points: clear messages, expected vs got."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


def check_images(x, image_shape: tuple[int, ...], name: str = "images") -> Array:
    shape = tuple(np.shape(x))
    if len(shape) != len(image_shape) + 1 or shape[1:] != tuple(image_shape):
        raise ValueError(
            f"expected {name} of shape (batch, {', '.join(map(str, image_shape))}), got {shape}"
        )
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"expected floating-point {name} (normalised once, e.g. float32), got dtype {dtype}"
        )
    return jnp.asarray(x)


def check_labels(y, batch_size: int, num_classes: int) -> Array:
    shape = tuple(np.shape(y))
    if shape != (batch_size,):
        raise ValueError(f"expected labels of shape ({batch_size},), got {shape}")
    dtype = jnp.result_type(y)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"expected integer class labels, got dtype {dtype}")
    y = jnp.asarray(y)
    return eqx.error_if(
        y, (y < 0) | (y >= num_classes), f"expected labels in [0, {num_classes}), got one outside"
    )


def check_batch(batch, image_shape: tuple[int, ...], num_classes: int) -> tuple[Array, Array]:
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        raise TypeError(f"expected batch to be a pair (images, labels), got {type(batch).__name__}")
    x = check_images(batch[0], image_shape)
    y = check_labels(batch[1], x.shape[0], num_classes)
    return x, y


def check_time(t) -> Array:
    """t in [0, 1]: a ValueError for a concrete t, an `eqx.error_if` check under tracing."""
    if not isinstance(t, jax.core.Tracer):
        if np.any((np.asarray(t) < 0.0) | (np.asarray(t) > 1.0)):
            raise ValueError(f"expected t in [0, 1], got {t}")
        return jnp.asarray(t, dtype=float)
    t = jnp.asarray(t)
    return eqx.error_if(t, (t < 0.0) | (t > 1.0), "expected t in [0, 1]")
