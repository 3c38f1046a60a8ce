import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from noprop_eqx.noise_schedules import (
    CosineNoiseSchedule,
    LearnedNoiseSchedule,
    LinearNoiseSchedule,
    SigmoidNoiseSchedule,
    alpha_bar_grid,
    posterior_coefficients,
)

GRID = jnp.linspace(0.0, 1.0, 201)


def _schedules(key):
    return [
        CosineNoiseSchedule(),
        LinearNoiseSchedule(),
        SigmoidNoiseSchedule(gamma=6.0),
        LearnedNoiseSchedule(key=key),  # γ from 2 to -2: ᾱ from 0.12 to 0.88
        LearnedNoiseSchedule(gamma_0=-5.0, gamma_1=5.0, key=key),
    ]


def test_endpoints():
    cosine = CosineNoiseSchedule(alpha_bar_min=1e-4, alpha_bar_max=0.9999)
    assert float(cosine.alpha_bar(0.0)) == pytest.approx(1e-4)
    assert float(cosine.alpha_bar(1.0)) == pytest.approx(0.9999)
    # Unclipped interior value against the formula written out by hand.
    s = 0.008
    expected = (
        math.cos(0.5 * math.pi * (0.5 + s) / (1 + s)) ** 2
        / math.cos(0.5 * math.pi * s / (1 + s)) ** 2
    )
    assert float(cosine.alpha_bar(0.5)) == pytest.approx(expected, rel=1e-5)
    linear = LinearNoiseSchedule(alpha_bar_min=0.01, alpha_bar_max=0.99)
    assert float(linear.alpha_bar(0.0)) == pytest.approx(0.01)
    assert float(linear.alpha_bar(1.0)) == pytest.approx(0.99)
    sigmoid = SigmoidNoiseSchedule(gamma=6.0)
    assert float(sigmoid.alpha_bar(0.0)) == pytest.approx(1 / (1 + math.exp(6.0)), rel=1e-5)
    assert float(sigmoid.alpha_bar(1.0)) == pytest.approx(1 / (1 + math.exp(-6.0)), rel=1e-5)
    learned = LearnedNoiseSchedule(gamma_0=-4.0, gamma_1=6.0, key=jr.key(0))
    assert float(learned.gamma(0.0)) == pytest.approx(6.0, abs=1e-5)
    assert float(learned.gamma(1.0)) == pytest.approx(-4.0, abs=1e-5)
    assert float(learned.snr(1.0)) == pytest.approx(math.exp(4.0), rel=1e-4)


def test_monotone(getkey):
    for schedule in _schedules(getkey()):
        values = np.asarray(jax.vmap(schedule.alpha_bar)(GRID))
        assert np.all(np.diff(values) >= 0), type(schedule).__name__
        assert values[-1] > values[0] + 0.75, type(schedule).__name__


def test_learned_monotone_after_perturbation(getkey):
    schedule = LearnedNoiseSchedule(key=getkey())
    params, static = eqx.partition(schedule, eqx.is_inexact_array)
    for _ in range(10):
        leaves, treedef = jax.tree.flatten(params)
        keys = jr.split(getkey(), len(leaves))
        noisy = [p + 3.0 * jr.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
        perturbed = eqx.combine(jax.tree.unflatten(treedef, noisy), static)
        gammas = np.asarray(jax.vmap(perturbed.gamma)(GRID))
        assert np.all(np.diff(gammas) <= 1e-5)
        assert gammas[0] > gammas[-1]


def test_snr_prime_matches_finite_differences(getkey):
    ts = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    h = 1e-3
    for schedule in _schedules(getkey()):
        for t in ts:
            exact = float(schedule.snr_prime(t))
            fd = (float(schedule.snr(t + h)) - float(schedule.snr(t - h))) / (2 * h)
            assert exact == pytest.approx(fd, rel=2e-2, abs=1e-4), (type(schedule).__name__, t)


def test_sigmoid_snr_prime_closed_form():
    schedule = SigmoidNoiseSchedule(gamma=3.0)
    for t in (0.2, 0.5, 0.8):
        expected = 6.0 * math.exp(3.0 * (2 * t - 1))
        assert float(schedule.snr_prime(t)) == pytest.approx(expected, rel=1e-4)


def test_posterior_coefficients_match_gaussian_conditioning():
    """q(z_t | z_{t-1}, y) from the joint Gaussian of (z_t, z_{t-1}) given y, by matrix algebra."""
    alpha_bar = np.asarray(alpha_bar_grid(CosineNoiseSchedule(), 10), dtype=np.float64)
    a, b, c = (
        np.asarray(v, dtype=np.float64) for v in posterior_coefficients(jnp.asarray(alpha_bar))
    )
    for t in range(1, 11):
        ab_t, ab_prev = alpha_bar[t], alpha_bar[t - 1]
        alpha = ab_prev / ab_t
        # z_t = √ᾱ_t u + √(1-ᾱ_t) e1 ;  z_{t-1} = √α z_t + √(1-α) e2  (per dimension, u = 1).
        mixing = np.array(
            [
                [math.sqrt(1 - ab_t), 0.0],
                [math.sqrt(alpha) * math.sqrt(1 - ab_t), math.sqrt(1 - alpha)],
            ]
        )
        mean = np.array([math.sqrt(ab_t), math.sqrt(alpha * ab_t)])
        cov = mixing @ mixing.T
        gain = cov[0, 1] / cov[1, 1]
        # E[z_t | z_{t-1}] = mean_0 + gain (z_{t-1} - mean_1): a = mean_0 - gain mean_1, b = gain
        assert b[t - 1] == pytest.approx(gain, rel=1e-4)
        assert a[t - 1] == pytest.approx(mean[0] - gain * mean[1], rel=1e-4, abs=1e-6)
        assert c[t - 1] == pytest.approx(cov[0, 0] - gain * cov[0, 1], rel=1e-3, abs=1e-7)


def test_alpha_bar_grid_checks_num_blocks():
    with pytest.raises(ValueError, match="expected num_blocks to be a positive int, got 0"):
        alpha_bar_grid(CosineNoiseSchedule(), 0)


def test_time_outside_unit_interval_raises(getkey):
    for schedule in _schedules(getkey()):
        with pytest.raises(ValueError, match=r"expected t in \[0, 1\], got 1.5"):
            schedule.alpha_bar(1.5)


def test_bad_schedule_parameters():
    with pytest.raises(ValueError, match="alpha_bar_min < alpha_bar_max"):
        CosineNoiseSchedule(alpha_bar_min=0.5, alpha_bar_max=0.1)
    with pytest.raises(ValueError, match="gamma_0 < gamma_1"):
        LearnedNoiseSchedule(gamma_0=3.0, gamma_1=1.0, key=jr.key(0))
