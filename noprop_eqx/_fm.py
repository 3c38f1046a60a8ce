"""NoProp-FM: flow matching on the class embedding (Eq. 10-13; Algorithm 3)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Shaped

from ._checks import check_batch, check_time
from ._continuous import AbstractContinuousNoProp
from ._embeddings import AbstractClassEmbedding, make_embedding, nearest_embedding_readout
from ._losses import check_t_sampling, flow_matching_term, readout_cross_entropy, sample_times
from .models import AbstractBackbone, apply_batched, decode_batched
from .models._factory import BackboneSpec, make_backbone


class NoPropFM(AbstractContinuousNoProp):
    """NoProp-FM: a velocity v_θ(z_t, x, t) = logits · W_embed transporting N(0, I) to u_y along
    z_t = t u_y + (1 - t) z_0 (+ σ ε). Predicts the class whose embedding is nearest to z_1.
    The readout is used only by the anchor term when the embedding is trainable.
    `t_sampling`: "uniform" (the paper) or "stratified" times, as for `NoPropCT`."""

    net: AbstractBackbone
    embedding: AbstractClassEmbedding
    readout: eqx.nn.Linear
    sigma: float = eqx.field(static=True)
    t_sampling: str = eqx.field(static=True)

    def __init__(
        self,
        num_classes: int,
        image_shape: tuple[int, int, int],
        *,
        backbone: BackboneSpec = "paper",
        embedding: str | AbstractClassEmbedding = "one-hot",
        embed_dim: int = 20,
        sigma: float = 0.0,
        t_sampling: str = "uniform",
        key: PRNGKeyArray,
    ):
        if sigma < 0:
            raise ValueError(f"expected sigma >= 0, got {sigma}")
        k_embed, k_net = jr.split(key)
        self.embedding = make_embedding(embedding, num_classes, embed_dim, key=k_embed)
        self.net = make_backbone(
            backbone,
            num_classes=num_classes,
            embed_dim=self.embedding.dim,
            image_shape=image_shape,
            time_conditioned=True,
            key=k_net,
        )
        self.readout = nearest_embedding_readout(self.embedding)
        self.sigma = sigma
        self.t_sampling = check_t_sampling(t_sampling)

    def loss_fn(
        self, batch: tuple[Shaped[ArrayLike, "batch c h w"], ArrayLike], key: PRNGKeyArray
    ) -> tuple[Float[Array, ""], dict[str, Array]]:
        """Eq. 11/13, averaged over the batch; called as `NoPropFM.loss_fn(model, batch, key)`:

            ‖v_θ(z_t, x, t) - (u_y - z_0)‖²,  z_t = t u_y + (1 - t) z_0 + σ ε,  t ~ U[0, 1],

        plus, when the embedding is trainable, the anchor CE(readout(z̃_1), y) with
        z̃_1 = z_t + (1 - t) v_θ.
        """
        x, y = check_batch(batch, self.image_shape, self.num_classes)
        batch_size = x.shape[0]
        k_t, k_z0, k_eps, k_drop = jr.split(key, 4)
        w_embed = self.embedding.matrix()
        u_y = w_embed[y]
        t = sample_times(k_t, batch_size, self.t_sampling)
        z_0 = jr.normal(k_z0, u_y.shape)
        z_t = t[:, None] * u_y + (1.0 - t[:, None]) * z_0
        if self.sigma > 0:
            z_t = z_t + self.sigma * jr.normal(k_eps, u_y.shape)
        logits = apply_batched(self.net, z_t, x, t, keys=jr.split(k_drop, batch_size))
        v_hat = logits @ w_embed
        flow = jnp.mean(jax.vmap(flow_matching_term)(v_hat, u_y, z_0))
        aux = dict(flow=flow)
        loss = flow
        if self.embedding.trainable:
            z_1 = z_t + (1.0 - t[:, None]) * v_hat
            ce = jnp.mean(jax.vmap(readout_cross_entropy)(jax.vmap(self.readout)(z_1), y))
            loss = loss + ce
            aux["ce"] = ce
        aux["loss"] = loss
        return loss, aux

    def feature_vector_field(
        self, t: Float[ArrayLike, ""], z: Float[Array, "batch dim"], features: Array
    ) -> Float[Array, "batch dim"]:
        """dz/dt = v_θ(z, x, t) = logits · W_embed, with args = `encode_batched(self.net, x)`
        (`vector_field` takes the images)."""
        t = check_time(t)
        return decode_batched(self.net, z, features, t) @ self.embedding.matrix()

    def logits(
        self, x: Shaped[ArrayLike, "batch c h w"], **solve_kwargs
    ) -> Float[Array, "batch classes"]:
        """-‖z_1 - u_k‖² for each class k: the argmax is the nearest class embedding."""
        z1 = self.solve(x, **solve_kwargs).z1
        w_embed = self.embedding.matrix()
        return -jnp.sum((z1[:, None, :] - w_embed[None]) ** 2, axis=-1)
