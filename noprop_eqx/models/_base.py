import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Key, PRNGKeyArray

from ._batch_norm import BATCH_AXIS


class AbstractBackbone(eqx.Module):
    """A network seeing one example: (z, x) for a DT block, (z, x, t) for the CT/FM network.

    Returns logits over the m classes. Dropout runs when `key` is given (training) and is off
    when `key` is None (evaluation).
    """

    num_classes: eqx.AbstractVar[int]
    embed_dim: eqx.AbstractVar[int]
    image_shape: eqx.AbstractVar[tuple[int, int, int]]
    time_conditioned: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def __call__(
        self,
        z: Float[Array, " embed"],
        x: Float[Array, "c h w"],
        t: Float[Array, ""] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " classes"]:
        """Logits over the classes."""

    def encode(self, x: Float[Array, "c h w"]) -> Array:
        """The part of the network that sees only the image, with dropout off. For inference:
        `net(z, x, t) == net.decode(z, net.encode(x), t)`, so an ODE solve over t encodes each
        image once instead of once per function evaluation. The default encodes nothing (the
        features are the image); backbones with a separate image branch override both."""
        return x

    def decode(
        self, z: Float[Array, " embed"], features: Array, t: Float[Array, ""] | None = None
    ) -> Float[Array, " classes"]:
        """The rest of the network on `encode(x)`, dropout off (see `encode`)."""
        return self(z, features) if t is None else self(z, features, t)


def apply_batched(
    net: AbstractBackbone,
    z: Float[Array, "batch embed"],
    x: Float[Array, "batch c h w"],
    t: Float[Array, "*batch"] | None = None,
    *,
    keys: Key[Array, " batch"] | None = None,
) -> Float[Array, "batch classes"]:
    """`net` on every example of a batch. `t` is None (DT), a scalar shared by the batch (ODE
    inference) or one time per example (training); `keys` (one per example) turns dropout on,
    and training mode: a `BatchNorm` normalises over the batch (the vmap axis `BATCH_AXIS`)."""
    if t is not None and jnp.ndim(t) == 0:
        t = jnp.broadcast_to(t, z.shape[:1])
    return jax.vmap(
        _apply_one,
        in_axes=(None, 0, 0, None if t is None else 0, None if keys is None else 0),
        axis_name=BATCH_AXIS,
    )(net, z, x, t, keys)


def _apply_one(net, z, x, t, key):
    return net(z, x, key=key) if t is None else net(z, x, t, key=key)


def encode_batched(net: AbstractBackbone, x: Float[Array, "batch c h w"]) -> Array:
    """`net.encode` on every image of a batch."""
    return jax.vmap(net.encode)(x)


def decode_batched(
    net: AbstractBackbone,
    z: Float[Array, "batch embed"],
    features: Array,
    t: Float[Array, "*batch"] | None = None,
) -> Float[Array, "batch classes"]:
    """`net.decode` on every example of a batch; `t` as for `apply_batched`."""
    if t is None:
        return jax.vmap(net.decode)(z, features)
    t = jnp.broadcast_to(t, z.shape[:1])
    return jax.vmap(net.decode)(z, features, t)
