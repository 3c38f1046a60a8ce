"""NoProp-DT: T independently trained denoising blocks (Eq. 3, 6, 8; Algorithm 1)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Shaped

from ._checks import check_batch, check_images
from ._embeddings import AbstractClassEmbedding, make_embedding, nearest_embedding_readout
from ._losses import (
    expected_embedding,
    kl_to_standard_normal,
    readout_cross_entropy,
    sample_q,
    weighted_denoising_term,
)
from .models import AbstractBackbone, apply_batched
from .models._factory import BackboneSpec, index_stacked, make_stacked_backbones
from .noise_schedules import (
    AbstractNoiseSchedule,
    CosineNoiseSchedule,
    alpha_bar_grid,
    posterior_coefficients,
)

STRATEGIES = ("loop", "vmap", "scan")
READOUTS = ("final", "blocks")


def default_dt_strategy(backend: str | None = None) -> str:
    """What `strategy="auto"` runs on `backend` (default: JAX's default backend): "loop" on CPU,
    "vmap" elsewhere. Measured on the paper MNIST network, batch 128, T = 10
    (`benchmarks/train_throughput.py`, ms per training step): on a 2-core Xeon loop 583-702,
    vmap 9441-10079 (a grouped convolution on XLA:CPU), scan 36494; on an NVIDIA H200 loop 6.22,
    vmap 3.84, scan 13.3. Backends other than CPU and GPU get "vmap" unmeasured."""
    backend = jax.default_backend() if backend is None else backend
    return "loop" if backend == "cpu" else "vmap"


class NoPropDT(eqx.Module):
    """NoProp-DT: T blocks û_θt(z_{t-1}, x), a class embedding W_embed, a linear readout and a
    fixed noise schedule on the grid t_k = k/T.

    `blocks` is ONE backbone whose array leaves carry a leading axis of size T (block t is
    `block(t)`). `strategy` picks how the T independent blocks run in a training step:
    "loop" (an unrolled Python loop), "vmap" (`filter_vmap` over the stacked parameters) or
    "scan" (`lax.scan`, compiled once); "auto" (default) is the fastest measured on the backend
    the step is traced for (`default_dt_strategy`: "loop" on CPU, where vmap lowers to a grouped
    convolution and runs ~14x slower; "vmap" on GPU, 1.6x faster than "loop" on an H200). All
    give the same loss and gradients. For a small training-step memory use
    `make_dt_step(optimizer, memory="low")` instead.
    """

    blocks: AbstractBackbone
    embedding: AbstractClassEmbedding
    readout: eqx.nn.Linear
    schedule: AbstractNoiseSchedule
    num_blocks: int = eqx.field(static=True)
    eta: float = eqx.field(static=True)
    strategy: str = eqx.field(static=True)

    def __init__(
        self,
        num_classes: int,
        image_shape: tuple[int, int, int],
        *,
        num_blocks: int = 10,
        backbone: BackboneSpec = "paper",
        embedding: str | AbstractClassEmbedding = "one-hot",
        embed_dim: int = 20,
        schedule: AbstractNoiseSchedule | None = None,
        eta: float = 0.1,
        strategy: str = "auto",
        blocks: AbstractBackbone | None = None,
        key: PRNGKeyArray,
    ):
        if not (isinstance(num_blocks, int) and num_blocks >= 1):
            raise ValueError(f"expected num_blocks to be a positive int, got {num_blocks!r}")
        if strategy not in (*STRATEGIES, "auto"):
            raise ValueError(
                f"expected strategy to be one of {(*STRATEGIES, 'auto')}, got {strategy!r}"
            )
        k_embed, k_blocks = jr.split(key)
        self.embedding = make_embedding(embedding, num_classes, embed_dim, key=k_embed)
        dim = self.embedding.dim
        if blocks is None:
            blocks = make_stacked_backbones(
                backbone,
                num_blocks,
                num_classes=num_classes,
                embed_dim=dim,
                image_shape=image_shape,
                key=k_blocks,
            )
        leading = {a.shape[0] for a in jax.tree.leaves(eqx.filter(blocks, eqx.is_array))}
        if leading != {num_blocks}:
            raise ValueError(
                f"expected stacked blocks with a leading axis of size num_blocks={num_blocks}, "
                f"got leading sizes {sorted(leading)}"
            )
        self.blocks = blocks
        self.readout = nearest_embedding_readout(self.embedding)
        self.schedule = CosineNoiseSchedule() if schedule is None else schedule
        self.num_blocks = num_blocks
        self.eta = eta
        self.strategy = strategy

    @property
    def num_classes(self) -> int:
        return self.embedding.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.blocks.image_shape

    def block(self, t: int) -> AbstractBackbone:
        """Block t (0-based), sliced out of the stacked parameters."""
        return index_stacked(self.blocks, t)

    def block_logits(
        self,
        z: Float[Array, "T batch dim"],
        x: Float[Array, "batch c h w"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "T batch classes"]:
        """Every block on its own input: block t sees z[t] (all T blocks in one call)."""
        batch = x.shape[0]
        keys = None if key is None else jr.split(key, (self.num_blocks, batch))

        def run(block, z_t, keys_t):
            return apply_batched(block, z_t, x, keys=keys_t)

        strategy = default_dt_strategy() if self.strategy == "auto" else self.strategy
        if strategy == "loop":
            return jnp.stack(
                [
                    run(self.block(t), z[t], None if keys is None else keys[t])
                    for t in range(self.num_blocks)
                ]
            )
        if strategy == "vmap":
            return eqx.filter_vmap(run)(self.blocks, z, keys)
        params, static = eqx.partition(self.blocks, eqx.is_array)

        def body(carry, inputs):
            p, z_t, keys_t = inputs
            return carry, run(eqx.combine(p, static), z_t, keys_t)

        return jax.lax.scan(body, None, (params, z, keys))[1]

    def loss_fn(
        self, batch: tuple[Shaped[ArrayLike, "batch c h w"], ArrayLike], key: PRNGKeyArray
    ) -> tuple[Float[Array, ""], dict[str, Array]]:
        """Eq. 8, averaged over the batch; called as `NoPropDT.loss_fn(model, batch, key)`:

            CE(readout(z_T), y) + KL(q(z_0|y) ‖ N(0, I))
              + (T/2) η mean_t[(SNR(t) - SNR(t-1)) ‖û_θt(z_{t-1}, x) - u_y‖²],

        with z_k ~ q(z_k | y) sampled independently for each block, so no gradient crosses blocks.
        `aux` holds the loss, its three terms and `denoise_per_block` (T,).
        """
        x, y = check_batch(batch, self.image_shape, self.num_classes)
        k_z, k_drop = jr.split(key)
        w_embed = self.embedding.matrix()
        u_y = w_embed[y]
        alpha_bar = alpha_bar_grid(self.schedule, self.num_blocks)
        snr = alpha_bar / (1.0 - alpha_bar)
        # z_k ~ q(z_k | y) for k = 0..T: z[:T] feed blocks 1..T, z[T] feeds the readout.
        z = jax.vmap(lambda ab, k: _sample_q_batch(u_y, ab, k))(
            alpha_bar, jr.split(k_z, self.num_blocks + 1)
        )
        logits = self.block_logits(z[:-1], x, key=k_drop)
        u_hat = jax.vmap(jax.vmap(expected_embedding, (0, None)), (0, None))(logits, w_embed)
        weights = snr[1:] - snr[:-1]
        per_block = jax.vmap(
            lambda uh, w: jnp.mean(jax.vmap(weighted_denoising_term, (0, 0, None))(uh, u_y, w))
        )(u_hat, weights)
        denoise = 0.5 * self.num_blocks * self.eta * jnp.mean(per_block)
        ce = jnp.mean(jax.vmap(readout_cross_entropy)(jax.vmap(self.readout)(z[-1]), y))
        kl = jnp.mean(jax.vmap(kl_to_standard_normal, (0, None))(u_y, alpha_bar[0]))
        loss = ce + kl + denoise
        aux = dict(loss=loss, ce=ce, kl=kl, denoise=denoise, denoise_per_block=per_block)
        return loss, aux

    def logits(
        self,
        x: Shaped[ArrayLike, "batch c h w"],
        *,
        key: PRNGKeyArray | None = None,
        readout: str = "final",
    ) -> Float[Array, "batch classes"]:
        """Inference by Eq. 3: z_0 ~ N(0, I); z_t = a_t û_θt(z_{t-1}, x) + b_t z_{t-1} + √c_t ε.
        With `key=None` the chain is deterministic (z_0 = 0, ε = 0); with a key it is the
        paper's stochastic sampler. Dropout is off either way.

        `readout` picks what the chain's class comes from:
        - "final" (default, the paper's): the linear readout of z_T;
        - "blocks": the log of the mean of the T blocks' class probabilities
          softmax(logits_t) along the same chain. Each block is a classifier trained on its own,
          so this averages T classifiers at no extra cost ("DT read-out" in the README).
        """
        if readout not in READOUTS:
            raise ValueError(f"expected readout to be one of {READOUTS}, got {readout!r}")
        z, block_logits = self.denoise_chain(x, key=key)
        if readout == "final":
            return jax.vmap(self.readout)(z)
        return jnp.log(jnp.mean(jax.nn.softmax(block_logits, axis=-1), axis=0))

    def denoise_chain(
        self, x: Shaped[ArrayLike, "batch c h w"], *, key: PRNGKeyArray | None = None
    ) -> tuple[Float[Array, "batch dim"], Float[Array, "T batch classes"]]:
        """The chain of `logits` (see there for `key`): returns z_T and every block's class
        logits along the chain (block t's on its input z_{t-1}), before any readout."""
        x = check_images(x, self.image_shape)
        a, b, c = posterior_coefficients(alpha_bar_grid(self.schedule, self.num_blocks))
        w_embed = self.embedding.matrix()
        shape = (x.shape[0], self.embedding.dim)
        if key is None:
            z, noise = jnp.zeros(shape), jnp.zeros((self.num_blocks, *shape))
        else:
            k0, k_eps = jr.split(key)
            z = jr.normal(k0, shape)
            noise = jr.normal(k_eps, (self.num_blocks, *shape))
        all_logits = []
        for t in range(self.num_blocks):
            logits = apply_batched(self.block(t), z, x)
            u_hat = jax.vmap(expected_embedding, (0, None))(logits, w_embed)
            z = a[t] * u_hat + b[t] * z + jnp.sqrt(c[t]) * noise[t]
            all_logits.append(logits)
        return z, jnp.stack(all_logits)

    def predict(
        self,
        x: Shaped[ArrayLike, "batch c h w"],
        *,
        key: PRNGKeyArray | None = None,
        readout: str = "final",
    ) -> Int[Array, " batch"]:
        """argmax of `logits` (see there for `key` and `readout`)."""
        return jnp.argmax(self.logits(x, key=key, readout=readout), axis=-1)


def _sample_q_batch(
    u_y: Float[Array, "batch dim"], alpha_bar: Float[Array, ""], key: PRNGKeyArray
) -> Float[Array, "batch dim"]:
    """`sample_q` for every example of a batch at one noise level."""
    return jax.vmap(lambda u, k: sample_q(u, alpha_bar, key=k))(u_y, jr.split(key, len(u_y)))
