import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._base import AbstractBackbone
from ._layers import conv_pool_relu_hwc, dropout
from ._paper import _check_image_shape
from ._time_embedding import SinusoidalTimeEmbedding


class SimpleCNN(AbstractBackbone):
    """A small, fast backbone for CPU tests and examples; serves as a DT block
    (`time_embed_dim=0`, called as f(z, x)) or as the CT/FM network (`time_embed_dim > 0`,
    called as f(z, x, t)).

    Image: conv3×3(c1, same) → ReLU → maxpool2 → conv3×3(c2, same) → ReLU → maxpool2 → FC(width);
    label: z → FC(width); time: sinusoidal → FC(width); sum → ReLU → dropout → FC(width) → ReLU →
    FC(m) logits.
    """

    convs: tuple[eqx.nn.Conv2d, eqx.nn.Conv2d]
    image_fc: eqx.nn.Linear
    label_fc: eqx.nn.Linear
    time_embedding: SinusoidalTimeEmbedding | None
    time_fc: eqx.nn.Linear | None
    hidden: eqx.nn.Linear
    out: eqx.nn.Linear
    dropout: float = eqx.field(static=True)
    num_classes: int = eqx.field(static=True)
    embed_dim: int = eqx.field(static=True)
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    time_conditioned: bool = eqx.field(static=True)

    def __init__(
        self,
        num_classes: int,
        time_embed_dim: int = 0,
        *,
        embed_dim: int | None = None,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        channels: tuple[int, int] = (16, 32),
        width: int = 128,
        dropout: float = 0.1,
        key: PRNGKeyArray,
    ):
        c, h, w = _check_image_shape(image_shape, 4)
        embed_dim = num_classes if embed_dim is None else embed_dim
        keys = jr.split(key, 7)
        self.convs = (
            eqx.nn.Conv2d(c, channels[0], 3, padding=1, key=keys[0]),
            eqx.nn.Conv2d(channels[0], channels[1], 3, padding=1, key=keys[1]),
        )
        self.image_fc = eqx.nn.Linear(channels[1] * (h // 4) * (w // 4), width, key=keys[2])
        self.label_fc = eqx.nn.Linear(embed_dim, width, key=keys[3])
        if time_embed_dim:
            self.time_embedding = SinusoidalTimeEmbedding(time_embed_dim)
            self.time_fc = eqx.nn.Linear(time_embed_dim, width, key=keys[4])
        else:
            self.time_embedding = self.time_fc = None
        self.hidden = eqx.nn.Linear(width, width, key=keys[5])
        self.out = eqx.nn.Linear(width, num_classes, key=keys[6])
        self.dropout = float(dropout)
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.image_shape = (c, h, w)
        self.time_conditioned = bool(time_embed_dim)

    def __call__(self, z, x, t=None, *, key=None):
        if self.time_conditioned != (t is not None):
            raise TypeError(
                f"this SimpleCNN has time_conditioned={self.time_conditioned}: call it as "
                + ("f(z, x, t)" if self.time_conditioned else "f(z, x)")
            )
        return self._head(z, self.encode(x), t, key)

    def encode(self, x: Float[Array, "c h w"]) -> Float[Array, " width"]:
        x = jnp.transpose(x, (1, 2, 0))  # channels-last convolutions: faster on XLA:CPU
        x = conv_pool_relu_hwc(self.convs[0], x)
        x = conv_pool_relu_hwc(self.convs[1], x)
        return self.image_fc(jnp.transpose(x, (2, 0, 1)).reshape(-1))

    def decode(self, z, features, t=None):
        return self._head(z, features, t, None)

    def _head(self, z, features, t, key):
        h = features + self.label_fc(z)
        if self.time_fc is not None:
            h = h + self.time_fc(self.time_embedding(jnp.asarray(t)))
        h = dropout(jax.nn.relu(h), self.dropout, key)
        return self.out(jax.nn.relu(self.hidden(h)))
