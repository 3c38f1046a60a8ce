import math

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._checks import check_time
from ._base import AbstractNoiseSchedule


class CosineNoiseSchedule(AbstractNoiseSchedule):
    """The cosine schedule (Nichol & Dhariwal 2021) in the t = 0 noise / t = 1 clean convention.

    ᾱ(t) = cos²((π/2)(1 - t + s)/(1 + s)) / cos²((π/2) s/(1 + s)), clipped to
    [alpha_bar_min, alpha_bar_max]. The clip keeps SNR finite at t = 1 (where the unclipped ᾱ
    is exactly 1). This is the NoProp-DT default.
    """

    offset: float = 0.008
    alpha_bar_min: float = 1e-4
    alpha_bar_max: float = 0.9999

    def __check_init__(self):
        if not 0.0 <= self.alpha_bar_min < self.alpha_bar_max <= 1.0:
            raise ValueError(
                "expected 0 <= alpha_bar_min < alpha_bar_max <= 1, got "
                f"alpha_bar_min={self.alpha_bar_min}, alpha_bar_max={self.alpha_bar_max}"
            )

    def alpha_bar(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        s = self.offset
        angle = 0.5 * math.pi * (1.0 - check_time(t) + s) / (1.0 + s)
        norm = math.cos(0.5 * math.pi * s / (1.0 + s)) ** 2
        return jnp.clip(jnp.cos(angle) ** 2 / norm, self.alpha_bar_min, self.alpha_bar_max)
