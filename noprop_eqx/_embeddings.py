"""Class embeddings u_y: rows of W_embed (m classes × d dims)."""

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray


class AbstractClassEmbedding(eqx.Module):
    """W_embed, the m × d matrix whose row y is the class embedding u_y."""

    num_classes: eqx.AbstractVar[int]
    dim: eqx.AbstractVar[int]
    trainable: ClassVar[bool]

    @abc.abstractmethod
    def matrix(self) -> Float[Array, "classes dim"]:
        """W_embed."""

    def __call__(self, y: Int[Array, ""]) -> Float[Array, " dim"]:
        return self.matrix()[y]


class OneHotEmbedding(AbstractClassEmbedding):
    """Fixed one-hot embeddings, d = m. Holds no parameters."""

    num_classes: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    trainable: ClassVar[bool] = False

    def __init__(self, num_classes: int):
        _check_positive("num_classes", num_classes)
        self.num_classes = num_classes
        self.dim = num_classes

    def matrix(self) -> Float[Array, "classes dim"]:
        return jnp.eye(self.num_classes)


class LearnedEmbedding(AbstractClassEmbedding):
    """Trainable embeddings of any dimension: orthogonal rows when d >= m, else N(0, 1/d)."""

    weight: Float[Array, "classes dim"]
    num_classes: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    trainable: ClassVar[bool] = True

    def __init__(self, num_classes: int, dim: int = 20, *, key: PRNGKeyArray):
        _check_positive("num_classes", num_classes)
        _check_positive("dim", dim)
        self.num_classes = num_classes
        self.dim = dim
        if dim >= num_classes:
            self.weight = jax.nn.initializers.orthogonal()(key, (num_classes, dim))
        else:
            self.weight = jr.normal(key, (num_classes, dim)) / np.sqrt(dim)

    def matrix(self) -> Float[Array, "classes dim"]:
        return self.weight


PROTOTYPE_SCALES = ("raw", "one-hot")


class PrototypeEmbedding(AbstractClassEmbedding):
    """Trainable embeddings in image space (d = C·H·W), initialised to one image per class.

    Each class's prototype is its medoid: the training image with the smallest median distance
    to the other images of its class, computed on the first `max_per_class` images of the class.

    `scale` sets the size of the initial prototypes (their directions and relative sizes are
    the medoids' either way):

    - `"raw"`: the normalised images themselves. On MNIST their norms are 21–33, so the
      noised embeddings q(z_t | y) carry hundreds of times the signal-to-noise ratio of one-hot
      embeddings, and every block after the first few sees an almost clean label.
    - `"one-hot"`: one factor for the whole matrix, chosen so that the mean squared distance
      between two prototypes is 2, as between two one-hot vectors. The blocks then see the same
      noise levels as with one-hot embeddings.

    `fixed=True` keeps the prototypes as built: `matrix()` stops their gradient and
    `paper_optimizer` leaves them out of the weight decay, so training never changes them.
    """

    weight: Float[Array, "classes dim"]
    num_classes: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    fixed: bool = eqx.field(static=True)

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        *,
        max_per_class: int = 1000,
        scale: str = "raw",
        fixed: bool = False,
    ):
        _check_positive("num_classes", num_classes)
        if scale not in PROTOTYPE_SCALES:
            raise ValueError(f"expected scale to be one of {PROTOTYPE_SCALES}, got {scale!r}")
        images = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
        labels = np.asarray(labels)
        if labels.shape != (len(images),):
            raise ValueError(f"expected labels of shape ({len(images)},), got {labels.shape}")
        weight = np.stack(
            [_medoid(images[labels == c][:max_per_class], c) for c in range(num_classes)]
        )
        if scale == "one-hot":
            weight = weight * one_hot_scale_factor(weight)
        self.weight = jnp.asarray(weight)
        self.num_classes = num_classes
        self.dim = images.shape[1]
        self.fixed = bool(fixed)

    @property
    def trainable(self) -> bool:  # type: ignore[override]
        return not self.fixed

    def matrix(self) -> Float[Array, "classes dim"]:
        return jax.lax.stop_gradient(self.weight) if self.fixed else self.weight


