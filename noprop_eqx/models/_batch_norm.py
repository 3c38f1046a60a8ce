"""Batch normalisation for backbones that otherwise see one example at a time.

`BatchNorm` normalises with the statistics of the batch in training and with stored population
statistics at evaluation. It carries no running state: a loss stays `loss_fn(model, batch, key)`.
The population statistics are arrays of the model that no optimiser step changes (their gradient
is zero and `paper_optimizer` leaves them out of the weight decay); `recalibrate_batch_norm`
sets them from training batches ("precise BatchNorm"), which `noprop-eqx train` does after every
epoch, before it evaluates or saves.

Training-mode statistics are reduced over the named vmap axis `BATCH_AXIS`, the one
`apply_batched` maps over: a backbone with `BatchNorm` trains through `apply_batched` (or any
`jax.vmap(..., axis_name=BATCH_AXIS)`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

BATCH_AXIS = "batch"


class BatchNorm(eqx.Module):
    """Per-channel batch normalisation of a (channels, height, width) feature map.

    `norm(x, training=True)` normalises with the batch's mean and (biased) variance over the
    examples of the `BATCH_AXIS` vmap axis and the spatial positions; `training=False` with the
    population statistics `mean` and `var` (0 and 1 until `recalibrate_batch_norm` sets them).
    Either way it returns `(normalised x, (mean, var))`, the statistics it used."""

    weight: Float[Array, " channels"]
    bias: Float[Array, " channels"]
    mean: Float[Array, " channels"]
    var: Float[Array, " channels"]
    eps: float = eqx.field(static=True)

    def __init__(self, channels: int, eps: float = 1e-5):
        self.weight = jnp.ones(channels)
        self.bias = jnp.zeros(channels)
        self.mean = jnp.zeros(channels)
        self.var = jnp.ones(channels)
        self.eps = eps

    def __call__(
        self, x: Float[Array, "channels h w"], *, training: bool
    ) -> tuple[Float[Array, "channels h w"], tuple[Array, Array]]:
        if training:
            try:
                mean = jax.lax.pmean(jnp.mean(x, axis=(1, 2)), BATCH_AXIS)
                centred = x - mean[:, None, None]
                var = jax.lax.pmean(jnp.mean(jnp.square(centred), axis=(1, 2)), BATCH_AXIS)
            except NameError:
                raise ValueError(
                    "a BatchNorm backbone in training mode (called with a dropout key) "
                    "normalises over the batch, so it must run under "
                    "noprop_eqx.models.apply_batched (or jax.vmap(..., axis_name="
                    f"{BATCH_AXIS!r})); called on one example, it has no batch. For "
                    "evaluation, call it without a key"
                ) from None
        else:
            mean, var = jax.lax.stop_gradient(self.mean), jax.lax.stop_gradient(self.var)
            centred = x - mean[:, None, None]
        scale = self.weight * jax.lax.rsqrt(var + self.eps)
        return centred * scale[:, None, None] + self.bias[:, None, None], (mean, var)


def is_batch_norm(node) -> bool:
    """Whether a pytree node is a `BatchNorm` layer (an `is_leaf` for `jax.tree` functions)."""
    return isinstance(node, BatchNorm)
