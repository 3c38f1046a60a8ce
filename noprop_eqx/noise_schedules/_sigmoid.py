import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_time
from ._base import AbstractNoiseSchedule


class SigmoidNoiseSchedule(AbstractNoiseSchedule):
    """Log-SNR linear in t: log SNR(t) = gamma (2t - 1), so ᾱ(t) = sigmoid(gamma (2t - 1)).

    ᾱ runs from sigmoid(-gamma) at t = 0 to sigmoid(gamma) at t = 1.
    """

    gamma: float = 9.0

    def __check_init__(self):
        if not self.gamma > 0:
            raise ValueError(f"expected gamma > 0, got gamma={self.gamma}")

    def alpha_bar(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        return jax.nn.sigmoid(self.gamma * (2.0 * check_time(t) - 1.0))

    def snr(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        return jnp.exp(self.gamma * (2.0 * jnp.asarray(t) - 1.0))