def is_fixed_embedding(embedding: object) -> bool:
    """Whether `embedding` is an array-holding embedding that training must leave unchanged."""
    return isinstance(embedding, PrototypeEmbedding) and embedding.fixed


def one_hot_scale_factor(weight: np.ndarray) -> float:
    """The factor that makes the mean squared distance between distinct rows of `weight` equal
    2, the squared distance between two one-hot vectors."""
    weight = np.asarray(weight, dtype=np.float64)
    m = len(weight)
    if m < 2:
        raise ValueError(f"expected at least 2 prototypes to compare, got {m}")
    sq = (weight**2).sum(axis=1)
    dist2 = sq[:, None] + sq[None, :] - 2.0 * weight @ weight.T
    mean = (dist2.sum() - np.trace(dist2)) / (m * (m - 1))
    if not mean > 0:
        raise ValueError("cannot scale prototypes that are all the same image")
    return float(np.sqrt(2.0 / mean))


def _medoid(points: np.ndarray, label: int) -> np.ndarray:
    if len(points) == 0:
        raise ValueError(f"cannot build a prototype for class {label}: it has no training images")
    sq = (points**2).sum(axis=1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * points @ points.T, 0.0))
    np.fill_diagonal(dist, np.nan)
    median = np.nanmedian(dist, axis=1) if len(points) > 1 else np.zeros(1)
    return points[int(np.argmin(median))]


def _check_positive(name: str, value: object) -> None:
    if not (isinstance(value, int) and value > 0):
        raise ValueError(f"expected {name} to be a positive int, got {value!r}")


EMBEDDINGS = ("one-hot", "learned")


def make_embedding(
    spec: "str | AbstractClassEmbedding", num_classes: int, embed_dim: int, *, key: PRNGKeyArray
) -> AbstractClassEmbedding:
    """An embedding from a name ("one-hot", "learned") or an instance, checked against the model.

    A `PrototypeEmbedding` needs training images, so it is built by the caller and passed in.
    """
    if isinstance(spec, AbstractClassEmbedding):
        embedding = spec
    elif spec == "one-hot":
        embedding = OneHotEmbedding(num_classes)
    elif spec == "learned":
        embedding = LearnedEmbedding(num_classes, embed_dim, key=key)
    else:
        raise ValueError(
            f"expected embedding to be one of {EMBEDDINGS} or an AbstractClassEmbedding "
            f"(e.g. PrototypeEmbedding(images, labels, num_classes)), got {spec!r}"
        )
    if embedding.num_classes != num_classes:
        raise ValueError(
            f"embedding has {embedding.num_classes} classes but the model expects {num_classes}"
        )
    return embedding


def nearest_embedding_readout(
    embedding: AbstractClassEmbedding, *, margin: float = 5.0
) -> eqx.nn.Linear:
    """A linear readout initialised as the nearest-embedding classifier.

    logits_k = s (⟨u_k, z⟩ - ½‖u_k‖²) = -(s/2)‖z - u_k‖² + const, with s chosen so that the
    closest pair of classes is `margin` nats apart at z = u_y. The readout stays trainable; this
    only gives it a sensible start (a randomly initialised readout needs thousands of Adam steps
    to grow logits large enough for a confident cross-entropy).
    """
    w = np.asarray(embedding.matrix(), dtype=np.float64)
    sq = (w**2).sum(axis=1)
    dist = sq[:, None] + sq[None, :] - 2.0 * w @ w.T
    np.fill_diagonal(dist, np.inf)
    scale = 2.0 * margin / max(float(dist.min()), 1e-6)
    readout = eqx.nn.Linear(embedding.dim, embedding.num_classes, key=jr.key(0))
    return eqx.tree_at(
        lambda r: (r.weight, r.bias),
        readout,
        (
            jnp.asarray(scale * w, dtype=jnp.float32),
            jnp.asarray(-0.5 * scale * sq, dtype=jnp.float32),
        ),
    )
