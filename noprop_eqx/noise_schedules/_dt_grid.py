"""The discrete grid of NoProp-DT: t_k = k/T, k = 0..T, and the Eq. 3 posterior coefficients."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._base import AbstractNoiseSchedule


def alpha_bar_grid(schedule: AbstractNoiseSchedule, num_blocks: int) -> Float[Array, " grid"]:
    """ᾱ_k = ᾱ(k/T) for k = 0..T (index 0 is the noisiest)."""
    if not (isinstance(num_blocks, int) and num_blocks >= 1):
        raise ValueError(f"expected num_blocks to be a positive int, got {num_blocks!r}")
    return jax.vmap(schedule.alpha_bar)(jnp.linspace(0.0, 1.0, num_blocks + 1))


def snr_grid(schedule: AbstractNoiseSchedule, num_blocks: int) -> Float[Array, " grid"]:
    """SNR(k/T) = ᾱ_k / (1 - ᾱ_k) for k = 0..T."""
    alpha_bar = alpha_bar_grid(schedule, num_blocks)
    return alpha_bar / (1.0 - alpha_bar)


def alpha_grid(alpha_bar: Float[Array, " grid"]) -> Float[Array, " blocks"]:
    """α_{t-1} = ᾱ_{t-1} / ᾱ_t for t = 1..T (the paper's reversed product ᾱ_{t-1} = α_{t-1} ᾱ_t)."""
    return alpha_bar[:-1] / alpha_bar[1:]


def posterior_coefficients(
    alpha_bar: Float[Array, " grid"],
) -> tuple[Float[Array, " blocks"], Float[Array, " blocks"], Float[Array, " blocks"]]:
    """The coefficients of q(z_t | z_{t-1}, y) = N(a_t u_y + b_t z_{t-1}, c_t I), t = 1..T (Eq. 3).

        a_t = √ᾱ_t (1 - α_{t-1}) / (1 - ᾱ_{t-1})
        b_t = √α_{t-1} (1 - ᾱ_t) / (1 - ᾱ_{t-1})
        c_t = (1 - ᾱ_t)(1 - α_{t-1}) / (1 - ᾱ_{t-1})

    Entry t-1 of each returned array holds the coefficient for block t.
    """
    prev, cur = alpha_bar[:-1], alpha_bar[1:]
    alpha = alpha_grid(alpha_bar)
    a = jnp.sqrt(cur) * (1.0 - alpha) / (1.0 - prev)
    b = jnp.sqrt(alpha) * (1.0 - cur) / (1.0 - prev)
    c = (1.0 - cur) * (1.0 - alpha) / (1.0 - prev)
    return a, b, c
