import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import check_time
from ._base import AbstractNoiseSchedule


class LearnedNoiseSchedule(AbstractNoiseSchedule):
    """A trainable monotone schedule (Kingma et al. 2021, "Variational Diffusion Models").

    SNR(t) = exp(-γ(t)), ᾱ(t) = sigmoid(-γ(t)), with γ decreasing in t:

        γ(t) = γ0 + (γ1 - γ0)(1 - γ̄(t)),   γ̄(t) = (γ̃(t) - γ̃(0)) / (γ̃(1) - γ̃(0)),

    where γ̃ is a small network with positive weights (so it is increasing in t), and
    γ1 = γ0 + exp(log_gamma_gap) > γ0. Monotonicity holds for *any* parameter values, which
    is what lets an optimiser train it freely. This is the NoProp-CT default.

    It starts at γ0 = -2, γ1 = 2 (SNR from e^-2 to e^2); training widens it (on MNIST to about
    -2.9 and 5.9 after 5 epochs). A wider start, such as -5 and 5, puts most of Eq. 9's weight
    SNR'(t) near t = 1, where z_t shows the label, and CT then learns to read the image slowly:
    see "CT's schedule" in the method's decisions.

    `fixed=True` holds the schedule where it starts: its parameters get no gradient
    (`lax.stop_gradient`), and `paper_optimizer` leaves them out of the weight decay, so
    training never moves them. A departure from the paper, which learns the schedule.
    """

    gamma_0: Float[Array, ""]
    log_gamma_gap: Float[Array, ""]
    w1: Float[Array, ""]
    b1: Float[Array, ""]
    w2: Float[Array, " hidden"]
    b2: Float[Array, " hidden"]
    w3: Float[Array, " hidden"]
    fixed: bool = eqx.field(static=True)

    def __init__(
        self,
        gamma_0: float = -2.0,
        gamma_1: float = 2.0,
        hidden: int = 64,
        *,
        fixed: bool = False,
        key: PRNGKeyArray,
    ):
        if not gamma_0 < gamma_1:
            raise ValueError(
                f"expected gamma_0 < gamma_1, got gamma_0={gamma_0}, gamma_1={gamma_1}"
            )
        k2, k3 = jr.split(key)
        self.gamma_0 = jnp.asarray(gamma_0, dtype=float)
        self.log_gamma_gap = jnp.log(jnp.asarray(gamma_1 - gamma_0, dtype=float))
        # Raw parameters; the network uses softplus(raw) so its weights are always positive.
        self.w1 = jnp.asarray(0.5413, dtype=float)  # softplus(0.5413) = 1
        self.b1 = jnp.asarray(0.0, dtype=float)
        self.w2 = jr.normal(k2, (hidden,))
        self.b2 = jnp.zeros((hidden,))
        self.w3 = jr.normal(k3, (hidden,)) - 3.0
        self.fixed = bool(fixed)

    def _param(self, value: Array) -> Array:
        return jax.lax.stop_gradient(value) if self.fixed else value

    @property
    def gamma_1(self) -> Float[Array, ""]:
        return self._param(self.gamma_0) + jnp.exp(self._param(self.log_gamma_gap))

    def _gamma_tilde(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """γ̃(t): increasing in t because every weight is positive."""
        w1, b1, w2, b2, w3 = map(self._param, (self.w1, self.b1, self.w2, self.b2, self.w3))
        h = jax.nn.softplus(w1) * t + b1
        hidden = jax.nn.sigmoid(jax.nn.softplus(w2) * h + b2)
        return h + jnp.dot(jax.nn.softplus(w3), hidden)

    def gamma(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        """γ(t) = -log SNR(t), decreasing from γ1 at t = 0 to γ0 at t = 1."""
        t = check_time(jnp.asarray(t, dtype=float))
        g0, g1, gt = self._gamma_tilde(0.0), self._gamma_tilde(1.0), self._gamma_tilde(t)
        gamma_bar = (gt - g0) / (g1 - g0)
        gamma_0 = self._param(self.gamma_0)
        return gamma_0 + (self.gamma_1 - gamma_0) * (1.0 - gamma_bar)

    def alpha_bar(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        return jax.nn.sigmoid(-self.gamma(t))

    def snr(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        return jnp.exp(-self.gamma(t))
