"""NoProp-CT: one time-conditioned network and a learned noise schedule (Eq. 9; Algorithm 2)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Shaped

from ._checks import check_batch, check_images, check_time
from ._continuous import AbstractContinuousNoProp
from ._embeddings import AbstractClassEmbedding, make_embedding, nearest_embedding_readout
from ._losses import (
    check_ct_weighting,
    check_t_sampling,
    ct_denoising_weight,
    expected_embedding,
    kl_to_standard_normal,
    readout_cross_entropy,
    sample_q,
    sample_times,
    weighted_denoising_term,
)
from ._recurrence import posterior_recurrence
from .models import AbstractBackbone, apply_batched, decode_batched, encode_batched
from .models._factory import BackboneSpec, make_backbone
from .noise_schedules import AbstractNoiseSchedule, LearnedNoiseSchedule, alpha_bar_grid

SAMPLERS = ("ode", "recurrence")


class NoPropCT(AbstractContinuousNoProp):
    """NoProp-CT: û_θ(z_t, x, t), a class embedding, a linear readout and a (by default
    learned) noise schedule. Inference integrates the probability-flow ODE with Diffrax
    (`solve`), or runs NoProp-DT's Eq. 3 recurrence on a fine time grid (`recurrence`): pick
    with `logits(..., sampler=...)`.

    `t_sampling`: how a batch's times are drawn for Eq. 9, "uniform" (independent, the paper)
    or "stratified" (spread evenly; see `sample_times`). `weighting`: the denoising term's
    weight, "snr-prime" (SNR'(t), Eq. 9, the paper) or "log-snr" (SNR'(t) / SNR(t), a
    departure; see `ct_denoising_weight`). The default schedule is a `LearnedNoiseSchedule`
    started at γ = -2 and 2."""

    net: AbstractBackbone
    embedding: AbstractClassEmbedding
    readout: eqx.nn.Linear
    schedule: AbstractNoiseSchedule
    eta: float = eqx.field(static=True)
    t_sampling: str = eqx.field(static=True)
    weighting: str = eqx.field(static=True)

    def __init__(
        self,
        num_classes: int,
        image_shape: tuple[int, int, int],
        *,
        backbone: BackboneSpec = "paper",
        embedding: str | AbstractClassEmbedding = "one-hot",
        embed_dim: int = 20,
        schedule: AbstractNoiseSchedule | None = None,
        eta: float = 1.0,
        t_sampling: str = "uniform",
        weighting: str = "snr-prime",
        key: PRNGKeyArray,
    ):
        k_embed, k_net, k_schedule = jr.split(key, 3)
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
        self.schedule = LearnedNoiseSchedule(key=k_schedule) if schedule is None else schedule
        self.eta = eta
        self.t_sampling = check_t_sampling(t_sampling)
        self.weighting = check_ct_weighting(weighting)

    def loss_fn(
        self, batch: tuple[Shaped[ArrayLike, "batch c h w"], ArrayLike], key: PRNGKeyArray
    ) -> tuple[Float[Array, ""], dict[str, Array]]:
        """Eq. 9, averaged over the batch; called as `NoPropCT.loss_fn(model, batch, key)`:

            CE(readout(z_1), y) + KL(q(z_0|y) ‖ N(0, I))
              + (η/2) E_{t~U[0,1]}[SNR'(t) ‖û_θ(z_t, x, t) - u_y‖²],

        with t drawn per example and SNR' from JAX differentiation of the schedule. With
        `weighting="log-snr"`, SNR'(t) / SNR(t) in place of SNR'(t).
        """
        x, y = check_batch(batch, self.image_shape, self.num_classes)
        batch_size = x.shape[0]
        k_t, k_z, k_z1, k_drop = jr.split(key, 4)
        w_embed = self.embedding.matrix()
        u_y = w_embed[y]
        t = sample_times(k_t, batch_size, self.t_sampling)
        alpha_bar = jax.vmap(self.schedule.alpha_bar)(t)
        weight = jax.vmap(lambda ti: ct_denoising_weight(self.schedule, ti, self.weighting))(t)
        z_t = jax.vmap(lambda u, ab, k: sample_q(u, ab, key=k))(
            u_y, alpha_bar, jr.split(k_z, batch_size)
        )
        logits = apply_batched(self.net, z_t, x, t, keys=jr.split(k_drop, batch_size))
        u_hat = jax.vmap(expected_embedding, (0, None))(logits, w_embed)
        denoise = 0.5 * self.eta * jnp.mean(jax.vmap(weighted_denoising_term)(u_hat, u_y, weight))
        alpha_bar_1 = self.schedule.alpha_bar(1.0)
        z_1 = jax.vmap(lambda u, k: sample_q(u, alpha_bar_1, key=k))(
            u_y, jr.split(k_z1, batch_size)
        )
        ce = jnp.mean(jax.vmap(readout_cross_entropy)(jax.vmap(self.readout)(z_1), y))
        kl = jnp.mean(jax.vmap(kl_to_standard_normal, (0, None))(u_y, self.schedule.alpha_bar(0.0)))
        loss = ce + kl + denoise
        return loss, dict(loss=loss, ce=ce, kl=kl, denoise=denoise)

    def feature_vector_field(
        self, t: Float[ArrayLike, ""], z: Float[Array, "batch dim"], features: Array
    ) -> Float[Array, "batch dim"]:
        """The probability-flow (DDIM-form) ODE of q, with û as the clean-label estimate:

            ε̂ = (z - √ᾱ_t û) / √(1 - ᾱ_t),   dz/dt = (d√ᾱ_t/dt) û + (d√(1 - ᾱ_t)/dt) ε̂,

        with args = `encode_batched(self.net, x)` (`vector_field` takes the images)."""
        t = check_time(t)
        signal, d_signal, noise, d_noise = self.schedule.sqrt_alpha_bar_and_derivative(t)
        w_embed = self.embedding.matrix()
        logits = decode_batched(self.net, z, features, t)
        u_hat = jax.vmap(expected_embedding, (0, None))(logits, w_embed)
        eps_hat = (z - signal * u_hat) / noise
        return d_signal * u_hat + d_noise * eps_hat

    def recurrence(
        self,
        x: Shaped[ArrayLike, "batch c h w"],
        *,
        key: PRNGKeyArray | None = None,
        num_steps: int = 1000,
    ) -> Float[Array, "batch dim"]:
        """z_1 by the second sampler: Eq. 3 on the grid t_k = k/`num_steps`,

            z_k = a_k û_θ(z_{k-1}, x, t_{k-1}) + b_k z_{k-1} + √c_k ε_k,

        with the posterior coefficients of this model's schedule (see `posterior_recurrence`).
        With a key, z_0 ~ N(0, I) and ε_k ~ N(0, I): a stochastic read-out, like the ODE from
        a random start. With `key=None`, z_0 = 0 and ε_k = 0. One network evaluation a step;
        the image branch runs once."""
        if not (isinstance(num_steps, int) and not isinstance(num_steps, bool) and num_steps >= 1):
            raise ValueError(f"expected num_steps to be a positive int, got {num_steps!r}")
        x = check_images(x, self.image_shape)
        features = encode_batched(self.net, x)
        w_embed = self.embedding.matrix()
        shape = (x.shape[0], self.embedding.dim)

        def u_hat(t, z):
            logits = decode_batched(self.net, z, features, t)
            return jax.vmap(expected_embedding, (0, None))(logits, w_embed)

        if key is None:
            z0, k_eps = jnp.zeros(shape), None
        else:
            k0, k_eps = jr.split(key)
            z0 = jr.normal(k0, shape)
        grid = alpha_bar_grid(self.schedule, num_steps)
        return posterior_recurrence(u_hat, z0, grid, key=k_eps)

    def logits(
        self, x: Shaped[ArrayLike, "batch c h w"], *, sampler: str = "ode", **solve_kwargs
    ) -> Float[Array, "batch classes"]:
        """readout(z_1). `sampler="ode"` (default): z_1 from `solve(x, **solve_kwargs)`.
        `sampler="recurrence"`: z_1 from `recurrence(x, key=..., num_steps=...)`, which takes
        those two keywords only."""
        if sampler == "ode":
            z1 = self.solve(x, **solve_kwargs).z1
        elif sampler == "recurrence":
            unknown = sorted(set(solve_kwargs) - {"key", "num_steps"})
            if unknown:
                raise TypeError(
                    f"sampler='recurrence' takes the keywords key and num_steps only, got "
                    f"{unknown}: the solver keywords belong to sampler='ode'"
                )
            z1 = self.recurrence(x, **solve_kwargs)
        else:
            raise ValueError(f"expected sampler to be one of {SAMPLERS}, got {sampler!r}")
        return jax.vmap(self.readout)(z1)
