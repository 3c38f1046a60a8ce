"""The paper's networks (Li, Teh, Pascanu 2025, Appendix B / Fig. 6)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._base import AbstractBackbone
from ._layers import conv_hwc, conv_pool_relu_hwc, dropout
from ._time_embedding import SinusoidalTimeEmbedding


def _split(key: PRNGKeyArray | None, n: int) -> list[PRNGKeyArray | None]:
    return [None] * n if key is None else list(jr.split(key, n))


def _check_image_shape(image_shape: tuple[int, int, int], min_size: int) -> tuple[int, int, int]:
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 3 or min(image_shape[1:]) < min_size:
        raise ValueError(
            f"expected image_shape (channels, height, width) with height, width >= {min_size}, "
            f"got {image_shape}"
        )
    return image_shape  # type: ignore[return-value]


class PaperConvStack(eqx.Module):
    """conv3×3(32) → ReLU → maxpool2 → dropout → conv3×3(64) → ReLU → dropout → conv3×3(128) →
    ReLU → maxpool2 → dropout → flatten. All convolutions are unpadded (this is what matches the
    paper's 0.92M / 1.22M parameters per block).

    Takes a (c, h, w) image; the convolutions run channels-last (faster on XLA:CPU) and the
    result is flattened in (c, h, w) order."""

    convs: tuple[eqx.nn.Conv2d, eqx.nn.Conv2d, eqx.nn.Conv2d]
    dropout: float = eqx.field(static=True)
    out_features: int = eqx.field(static=True)

    def __init__(self, image_shape: tuple[int, int, int], dropout: float, *, key: PRNGKeyArray):
        c, h, w = _check_image_shape(image_shape, 12)
        k1, k2, k3 = jr.split(key, 3)
        self.convs = (
            eqx.nn.Conv2d(c, 32, 3, key=k1),
            eqx.nn.Conv2d(32, 64, 3, key=k2),
            eqx.nn.Conv2d(64, 128, 3, key=k3),
        )
        self.dropout = float(dropout)

        def size(s: int) -> int:
            return ((s - 2) // 2 - 4) // 2

        self.out_features = 128 * size(h) * size(w)

    def __call__(self, x: Float[Array, "c h w"], *, key: PRNGKeyArray | None) -> Float[Array, " f"]:
        k1, k2, k3 = _split(key, 3)
        p = self.dropout
        h = jnp.transpose(x, (1, 2, 0))
        h = dropout(conv_pool_relu_hwc(self.convs[0], h), p, k1)
        h = dropout(jax.nn.relu(conv_hwc(self.convs[1], h)), p, k2)
        h = dropout(conv_pool_relu_hwc(self.convs[2], h), p, k3)
        return jnp.transpose(h, (2, 0, 1)).reshape(-1)


class PaperDTBlock(AbstractBackbone):
    """One NoProp-DT block û_θt(z_{t-1}, x).

    Image branch: the conv stack → FC256 → Norm. Label branch: FC256 → Norm → ReLU = h;
    h → FC256 → Norm → ReLU → FC256 → Norm, + h. Head: concat(512) → FC256 → Norm → ReLU →
    FC128 → Norm → ReLU → FC(m) logits.

    The paper's BatchNorm is replaced by LayerNorm (`norm="layer"`, stateless, so the loss stays a
    pure function of one example) or dropped (`norm="none"`).
    """

    conv: PaperConvStack
    image_fc: eqx.nn.Linear
    label_fc: tuple[eqx.nn.Linear, eqx.nn.Linear, eqx.nn.Linear]
    head: tuple[eqx.nn.Linear, eqx.nn.Linear, eqx.nn.Linear]
    norms: tuple[eqx.Module, ...]
    num_classes: int = eqx.field(static=True)
    embed_dim: int = eqx.field(static=True)
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    time_conditioned: bool = eqx.field(static=True)

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        *,
        dropout: float = 0.2,
        norm: str = "layer",
        key: PRNGKeyArray,
    ):
        if norm not in ("layer", "none"):
            raise ValueError(f"expected norm to be 'layer' or 'none', got {norm!r}")
        keys = jr.split(key, 8)
        self.conv = PaperConvStack(image_shape, dropout, key=keys[0])
        self.image_fc = eqx.nn.Linear(self.conv.out_features, 256, key=keys[1])
        self.label_fc = (
            eqx.nn.Linear(embed_dim, 256, key=keys[2]),
            eqx.nn.Linear(256, 256, key=keys[3]),
            eqx.nn.Linear(256, 256, key=keys[4]),
        )
        self.head = (
            eqx.nn.Linear(512, 256, key=keys[5]),
            eqx.nn.Linear(256, 128, key=keys[6]),
            eqx.nn.Linear(128, num_classes, key=keys[7]),
        )
        sizes = (256, 256, 256, 256, 256, 128)
        if norm == "layer":
            self.norms = tuple(eqx.nn.LayerNorm(s) for s in sizes)
        else:
            self.norms = tuple(eqx.nn.Identity() for _ in sizes)
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.image_shape = tuple(image_shape)
        self.time_conditioned = False

    def __call__(self, z, x, t=None, *, key=None):
        if t is not None:
            raise TypeError("PaperDTBlock is not time-conditioned; call it as block(z, x)")
        n = self.norms
        image = n[0](self.image_fc(self.conv(x, key=key)))
        h = jax.nn.relu(n[1](self.label_fc[0](z)))
        label = n[3](self.label_fc[2](jax.nn.relu(n[2](self.label_fc[1](h))))) + h
        out = jnp.concatenate([image, label])
        out = jax.nn.relu(n[4](self.head[0](out)))
        out = jax.nn.relu(n[5](self.head[1](out)))
        return self.head[2](out)


class PaperCTNet(AbstractBackbone):
    """The NoProp-CT/FM network û_θ(z_t, x, t) (no normalisation layers).

    Image: the conv stack → FC256 → ReLU; label: z → FC256 → ReLU; time: sinusoidal(64) →
    FC256 → ReLU; concat(768) → FC256 → ReLU → FC128 → ReLU → FC(m) logits.
    """

    conv: PaperConvStack
    image_fc: eqx.nn.Linear
    label_fc: eqx.nn.Linear
    time_embedding: SinusoidalTimeEmbedding
    time_fc: eqx.nn.Linear
    head: tuple[eqx.nn.Linear, eqx.nn.Linear, eqx.nn.Linear]
    num_classes: int = eqx.field(static=True)
    embed_dim: int = eqx.field(static=True)
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    time_conditioned: bool = eqx.field(static=True)

    def __init__(
        self,
        num_classes: int,
        embed_dim: int,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        time_embed_dim: int = 64,
        *,
        dropout: float = 0.2,
        key: PRNGKeyArray,
    ):
        keys = jr.split(key, 7)
        self.conv = PaperConvStack(image_shape, dropout, key=keys[0])
        self.image_fc = eqx.nn.Linear(self.conv.out_features, 256, key=keys[1])
        self.label_fc = eqx.nn.Linear(embed_dim, 256, key=keys[2])
        self.time_embedding = SinusoidalTimeEmbedding(time_embed_dim)
        self.time_fc = eqx.nn.Linear(time_embed_dim, 256, key=keys[3])
        self.head = (
            eqx.nn.Linear(768, 256, key=keys[4]),
            eqx.nn.Linear(256, 128, key=keys[5]),
            eqx.nn.Linear(128, num_classes, key=keys[6]),
        )
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.image_shape = tuple(image_shape)
        self.time_conditioned = True

    def __call__(self, z, x, t=None, *, key=None):
        if t is None:
            raise TypeError("PaperCTNet is time-conditioned; call it as net(z, x, t)")
        return self.decode(z, jax.nn.relu(self.image_fc(self.conv(x, key=key))), t)

    def encode(self, x: Float[Array, "c h w"]) -> Float[Array, " 256"]:
        return jax.nn.relu(self.image_fc(self.conv(x, key=None)))

    def decode(self, z, features, t=None):
        if t is None:
            raise TypeError("PaperCTNet is time-conditioned; call it as net.decode(z, features, t)")
        label = jax.nn.relu(self.label_fc(z))
        time = jax.nn.relu(self.time_fc(self.time_embedding(t)))
        out = jnp.concatenate([features, label, time])
        out = jax.nn.relu(self.head[0](out))
        out = jax.nn.relu(self.head[1](out))
        return self.head[2](out)
