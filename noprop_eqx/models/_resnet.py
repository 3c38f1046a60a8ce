"""A ResNet image branch (He et al. 2016) wrapped as a NoProp backbone."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._base import AbstractBackbone
from ._batch_norm import BatchNorm
from ._layers import dropout
from ._paper import _check_image_shape
from ._time_embedding import SinusoidalTimeEmbedding

# depth -> (bottleneck?, blocks per stage): He et al. 2016, Table 1. Bottleneck blocks widen
# their output by `_EXPANSION`.
_LAYOUTS = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
}
_EXPANSION = 4
_MAX_GROUPS = 32
NORMS = ("group", "batch")

Norm = eqx.nn.GroupNorm | BatchNorm


def _norm(channels: int, kind: str) -> Norm:
    # GroupNorm: a pure function of one example. BatchNorm: the batch's statistics in training,
    # stored population statistics at evaluation (`BatchNorm`, `recalibrate_batch_norm`).
    if kind == "batch":
        return BatchNorm(channels)
    return eqx.nn.GroupNorm(min(_MAX_GROUPS, channels), channels)


def _normalise(norm: Norm, x: Array, training: bool, stats: list | None) -> Array:
    """`norm(x)`; a BatchNorm's statistics are appended to `stats` when it is a list."""
    if isinstance(norm, eqx.nn.GroupNorm):
        return norm(x)
    out, used = norm(x, training=training)
    if stats is not None:
        stats.append(used)
    return out


def _stage_channels(depth: int, width: int) -> list[int]:
    """Every channel count a ResNet of `depth` and first-stage `width` normalises."""
    bottleneck, counts = _LAYOUTS[depth]
    mids = [width * 2**stage for stage in range(len(counts))]
    return mids + [m * _EXPANSION for m in mids] if bottleneck else mids


class _Residual(eqx.Module):
    convs: tuple[eqx.nn.Conv2d, ...]
    norms: tuple[Norm, ...]
    shortcut: eqx.nn.Conv2d | None
    shortcut_norm: Norm | None

    def __init__(
        self,
        c_in: int,
        c_mid: int,
        c_out: int,
        stride: int,
        bottleneck: bool,
        norm: str = "group",
        *,
        key,
    ):
        keys = jr.split(key, 4)
        if bottleneck:
            shapes = [(c_in, c_mid, 1, 1, 0), (c_mid, c_mid, 3, stride, 1), (c_mid, c_out, 1, 1, 0)]
        else:
            shapes = [(c_in, c_out, 3, stride, 1), (c_out, c_out, 3, 1, 1)]
        self.convs = tuple(
            eqx.nn.Conv2d(i, o, k, stride=s, padding=p, use_bias=False, key=kk)
            for (i, o, k, s, p), kk in zip(shapes, keys, strict=False)
        )
        self.norms = tuple(_norm(o, norm) for (_, o, _, _, _) in shapes)
        if stride != 1 or c_in != c_out:
            self.shortcut = eqx.nn.Conv2d(
                c_in, c_out, 1, stride=stride, use_bias=False, key=keys[3]
            )
            self.shortcut_norm = _norm(c_out, norm)
        else:
            self.shortcut = self.shortcut_norm = None

    def __call__(
        self, x: Float[Array, "c h w"], training: bool = False, stats: list | None = None
    ) -> Float[Array, "c2 h2 w2"]:
        out = x
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            out = _normalise(norm, conv(out), training, stats)
            if i < len(self.convs) - 1:
                out = jax.nn.relu(out)
        skip = x
        if self.shortcut is not None:
            skip = _normalise(self.shortcut_norm, self.shortcut(x), training, stats)
        return jax.nn.relu(out + skip)

    def norm_layers(self) -> list[Norm]:
        """The block's normalisation layers in the order a forward pass applies them."""
        return [*self.norms, *([] if self.shortcut_norm is None else [self.shortcut_norm])]


