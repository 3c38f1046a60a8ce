"""NoProp-CT's second sampler: the Eq. 3 recurrence of NoProp-DT on a fine time grid.

On the grid t_k = k/N (k = 0..N) of a noise schedule, with ᾱ_k = ᾱ(t_k),

    z_k = a_k û(t_{k-1}, z_{k-1}) + b_k z_{k-1} + √c_k ε_k,   ε_k ~ N(0, I),

where a_k, b_k, c_k are the coefficients of the posterior q(z_k | z_{k-1}, y) with û in place
of u_y (`posterior_coefficients`). With û exactly u_y each step draws from that posterior, so
from z_0 ~ q(z_0 | y) the chain's z_k has the marginal q(z_k | y) at every k, whatever N.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .noise_schedules import posterior_coefficients


def posterior_recurrence(
    u_hat: Callable[[Float[Array, ""], Float[Array, "batch dim"]], Float[Array, "batch dim"]],
    z0: Float[Array, "batch dim"],
    alpha_bar: Float[Array, " grid"],
    *,
    key: PRNGKeyArray | None = None,
) -> Float[Array, "batch dim"]:
    """z_N of the recurrence above, from `z0`, on the grid whose ᾱ_0..ᾱ_N is `alpha_bar`
    (N + 1 increasing values; t_k = k/N). `u_hat(t, z)` is the clean-embedding estimate at
    time t. With `key=None` no noise is added (ε_k = 0): the chain of posterior means.

    The N steps run as one `lax.scan`; step k draws its noise from `fold_in(key, k)`, so no
    N × batch × dim array of noise is ever held.
    """
    a, b, c = posterior_coefficients(alpha_bar)
    num_steps = a.shape[0]
    times = jnp.arange(num_steps, dtype=z0.dtype) / num_steps

    def step(z, inputs):
        a_k, b_k, c_k, t, k = inputs
        z_next = a_k * u_hat(t, z) + b_k * z
        if key is not None:
            z_next = z_next + jnp.sqrt(c_k) * jr.normal(jr.fold_in(key, k), z.shape, z.dtype)
        return z_next, None

    z, _ = jax.lax.scan(step, z0, (a, b, c, times, jnp.arange(num_steps)))
    return z
