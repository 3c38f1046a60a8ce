from jaxtyping import Array, ArrayLike, Float

from .._checks import check_time
from ._base import AbstractNoiseSchedule


class LinearNoiseSchedule(AbstractNoiseSchedule):
    """ᾱ linear in t: ᾱ(t) = ᾱ_min + (ᾱ_max - ᾱ_min) t."""

    alpha_bar_min: float = 1e-4
    alpha_bar_max: float = 0.9999

    def __check_init__(self):
        if not 0.0 <= self.alpha_bar_min < self.alpha_bar_max <= 1.0:
            raise ValueError(
                "expected 0 <= alpha_bar_min < alpha_bar_max <= 1, got "
                f"alpha_bar_min={self.alpha_bar_min}, alpha_bar_max={self.alpha_bar_max}"
            )

    def alpha_bar(self, t: Float[ArrayLike, ""]) -> Float[Array, ""]:
        return self.alpha_bar_min + (self.alpha_bar_max - self.alpha_bar_min) * check_time(t)