class ResNetWrapper(AbstractBackbone):
    """A ResNet-18/34/50/101/152 image branch (He et al. 2016) feeding the NoProp head.

    Image branch: a 3×3 stride-1 stem without max-pool (for 32×32 images), four stages of
    residual blocks, each after the first halving the resolution and doubling the channels, then
    global average pooling. Depths 18 and 34 use basic blocks (two 3×3 convolutions), 50, 101 and
    152 bottleneck blocks (1×1, 3×3, 1×1, output widened 4×); blocks per stage (2, 2, 2, 2),
    (3, 4, 6, 3), (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3). `width` is the first stage's
    channel count (64 in the standard ResNets).

    `norm="group"` (default): GroupNorm (32 groups), so the network stays a pure function of one
    example. `norm="batch"`: `BatchNorm`, as in the standard ResNets: in training (a dropout key
    given) the batch's statistics, over the `apply_batched` axis; at evaluation (no key, and
    `encode`) population statistics, which `recalibrate_batch_norm` sets from training images
    (`noprop-eqx train --norm batch` does it after every epoch). Only the image branch is
    normalised; it sees the clean image alone, never z or t.

    Head: image → FC(256), z → FC(256), optional sinusoidal time → FC(256); sum → ReLU →
    dropout → FC(256) → ReLU → FC(m) logits. `time_embed_dim=0` gives a DT block f(z, x);
    `time_embed_dim > 0` a CT/FM network f(z, x, t).

    Parameters at width 64, 10 classes, one-hot labels, 3×32×32 images (`parameter_counts`;
    the image branch is stem plus residual blocks, the standard CIFAR ResNet less its classifier):

    | depth | image branch | DT block (z, x) | CT/FM net (z, x, t), time_embed_dim=64 |
    |------:|-------------:|----------------:|---------------------------------------:|
    |    18 |   11,168,832 |      11,371,338 |                             11,387,978 |
    |    34 |   21,276,992 |      21,479,498 |                             21,496,138 |
    |    50 |   23,500,352 |      24,096,074 |                             24,112,714 |
    |   101 |   42,492,480 |      43,088,202 |                             43,104,842 |
    |   152 |   58,136,128 |      58,731,850 |                             58,748,490 |

    A NoProp-DT model stacks `num_blocks` such blocks (10 by default): ten ResNet-18 blocks hold
    about 114M parameters.
    """

    stem: eqx.nn.Conv2d
    stem_norm: Norm
    stages: tuple[_Residual, ...]
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
    norm: str = eqx.field(static=True)

    def __init__(
        self,
        num_classes: int,
        depth: int = 18,
        width: int = 64,
        time_embed_dim: int = 0,
        *,
        embed_dim: int | None = None,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        dropout: float = 0.2,
        norm: str = "group",
        key: PRNGKeyArray,
    ):
        if isinstance(depth, bool) or not isinstance(depth, int) or depth not in _LAYOUTS:
            raise ValueError(f"expected depth in {sorted(_LAYOUTS)}, got {depth!r}")
        if isinstance(width, bool) or not (isinstance(width, int) and width >= 1):
            raise ValueError(f"expected width to be a positive int, got {width!r}")
        if norm not in NORMS:
            raise ValueError(f"expected norm to be one of {NORMS}, got {norm!r}")
        bad = [ch for ch in _stage_channels(depth, width) if ch > _MAX_GROUPS and ch % _MAX_GROUPS]
        if norm == "group" and bad:
            raise ValueError(
                f"expected a width whose stage channel counts are each <= {_MAX_GROUPS} or a "
                f"multiple of {_MAX_GROUPS} (GroupNorm's {_MAX_GROUPS} groups), e.g. 8, 16, 32 or "
                f"64; got width={width}, giving {bad} (or norm='batch', which has no groups)"
            )
        c, h, w = _check_image_shape(image_shape, 8)
        embed_dim = num_classes if embed_dim is None else embed_dim
        bottleneck, counts = _LAYOUTS[depth]
        expansion = _EXPANSION if bottleneck else 1
        keys = iter(jr.split(key, 8 + sum(counts)))
        self.stem = eqx.nn.Conv2d(c, width, 3, padding=1, use_bias=False, key=next(keys))
        self.stem_norm = _norm(width, norm)
        stages, c_in = [], width
        for stage, count in enumerate(counts):
            c_mid = width * 2**stage
            for i in range(count):
                stride = 2 if (stage > 0 and i == 0) else 1
                c_out = c_mid * expansion
                stages.append(
                    _Residual(c_in, c_mid, c_out, stride, bottleneck, norm, key=next(keys))
                )
                c_in = c_out
        self.stages = tuple(stages)
        self.image_fc = eqx.nn.Linear(c_in, 256, key=next(keys))
        self.label_fc = eqx.nn.Linear(embed_dim, 256, key=next(keys))
        if time_embed_dim:
            self.time_embedding = SinusoidalTimeEmbedding(time_embed_dim)
            self.time_fc = eqx.nn.Linear(time_embed_dim, 256, key=next(keys))
        else:
            self.time_embedding = self.time_fc = None
        self.hidden = eqx.nn.Linear(256, 256, key=next(keys))
        self.out = eqx.nn.Linear(256, num_classes, key=next(keys))
        self.dropout = float(dropout)
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.image_shape = (c, h, w)
        self.time_conditioned = bool(time_embed_dim)
        self.norm = norm

    def __call__(self, z, x, t=None, *, key=None):
        if self.time_conditioned != (t is not None):
            raise TypeError(
                f"this ResNetWrapper has time_conditioned={self.time_conditioned}: call it as "
                + ("f(z, x, t)" if self.time_conditioned else "f(z, x)")
            )
        # Training (a dropout key) normalises a BatchNorm branch with the batch's statistics.
        features = self._features(x, training=key is not None, stats=None)
        return self._head(z, features, t, key)

    def encode(self, x: Float[Array, "c h w"]) -> Float[Array, " 256"]:
        return self._features(x, training=False, stats=None)

    def _features(self, x, training: bool, stats: list | None):
        x = jax.nn.relu(_normalise(self.stem_norm, self.stem(x), training, stats))
        for block in self.stages:
            x = block(x, training, stats)
        return self.image_fc(jnp.mean(x, axis=(1, 2)))

    def norm_layers(self) -> list[Norm]:
        """Every normalisation layer of the image branch, in the order a forward pass applies
        them."""
        return [self.stem_norm, *(n for block in self.stages for n in block.norm_layers())]

    def batch_norm_statistics(self, x: Float[Array, "c h w"]) -> list[tuple[Array, Array]]:
        """The (mean, variance) every BatchNorm layer normalises with in training, in
        `norm_layers` order, for the batch of the `BATCH_AXIS` vmap axis this image is part of
        (`recalibrate_batch_norm` averages them over batches)."""
        stats: list = []
        self._features(x, training=True, stats=stats)
        return stats

    def decode(self, z, features, t=None):
        return self._head(z, features, t, None)

    def _head(self, z, features, t, key):
        h = features + self.label_fc(z)
        if self.time_fc is not None:
            h = h + self.time_fc(self.time_embedding(jnp.asarray(t)))
        h = dropout(jax.nn.relu(h), self.dropout, key)
        return self.out(jax.nn.relu(self.hidden(h)))


def parameter_counts(
    depth: int,
    width: int = 64,
    time_embed_dim: int = 0,
    *,
    num_classes: int = 10,
    embed_dim: int | None = None,
    image_shape: tuple[int, int, int] = (3, 32, 32),
) -> tuple[int, int]:
    """(image branch, whole network) parameter counts of `ResNetWrapper(num_classes, depth,
    width, time_embed_dim, ...)`. The image branch is the ResNet proper: stem and residual
    blocks, without the head's layers. Built with `eqx.filter_eval_shape`, so nothing is
    allocated."""
    net = eqx.filter_eval_shape(
        ResNetWrapper,
        num_classes,
        depth,
        width,
        time_embed_dim,
        embed_dim=embed_dim,
        image_shape=image_shape,
        key=jr.key(0),
    )

    def count(tree) -> int:
        leaves = jax.tree.leaves(tree)
        return sum(math.prod(a.shape) for a in leaves if isinstance(a, jax.ShapeDtypeStruct))

    return count((net.stem, net.stem_norm, net.stages)), count(net)
