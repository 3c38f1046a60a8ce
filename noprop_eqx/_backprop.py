"""The backprop baseline (Eq. 17-19): the NoProp-DT blocks chained and trained end to end."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Shaped

from ._checks import check_batch, check_images
from ._embeddings import AbstractClassEmbedding, make_embedding, nearest_embedding_readout
from ._losses import expected_embedding, readout_cross_entropy
from .models import AbstractBackbone, apply_batched
from .models._factory import BackboneSpec, index_stacked, make_stacked_backbones


class BackpropBaseline(eqx.Module):
    """T blocks of the same kind as NoProp-DT, chained with learnable tanh-gated mixing

        z_t = (1 - α_t) z_{t-1} + α_t û_θt(z_{t-1}, x),   α_t = tanh(w_t),   z_0 = 0,

    and trained end to end by backpropagation with CE(readout(z_T), y) (Eq. 17-19).
    """

    blocks: AbstractBackbone
    embedding: AbstractClassEmbedding
    readout: eqx.nn.Linear
    mixing: Float[Array, " T"]
    num_blocks: int = eqx.field(static=True)

    def __init__(
        self,
        num_classes: int,
        image_shape: tuple[int, int, int],
        *,
        num_blocks: int = 10,
        backbone: BackboneSpec = "paper",
        embedding: str | AbstractClassEmbedding = "one-hot",
        embed_dim: int = 20,
        key: PRNGKeyArray,
    ):
        k_embed, k_blocks = jr.split(key)
        self.embedding = make_embedding(embedding, num_classes, embed_dim, key=k_embed)
        self.blocks = make_stacked_backbones(
            backbone,
            num_blocks,
            num_classes=num_classes,
            embed_dim=self.embedding.dim,
            image_shape=image_shape,
            key=k_blocks,
        )
        self.readout = nearest_embedding_readout(self.embedding)
        self.mixing = jnp.full((num_blocks,), 0.5, dtype=jnp.float32)
        self.num_blocks = num_blocks

    @property
    def num_classes(self) -> int:
        return self.embedding.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.blocks.image_shape

    def block(self, t: int) -> AbstractBackbone:
        return index_stacked(self.blocks, t)

    def _forward(
        self, x: Float[Array, "batch c h w"], key: PRNGKeyArray | None
    ) -> Float[Array, "batch classes"]:
        w_embed = self.embedding.matrix()
        z = jnp.zeros((x.shape[0], self.embedding.dim))
        keys = [None] * self.num_blocks if key is None else jr.split(key, self.num_blocks)
        alphas = jnp.tanh(self.mixing)
        for t in range(self.num_blocks):
            ks = None if keys[t] is None else jr.split(keys[t], x.shape[0])
            logits = apply_batched(self.block(t), z, x, keys=ks)
            u_hat = jax.vmap(expected_embedding, (0, None))(logits, w_embed)
            z = (1.0 - alphas[t]) * z + alphas[t] * u_hat
        return jax.vmap(self.readout)(z)

    def loss_fn(
        self, batch: tuple[Shaped[ArrayLike, "batch c h w"], ArrayLike], key: PRNGKeyArray
    ) -> tuple[Float[Array, ""], dict[str, Array]]:
        """CE(readout(z_T), y), averaged over the batch, with dropout on."""
        x, y = check_batch(batch, self.image_shape, self.num_classes)
        ce = jnp.mean(jax.vmap(readout_cross_entropy)(self._forward(x, key), y))
        return ce, dict(loss=ce, ce=ce)

    def logits(
        self, x: Shaped[ArrayLike, "batch c h w"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "batch classes"]:
        """readout(z_T), dropout off (`key` is accepted for a uniform API and ignored)."""
        del key
        return self._forward(check_images(x, self.image_shape), None)

    def predict(
        self, x: Shaped[ArrayLike, "batch c h w"], *, key: PRNGKeyArray | None = None
    ) -> Int[Array, " batch"]:
        return jnp.argmax(self.logits(x, key=key), axis=-1)
