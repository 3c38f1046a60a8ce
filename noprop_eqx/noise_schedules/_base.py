"""The abstract variance-preserving noise schedule."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


class AbstractNoiseSchedule(eqx.Module):
    """A variance-preserving noising process q(z_t | y) = N(sqrt(ᾱ_t) u_y, (1 - ᾱ_t) I).

    Convention throughout the library: **t = 0 is pure noise and t = 1 is clean**, so ᾱ(t)
    increases with t. Subclasses implement `alpha_bar` for a scalar t in [0, 1]; everything
    else (SNR, its derivative) follows and may be overridden for numerical stability.
    """

    @abc.abstractmethod
    def alpha_bar(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """ᾱ(t), the signal variance at time t (scalar t in [0, 1])."""

    def snr(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """SNR(t) = ᾱ(t) / (1 - ᾱ(t))."""
        alpha_bar = self.alpha_bar(t)
        return alpha_bar / (1.0 - alpha_bar)

    def snr_prime(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """dSNR/dt by automatic differentiation (never finite differences)."""
        return jax.grad(self.snr)(jnp.asarray(t, dtype=float))

    def sqrt_alpha_bar_and_derivative(
        self, t: Float[ArrayLike, ""]
    ) -> tuple[Float[Array, ""], Float[Array, ""], Float[Array, ""], Float[Array, ""]]:
        """Returns (√ᾱ, d√ᾱ/dt, √(1-ᾱ), d√(1-ᾱ)/dt) at t, as used by the probability-flow ODE."""
        t = jnp.asarray(t, dtype=float)
        alpha_bar, d_alpha_bar = jax.jvp(self.alpha_bar, (t,), (jnp.ones_like(t),))
        signal = jnp.sqrt(alpha_bar)
        noise = jnp.sqrt(1.0 - alpha_bar)
        return signal, 0.5 * d_alpha_bar / signal, noise, -0.5 * d_alpha_bar / noise
