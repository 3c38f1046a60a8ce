"""The terms of the NoProp losses, one function per term, each for ONE example.

Variants vmap these over the batch; users can combine them (and their own terms) into a custom
`loss_fn(model, batch, key) -> (loss, aux)` and hand it to `make_step` unchanged.
"""

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from .noise_schedules import AbstractNoiseSchedule


def sample_q(
    u_y: Float[Array, " dim"], alpha_bar: Float[ArrayLike, ""], *, key: PRNGKeyArray
) -> Float[Array, " dim"]:
    """z ~ q(z_t | y) = N(√ᾱ_t u_y, (1 - ᾱ_t) I). The mean is √ᾱ·u_y, not ᾱ·u_y."""
    noise = jr.normal(key, u_y.shape, u_y.dtype)
    return jnp.sqrt(alpha_bar) * u_y + jnp.sqrt(1.0 - alpha_bar) * noise


def readout_cross_entropy(logits: Float[Array, " classes"], y: Int[Array, ""]) -> Float[Array, ""]:
    """-log softmax(logits)[y]: the readout term CE(readout(z_T), y) of Eq. 8, 9 (on raw logits,
    so there is no double softmax)."""
    return jax.nn.logsumexp(logits) - logits[y]


def kl_to_standard_normal(
    u_y: Float[Array, " dim"], alpha_bar_0: Float[ArrayLike, ""]
) -> Float[Array, ""]:
    """KL(q(z_0 | y) ‖ N(0, I)) = ½[ᾱ_0 ‖u_y‖² + d(1 - ᾱ_0) - d - d log(1 - ᾱ_0)] (Eq. 8, 9)."""
    d = u_y.shape[-1]
    return 0.5 * (
        alpha_bar_0 * jnp.sum(u_y**2) + d * (1.0 - alpha_bar_0) - d - d * jnp.log1p(-alpha_bar_0)
    )


def _check_choice(name: str, value: str, choices: tuple[str, ...], meaning: str) -> str:
    if value not in choices:
        raise ValueError(f"expected {name} to be one of {choices}, got {value!r}: {meaning}")
    return value


T_SAMPLING = ("uniform", "stratified")


def check_t_sampling(t_sampling: str) -> str:
    return _check_choice(
        "t_sampling",
        t_sampling,
        T_SAMPLING,
        "'uniform' draws each example's t on its own (the paper), 'stratified' spreads the "
        "batch's t evenly",
    )


CT_WEIGHTINGS = ("snr-prime", "log-snr")
FM_Z_INPUTS = ("full", "span")


def check_fm_z_input(z_input: str) -> str:
    return _check_choice(
        "z_input",
        z_input,
        FM_Z_INPUTS,
        "'full' gives NoProp-FM's network z_t as it is (the paper), 'span' its projection onto "
        "the span of the class embeddings",
    )


def check_ct_weighting(weighting: str) -> str:
    return _check_choice(
        "weighting",
        weighting,
        CT_WEIGHTINGS,
        "'snr-prime' weights Eq. 9's denoising term by SNR'(t) (the paper), 'log-snr' by "
        "SNR'(t) / SNR(t), the same weight for every noise level on a log-SNR scale",
    )


def ct_denoising_weight(
    schedule: AbstractNoiseSchedule, t: Float[ArrayLike, ""], weighting: str = "snr-prime"
) -> Float[Array, ""]:
    """The weight of NoProp-CT's denoising term at time t. "snr-prime": SNR'(t), Eq. 9. Since
    E_t[SNR'(t) f(t)] = ∫ f dSNR over [SNR(0), SNR(1)], it weights every SNR *value* alike,
    whatever the schedule's shape between its ends: with wide ends, almost all of the weight
    lies at high SNR, where z_t already shows the label. "log-snr": SNR'(t) / SNR(t) =
    d log SNR / dt, every log-SNR value alike (for a schedule linear in γ = -log SNR, the same
    weight at every t): a departure from the paper, which spreads the weight over the noise
    levels at which the network must read the image."""
    snr_prime = schedule.snr_prime(t)
    if weighting == "snr-prime":
        return snr_prime
    return snr_prime / schedule.snr(t)


def sample_times(
    key: PRNGKeyArray, batch_size: int, t_sampling: str = "uniform"
) -> Float[Array, " batch"]:
    """Each example's t ~ U[0, 1]. "uniform": independent draws (the paper). "stratified": one
    shared offset u ~ U[0, 1) and t_i = (u + i / B) mod 1 (the low-discrepancy sampler of
    Kingma et al. 2021): every t is still U[0, 1], so the loss's expectation is unchanged,
    but the batch covers [0, 1] evenly and the estimate varies less between batches."""
    if t_sampling == "uniform":
        return jr.uniform(key, (batch_size,))
    offset = jr.uniform(key, ())
    return jnp.mod(offset + jnp.arange(batch_size) / batch_size, 1.0)


def weighted_denoising_term(
    u_hat: Float[Array, " dim"], u_y: Float[Array, " dim"], weight: Float[ArrayLike, ""]
) -> Float[Array, ""]:
    """weight · ‖û - u_y‖², the denoising term of Eq. 8 (weight = SNR(t) - SNR(t-1)) and of
    Eq. 9 (weight = SNR'(t)). The η/2 (and T) factors are applied by the variant's loss."""
    return weight * jnp.sum((u_hat - u_y) ** 2)


def flow_matching_term(
    v_hat: Float[Array, " dim"], u_y: Float[Array, " dim"], z_0: Float[Array, " dim"]
) -> Float[Array, ""]:
    """‖v_θ(z_t, x, t) - (u_y - z_0)‖², the conditional flow-matching loss (Eq. 11/13)."""
    return jnp.sum((v_hat - (u_y - z_0)) ** 2)


def expected_embedding(
    logits: Float[Array, " classes"], embedding_matrix: Float[Array, "classes dim"]
) -> Float[Array, " dim"]:
    """û = softmax(logits) · W_embed: a block's clean-label estimate (DT and CT)."""
    return jax.nn.softmax(logits) @ embedding_matrix
