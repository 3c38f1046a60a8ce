import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


class SinusoidalTimeEmbedding(eqx.Module):
    """[sin(f_i t), cos(f_i t)] with frequencies f_i spaced geometrically from 1 to
    `max_frequency` (1000 by default, the usual "t × 1000" of diffusion models)."""

    dim: int = eqx.field(static=True)
    max_frequency: float = eqx.field(static=True, default=1000.0)

    def __check_init__(self):
        if self.dim < 2 or self.dim % 2:
            raise ValueError(f"expected an even time embedding dimension >= 2, got {self.dim}")

    def __call__(self, t: Float[Array, ""]) -> Float[Array, " dim"]:
        freqs = jnp.asarray(
            np.geomspace(1.0, self.max_frequency, self.dim // 2), dtype=jnp.result_type(t)
        )
        angles = t * freqs
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)])
