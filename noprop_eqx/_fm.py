"""NoProp-FM: flow matching on the class embedding (Eq. 10-13; Algorithm 3)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Shaped

from ._checks import check_batch, check_time
from ._continuous import AbstractContinuousNoProp
from ._embeddings import AbstractClassEmbedding, make_embedding, nearest_embedding_readout
from ._losses import (
    check_fm_z_input,
    check_t_sampling,
    flow_matching_term,
    readout_cross_entropy,
    sample_times,
)
from .models import AbstractBackbone, apply_batched, decode_batched
from .models._factory import BackboneSpec, make_backbone


class NoPropFM(AbstractContinuousNoProp):
    """NoProp-FM: a velocity v_θ(z_t, x, t) = logits · W_embed transporting N(0, I) to u_y along
    z_t = t u_y + (1 - t) z_0 (+ σ ε). Predicts the class whose embedding is nearest to z_1.
    The readout is used only by the anchor term when the embedding is trainable.
    `t_sampling`: "uniform" (the paper) or "stratified" times, as for `NoPropCT`.

    `z_input` is what the network sees of z: "full" (the paper) or "span", its projection onto
    the span of the class embeddings (the rows of W_embed). The projection loses nothing the
    velocity depends on: z_0 ~ N(0, I) (and σ ε) are isotropic, so the part of z_t outside the
    span, (1 - t) z_0⊥ + σ ε⊥, is independent of u_y and of the span part of z_0, the only
    parts of u_y - z_0 that v = logits · W_embed can express. It matters when d > m (learned
    embeddings with d > m, prototypes: with d = 3072, 3062 input dimensions of pure noise),
    and it makes the input at inference match training: v never moves z⊥, so on the ODE from
    z_0 ~ N(0, I) the network would otherwise see z_0⊥ unshrunk at every t, and from z_0 = 0
    none at all. When d ≤ m (one-hot, or learned with d ≤ m) the span is all of R^d and "span"
    equals "full". A trainable W_embed gets gradient through the projection too.
    """

    net: AbstractBackbone
    embedding: AbstractClassEmbedding
    readout: eqx.nn.Linear
    sigma: float = eqx.field(static=True)
    t_sampling: str = eqx.field(static=True)
    z_input: str = eqx.field(static=True)

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
        z_input: str = "full",
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
        self.z_input = check_fm_z_input(z_input)

    def network_input(
        self, z: Float[Array, "batch dim"], w_embed: Float[Array, "classes dim"]
    ) -> Float[Array, "batch dim"]:
        """z as the network sees it: z itself, or its projection onto the rows' span."""
        if self.z_input == "full":
            return z
        return span_projection(z, w_embed)

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
        z_in = self.network_input(z_t, w_embed)
        logits = apply_batched(self.net, z_in, x, t, keys=jr.split(k_drop, batch_size))
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
        w_embed = self.embedding.matrix()
        return decode_batched(self.net, self.network_input(z, w_embed), features, t) @ w_embed

    def logits(
        self, x: Shaped[ArrayLike, "batch c h w"], **solve_kwargs
    ) -> Float[Array, "batch classes"]:
        """-‖z_1 - u_k‖² for each class k: the argmax is the nearest class embedding."""
        z1 = self.solve(x, **solve_kwargs).z1
        w_embed = self.embedding.matrix()
        return -jnp.sum((z1[:, None, :] - w_embed[None]) ** 2, axis=-1)


def span_projection(
    z: Float[Array, "batch dim"], w_embed: Float[Array, "classes dim"]
) -> Float[Array, "batch dim"]:
    """Each row of z projected onto the span of the rows of `w_embed`, z Wᵀ (W Wᵀ)⁻¹ W for
    independent rows, computed as z Qᵀ Q from orthonormal rows Q spanning W's (see
    `orthonormal_rows`). With d ≤ m rows of d dimensions the span is all of R^d (for
    independent rows) and z is returned as it is."""
    classes, dim = w_embed.shape
    if dim <= classes:
        return z
    q = orthonormal_rows(w_embed)
    z32 = z.astype(jnp.float32)
    return ((z32 @ q.T) @ q).astype(z.dtype)


def orthonormal_rows(w: Float[Array, "rows dim"]) -> Float[Array, "rows dim"]:
    """Orthonormal rows spanning the rows of w, in float32: classical Gram-Schmidt with each
    row orthogonalised twice ("twice is enough": orthogonal to float32 precision for any w not
    numerically rank-deficient, as a Householder QR is; its accuracy follows the condition
    number of w, not of w wᵀ). A row that lies, to float32 precision, in the span of the rows
    before it adds a zero row, so the projection z Qᵀ Q is onto the span of w whatever its rank.

    Matrix products and a loop only: no LAPACK call inside a jitted training step, where on
    CPU its thread pool competes with XLA's for the cores (a QR there made a CIFAR FM step with
    3,072-dimensional prototypes 1.6× slower)."""
    w32 = w.astype(jnp.float32)
    tiny = 16 * jnp.finfo(jnp.float32).eps

    def orthogonalise(i, q):
        v = w32[i]
        for _ in range(2):
            v = v - (q @ v) @ q  # rows of q not yet set are zero and remove nothing
        norm = jnp.linalg.norm(v)
        independent = norm > tiny * jnp.linalg.norm(w32[i])
        row = jnp.where(independent, v / jnp.where(independent, norm, 1.0), 0.0)
        return q.at[i].set(row)

    return jax.lax.fori_loop(0, w.shape[0], orthogonalise, jnp.zeros_like(w32))
