"""Variance-preserving noise schedules (t = 0 noise, t = 1 clean) and the DT grid helpers."""

from ._base import AbstractNoiseSchedule as AbstractNoiseSchedule
from ._cosine import CosineNoiseSchedule as CosineNoiseSchedule
from ._dt_grid import (
    alpha_bar_grid as alpha_bar_grid,
    alpha_grid as alpha_grid,
    posterior_coefficients as posterior_coefficients,
    snr_grid as snr_grid,
)
from ._learned import LearnedNoiseSchedule as LearnedNoiseSchedule
from ._linear import LinearNoiseSchedule as LinearNoiseSchedule
from ._sigmoid import SigmoidNoiseSchedule as SigmoidNoiseSchedule

__all__ = [
    "AbstractNoiseSchedule",
    "CosineNoiseSchedule",
    "LearnedNoiseSchedule",
    "LinearNoiseSchedule",
    "SigmoidNoiseSchedule",
    "alpha_bar_grid",
    "alpha_grid",
    "posterior_coefficients",
    "snr_grid",
]
