"""NoProp-CT inference and schedule derivatives against closed forms written out here.

The probability-flow ODE (NOPROP.md, `NoPropCT.vector_field`), with s(t) = √ᾱ_t and
n(t) = √(1 - ᾱ_t):

    ε̂ = (z - s û) / n,   dz/dt = s' û + n' ε̂.

If û is exactly u (the clean embedding of the true class, for every z and t), the solution is

    z(t) = s(t) u + n(t) ε_0,   ε_0 = (z(0) - s(0) u) / n(0)   (a constant vector).

Derivation: put ε(t) = (z(t) - s(t) u) / n(t), so z = s u + n ε and dz/dt = s' u + n' ε + n ε'.
The ODE says dz/dt = s' u + n' ε, hence n ε' = 0, and since n > 0 (ᾱ < 1 on [0, 1]) ε is
constant: ε(t) = ε(0) = ε_0. So z(1) = √ᾱ_1 u + √(1 - ᾱ_1) ε_0; from z(0) = 0 that is
(√ᾱ_1 - √(1 - ᾱ_1) √ᾱ_0 / √(1 - ᾱ_0)) u. (The error e = z - s u - n ε_0 of a numerical solution
obeys de/dt = (n'/n) e with n' < 0: errors decay, so the solvers' local errors do not pile up.)
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import noprop_eqx as npx
from noprop_eqx.models import AbstractBackbone
from noprop_eqx.noise_schedules import (
    AbstractNoiseSchedule,
    CosineNoiseSchedule,
    LearnedNoiseSchedule,
    LinearNoiseSchedule,
    SigmoidNoiseSchedule,
)

SHAPE, M, D, B = (1, 4, 4), 4, 5, 4
LABELS = np.array([2, 0, 3, 1])


class _Oracle(AbstractBackbone):
    """Logits 1e4 · onehot(y), with the true class y written in pixel (0, 0, 0) of the image:
    softmax(logits) is exactly onehot(y) in float32 (e^-1e4 = 0), so û = u_y for all z, t."""

    num_classes: int = eqx.field(static=True)
    embed_dim: int = eqx.field(static=True)
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    time_conditioned: bool = eqx.field(static=True)

    def __init__(self, key=None):
        self.num_classes, self.embed_dim, self.image_shape = M, D, SHAPE
        self.time_conditioned = True

    def __call__(self, z, x, t=None, *, key=None):
        label = jnp.round(x[0, 0, 0]).astype(jnp.int32)
        return 1e4 * (jnp.arange(M) == label).astype(z.dtype)


def _images():
    x = np.random.default_rng(0).normal(size=(B, *SHAPE)).astype(np.float32)
    x[:, 0, 0, 0] = LABELS
    return jnp.asarray(x)


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def _cosine_alpha_bar(t, s=0.008, lo=1e-4, hi=0.9999):
    value = (
        math.cos(0.5 * math.pi * (1 - t + s) / (1 + s)) ** 2
        / math.cos(0.5 * math.pi * s / (1 + s)) ** 2
    )
    return min(max(value, lo), hi)


def _endpoints(schedule):
    """(ᾱ_0, ᾱ_1) from each schedule's formula, written out."""
    if isinstance(schedule, SigmoidNoiseSchedule):  # ᾱ = σ(γ(2t - 1))
        return _sigmoid(-schedule.gamma), _sigmoid(schedule.gamma)
    if isinstance(schedule, CosineNoiseSchedule):
        return _cosine_alpha_bar(0.0), _cosine_alpha_bar(1.0)
    # Learned: γ(0) = γ1 = γ0 + exp(log_gap), γ(1) = γ0 (γ̄ runs from 0 to 1); ᾱ = σ(-γ).
    g0 = float(schedule.gamma_0)
    g1 = g0 + math.exp(float(schedule.log_gamma_gap))
    return _sigmoid(-g1), _sigmoid(-g0)


def _closed_form_z1(schedule, u, z0):
    ab0, ab1 = _endpoints(schedule)
    eps0 = (z0 - math.sqrt(ab0) * u) / math.sqrt(1 - ab0)
    return math.sqrt(ab1) * u + math.sqrt(1 - ab1) * eps0


SCHEDULES = {
    "sigmoid": lambda: SigmoidNoiseSchedule(gamma=6.0),
    "cosine": lambda: CosineNoiseSchedule(),
    "learned": lambda: LearnedNoiseSchedule(key=jr.key(3)),
}


@pytest.fixture(scope="module", params=list(SCHEDULES))
def oracle_ct(request):
    model = npx.NoPropCT(
        M,
        SHAPE,
        backbone=_Oracle,
        embedding="learned",
        embed_dim=D,
        schedule=SCHEDULES[request.param](),
        key=jr.key(0),
    )
    return request.param, model


def test_ode_solution_matches_the_closed_form(oracle_ct):
    _, model = oracle_ct
    x = _images()
    u = np.asarray(model.embedding.matrix(), dtype=np.float64)[LABELS]
    z0 = np.random.default_rng(1).normal(size=(B, D))
    # Adaptive Tsit5 at rtol = atol = 1e-7: errors decay along the flow (module docstring), so
    # z(1) is good to about the controller's tolerance plus float32 rounding. Measured: <= 2e-7
    # for the sigmoid and learned schedules, 7e-6 for the cosine one (its clips at ᾱ = 1e-4 and
    # 0.9999 are kinks in the field, which the step controller crosses less accurately).
    # 5e-5 is well above those and far below any mistake in the field (s'û and n'ε̂ are O(1)).
    adaptive = dict(solver=diffrax.Tsit5(), stepsize_controller=diffrax.PIDController(1e-7, 1e-7))
    # One solve of a doubled batch: rows 0..B-1 start from z0 = 0, rows B..2B-1 from random z0.
    z0_both = jnp.asarray(np.concatenate([np.zeros((B, D)), z0]), jnp.float32)
    z1 = npx.integrate(model.vector_field, z0_both, jnp.concatenate([x, x]), **adaptive).z1
    z1 = np.asarray(z1, np.float64)
    np.testing.assert_allclose(z1[:B], _closed_form_z1(model.schedule, u, 0.0), atol=5e-5)
    np.testing.assert_allclose(z1[B:], _closed_form_z1(model.schedule, u, z0), atol=5e-5)
    # `solve` with its defaults (z0 = 0; Heun, second order, 20 steps). Measured errors:
    # 1.0e-3, 3.3e-3, 1.0e-3 (sigmoid, cosine, learned); 5e-5, 2.3e-4, 5e-5 with 80 steps.
    z1 = np.asarray(model.solve(x).z1, np.float64)
    np.testing.assert_allclose(z1, _closed_form_z1(model.schedule, u, 0.0), atol=1e-2)


# ---------------------------------------------------------------------------------------------
# sqrt_alpha_bar_and_derivative: (√ᾱ, d√ᾱ/dt, √(1 - ᾱ), d√(1 - ᾱ)/dt).


def _learned_alpha_bar_fn(schedule):
    """ᾱ(t) of a LearnedNoiseSchedule written out in float64 numpy from its parameters."""
    p = {k: np.asarray(getattr(schedule, k), np.float64) for k in ("w1", "b1", "w2", "b2", "w3")}
    g0 = float(schedule.gamma_0)
    g1 = g0 + math.exp(float(schedule.log_gamma_gap))
    softplus = lambda v: np.log1p(np.exp(v))  # noqa: E731

    def gamma_tilde(t):
        h = softplus(p["w1"]) * t + p["b1"]
        hidden = 1.0 / (1.0 + np.exp(-(softplus(p["w2"]) * h + p["b2"])))
        return h + softplus(p["w3"]) @ hidden

    def alpha_bar(t):
        gamma_bar = (gamma_tilde(t) - gamma_tilde(0.0)) / (gamma_tilde(1.0) - gamma_tilde(0.0))
        return _sigmoid(-(g0 + (g1 - g0) * (1.0 - gamma_bar)))

    return alpha_bar


def _four(alpha_bar, t, h=1e-5):
    """The four values from ᾱ by central differences in float64."""
    ab = alpha_bar(t)
    d_signal = (math.sqrt(alpha_bar(t + h)) - math.sqrt(alpha_bar(t - h))) / (2 * h)
    d_noise = (math.sqrt(1 - alpha_bar(t + h)) - math.sqrt(1 - alpha_bar(t - h))) / (2 * h)
    return np.array([math.sqrt(ab), d_signal, math.sqrt(1 - ab), d_noise])


@eqx.filter_jit
def _library_all(schedule, ts):
    return jnp.stack(jax.vmap(schedule.sqrt_alpha_bar_and_derivative)(ts), axis=-1)


def _library(schedule, ts):
    """sqrt_alpha_bar_and_derivative at each t of `ts`: rows (√ᾱ, d√ᾱ/dt, √(1-ᾱ), d√(1-ᾱ)/dt)."""
    return np.asarray(_library_all(schedule, jnp.asarray(ts, jnp.float32)), np.float64)


TIMES = (0.05, 0.3, 0.5, 0.77, 0.95)


def test_sqrt_alpha_bar_and_derivative_closed_forms():
    # Sigmoid: ᾱ = σ(γ(2t - 1)), dᾱ/dt = 2γ ᾱ(1 - ᾱ), so d√ᾱ/dt = γ √ᾱ (1 - ᾱ) and
    # d√(1 - ᾱ)/dt = -γ ᾱ √(1 - ᾱ).
    gamma = 3.0
    closed = []
    for t in TIMES:
        ab = _sigmoid(gamma * (2 * t - 1))
        closed.append(
            [
                math.sqrt(ab),
                gamma * math.sqrt(ab) * (1 - ab),
                math.sqrt(1 - ab),
                -gamma * ab * math.sqrt(1 - ab),
            ]
        )
        fd = _four(lambda v: _sigmoid(gamma * (2 * v - 1)), t)
        np.testing.assert_allclose(fd, closed[-1], rtol=1e-7)  # the closed form itself
    sigmoid = SigmoidNoiseSchedule(gamma=gamma)
    np.testing.assert_allclose(_library(sigmoid, TIMES), closed, rtol=1e-4)

    # Cosine, inside the clip: √ᾱ = cos θ / cos θ_s with θ = (π/2)(1 - t + s)/(1 + s), so
    # d√ᾱ/dt = (π/2)/(1 + s) · sin θ / cos θ_s and d√(1 - ᾱ)/dt = -(√ᾱ/√(1 - ᾱ)) d√ᾱ/dt.
    # At t = 0.001 the clip holds ᾱ at 1e-4 (the unclipped value is ~2.4e-6): ᾱ is flat there.
    s = 0.008
    closed = []
    for t in TIMES:
        theta = 0.5 * math.pi * (1 - t + s) / (1 + s)
        norm = math.cos(0.5 * math.pi * s / (1 + s))
        signal, d_signal = math.cos(theta) / norm, 0.5 * math.pi / (1 + s) * math.sin(theta) / norm
        noise = math.sqrt(1 - signal**2)
        closed.append([signal, d_signal, noise, -signal / noise * d_signal])
        np.testing.assert_allclose(_four(_cosine_alpha_bar, t), closed[-1], rtol=1e-6)
    closed.append([1e-2, 0.0, math.sqrt(1 - 1e-4), 0.0])
    got = _library(CosineNoiseSchedule(), (*TIMES, 0.001))
    np.testing.assert_allclose(got, closed, rtol=1e-4, atol=1e-12)

    # Linear: ᾱ = a + (b - a) t, d√ᾱ/dt = (b - a)/(2√ᾱ), d√(1 - ᾱ)/dt = -(b - a)/(2√(1 - ᾱ)).
    closed = []
    for t in TIMES:
        ab = 0.01 + 0.98 * t
        closed.append(
            [math.sqrt(ab), 0.49 / math.sqrt(ab), math.sqrt(1 - ab), -0.49 / math.sqrt(1 - ab)]
        )
    linear = LinearNoiseSchedule(alpha_bar_min=0.01, alpha_bar_max=0.99)
    np.testing.assert_allclose(_library(linear, TIMES), closed, rtol=1e-4)


def test_sqrt_alpha_bar_and_derivative_learned_matches_finite_differences():
    """Against central differences (h = 1e-5, float64) of the learned ᾱ written out in numpy;
    float32 autodiff through the normalised network is good to ~1e-5 relative."""
    for seed in (0, 1):
        schedule = LearnedNoiseSchedule(key=jr.key(seed))
        alpha_bar = _learned_alpha_bar_fn(schedule)
        expected = [_four(alpha_bar, t) for t in TIMES]
        np.testing.assert_allclose(_library(schedule, TIMES), expected, rtol=2e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The learned schedule trains through NoPropCT.loss_fn and stays monotone.


class _TinyTimeNet(AbstractBackbone):
    """logits = W [z; x; t] + b: a small time-conditioned network (fast to compile)."""

    linear: eqx.nn.Linear
    num_classes: int = eqx.field(static=True)
    embed_dim: int = eqx.field(static=True)
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    time_conditioned: bool = eqx.field(static=True)

    def __init__(self, key):
        self.linear = eqx.nn.Linear(M + math.prod(SHAPE) + 1, M, key=key)
        self.num_classes, self.embed_dim, self.image_shape = M, M, SHAPE
        self.time_conditioned = True

    def __call__(self, z, x, t=None, *, key=None):
        return self.linear(jnp.concatenate([z, x.reshape(-1), jnp.reshape(t, (1,))]))


GRID = np.linspace(0.0, 1.0, 257)


@eqx.filter_jit
def _gammas(schedule, ts):
    return jax.vmap(schedule.gamma)(ts)


def _check_monotone(schedule):
    gammas = np.asarray(_gammas(schedule, jnp.asarray(GRID, jnp.float32)), np.float64)
    alpha_bar = 1.0 / (1.0 + np.exp(gammas))  # ᾱ = σ(-γ)
    assert np.all(np.diff(gammas) <= 1e-5), np.diff(gammas).max()
    assert np.all(np.diff(alpha_bar) >= -1e-7)
    g0 = float(schedule.gamma_0)
    g1 = g0 + math.exp(float(schedule.log_gamma_gap))
    assert gammas[0] == pytest.approx(g1, abs=1e-4) and gammas[-1] == pytest.approx(g0, abs=1e-4)


def test_learned_schedule_gets_a_gradient_and_stays_monotone():
    """Every parameter of the learned schedule gets a non-zero gradient from one
    NoPropCT.loss_fn evaluation, and after a few paper-optimiser steps (lr 0.05, so that the
    schedule moves a lot) γ is still decreasing (ᾱ increasing) from γ1 at t = 0 to γ0 at t = 1."""
    model = npx.NoPropCT(M, SHAPE, backbone=_TinyTimeNet, key=jr.key(0))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, *SHAPE)), jnp.float32)
    y = jnp.asarray(rng.integers(0, M, size=32), jnp.int32)
    optimizer = npx.paper_optimizer(model, learning_rate=0.05)

    @eqx.filter_jit
    def step(model, opt_state, key):
        # make_step's update, also returning the gradient
        grads = eqx.filter_grad(lambda m: npx.NoPropCT.loss_fn(m, (x, y), key)[0])(model)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, grads

    _check_monotone(model.schedule)
    before = jax.tree.map(np.array, eqx.filter(model.schedule, eqx.is_inexact_array))
    opt_state = npx.init_optimizer_state(model, optimizer)
    for i in range(5):
        model, opt_state, grads = step(model, opt_state, jr.key(10 + i))
        for name in ("gamma_0", "log_gamma_gap", "w1", "b1", "w2", "b2", "w3"):
            assert np.abs(np.asarray(getattr(grads.schedule, name))).max() > 1e-6, (i, name)
    after = eqx.filter(model.schedule, eqx.is_inexact_array)
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), after, before)
    assert min(jax.tree.leaves(moved)) > 1e-3, moved
    _check_monotone(model.schedule)


# ---------------------------------------------------------------------------------------------
# The second sampler: Eq. 3 on the grid t_k = k/N (`NoPropCT.recurrence`).
#
# With û exactly u (the oracle), step k draws from the posterior q(z_k | z_{k-1}, y), whose mean
# is √ᾱ_k u + b_k (z_{k-1} - √ᾱ_{k-1} u) (a_k + b_k √ᾱ_{k-1} = √ᾱ_k, from the coefficients).
# Composed over the grid, the b_k telescope:
#
#     Π_k b_k = Π √(ᾱ_{k-1}/ᾱ_k) · (1 - ᾱ_k)/(1 - ᾱ_{k-1}) = √(ᾱ_0/ᾱ_1) (1 - ᾱ_1)/(1 - ᾱ_0) =: B,
#
# so z_N = √ᾱ_1 u + B (z_0 - √ᾱ_0 u) + (noise), for every N. The noise is the posterior
# q(z_1 | z_0, y)'s: variance (1 - ᾱ_1)(1 - ᾱ_0/ᾱ_1)/(1 - ᾱ_0) per coordinate.


def _recurrence_closed_form(schedule):
    """(B, the posterior variance) of the grid's end points."""
    ab0, ab1 = _endpoints(schedule)
    gain = math.sqrt(ab0 / ab1) * (1 - ab1) / (1 - ab0)
    return gain, (1 - ab1) * (1 - ab0 / ab1) / (1 - ab0)


@pytest.mark.parametrize("num_steps", [1, 7, 200])
def test_recurrence_from_zero_matches_the_closed_form(oracle_ct, num_steps):
    """Without a key: z_0 = 0 and no noise, so z_N = (√ᾱ_1 - B √ᾱ_0) u, the same for any N."""
    _, model = oracle_ct
    u = np.asarray(model.embedding.matrix(), dtype=np.float64)[LABELS]
    gain, _ = _recurrence_closed_form(model.schedule)
    ab0, ab1 = _endpoints(model.schedule)
    z1 = np.asarray(model.recurrence(_images(), num_steps=num_steps), np.float64)
    # float32 rounding over up to 200 steps of a contraction (|b_k| < 1). Measured: <= 4e-6,
    # but 4.5e-5 for the cosine schedule at 200 steps (near its clip at ᾱ = 0.9999, 1 - ᾱ
    # carries few float32 digits). A wrong coefficient or time would be off by O(0.1).
    np.testing.assert_allclose(z1, (math.sqrt(ab1) - gain * math.sqrt(ab0)) * u, atol=2e-4)


def test_recurrence_with_a_key_has_the_posterior_moments(oracle_ct):
    """With a key: z_0 ~ N(0, I) and noise at every step, so z_N - (√ᾱ_1 - B √ᾱ_0) u has mean 0
    and variance B² + the posterior variance. 4,096 images × 5 coordinates: the mean is checked
    to 5 standard errors, the variance to 5% (its standard error is √(2/20480) = 1%)."""
    _, model = oracle_ct
    n = 4096
    x = np.random.default_rng(2).normal(size=(n, *SHAPE)).astype(np.float32)
    labels = np.arange(n) % M
    x[:, 0, 0, 0] = labels
    u = np.asarray(model.embedding.matrix(), dtype=np.float64)[labels]
    gain, posterior_var = _recurrence_closed_form(model.schedule)
    ab0, ab1 = _endpoints(model.schedule)
    z1 = np.asarray(model.recurrence(jnp.asarray(x), key=jr.key(5), num_steps=10), np.float64)
    residual = (z1 - (math.sqrt(ab1) - gain * math.sqrt(ab0)) * u).ravel()
    variance = gain**2 + posterior_var
    assert abs(residual.mean()) < 5 * math.sqrt(variance / residual.size)
    assert abs(residual.var() / variance - 1) < 0.05, (residual.var(), variance)


def test_recurrence_is_eq3_on_the_grid_written_out():
    """A trained-looking network (random weights, so û depends on z, x and t): the deterministic
    recurrence equals Eq. 3 written out in float64 numpy, with û_k from the network at
    (z_{k-1}, x, t_{k-1}) and the coefficients from ᾱ(k/N); `logits` and `predict` read it out."""
    model = npx.NoPropCT(M, SHAPE, backbone=_TinyTimeNet, key=jr.key(1))
    x = _images()
    num_steps = 3
    w = np.asarray(model.embedding.matrix(), np.float64)
    ab = [float(model.schedule.alpha_bar(k / num_steps)) for k in range(num_steps + 1)]
    z = np.zeros((B, w.shape[1]))
    for k in range(1, num_steps + 1):
        prev, cur = ab[k - 1], ab[k]
        alpha = prev / cur
        a = math.sqrt(cur) * (1 - alpha) / (1 - prev)
        b = math.sqrt(alpha) * (1 - cur) / (1 - prev)
        t = jnp.float32((k - 1) / num_steps)
        logits = np.stack(
            [np.asarray(model.net(jnp.asarray(z[i], jnp.float32), x[i], t)) for i in range(B)]
        ).astype(np.float64)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        u_hat = (p / p.sum(-1, keepdims=True)) @ w
        z = a * u_hat + b * z
    got = np.asarray(model.recurrence(x, num_steps=num_steps), np.float64)
    np.testing.assert_allclose(got, z, atol=1e-5)
    logits = model.logits(x, sampler="recurrence", num_steps=num_steps)
    np.testing.assert_allclose(
        np.asarray(logits),
        np.asarray(jax.vmap(model.readout)(jnp.asarray(z, jnp.float32))),
        atol=1e-5,
    )
    predicted = model.predict(x, sampler="recurrence", num_steps=num_steps)
    np.testing.assert_array_equal(np.asarray(predicted), np.argmax(np.asarray(logits), -1))
    # With a key the chain is random: the same key gives the same z_1, another key another.
    z_a = model.recurrence(x, key=jr.key(0), num_steps=num_steps)
    assert np.array_equal(z_a, model.recurrence(x, key=jr.key(0), num_steps=num_steps))
    assert not np.allclose(z_a, model.recurrence(x, key=jr.key(1), num_steps=num_steps))
    assert not np.allclose(z_a, got)


def test_recurrence_bad_inputs():
    model = npx.NoPropCT(M, SHAPE, backbone=_TinyTimeNet, key=jr.key(1))
    x = _images()
    with pytest.raises(
        ValueError, match=r"sampler to be one of \('ode', 'recurrence'\), got 'sde'"
    ):
        model.logits(x, sampler="sde")
    with pytest.raises(TypeError, match=r"key and num_steps only, got \['solver'\]"):
        model.logits(x, sampler="recurrence", solver=diffrax.Euler())
    for bad in (0, -3, True):
        with pytest.raises(ValueError, match="num_steps to be a positive int"):
            model.recurrence(x, num_steps=bad)


def test_fixed_schedule_stays_where_it_starts():
    """`LearnedNoiseSchedule(fixed=True)`: after paper-optimiser steps with weight decay (Adam
    + L2) at a large rate, every schedule parameter is exactly as built, while the network
    moves; the same steps move an unfixed schedule. `build_model(ct_fixed_schedule=True)` gives
    that schedule, started at the default γ = -2 and 2."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, *SHAPE)), jnp.float32)
    y = jnp.asarray(rng.integers(0, M, size=32), jnp.int32)

    def leaves(tree):
        return [np.array(a) for a in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))]

    def train(fixed):
        """(schedule and network leaves before, and after 3 steps)."""
        schedule = LearnedNoiseSchedule(-2.0, 2.0, fixed=fixed, key=jr.key(3))
        model = npx.NoPropCT(M, SHAPE, backbone=_TinyTimeNet, schedule=schedule, key=jr.key(0))
        before = leaves(model.schedule), leaves(model.net)  # copies: make_step donates model
        optimizer = npx.paper_optimizer(model, learning_rate=0.05)
        step = npx.make_step(npx.NoPropCT.loss_fn, optimizer)
        opt_state = npx.init_optimizer_state(model, optimizer)
        for i in range(3):
            model, opt_state, _ = step(model, opt_state, (x, y), jr.key(10 + i))
        return before, (leaves(model.schedule), leaves(model.net))

    (schedule_0, net_0), (schedule_1, net_1) = train(fixed=True)
    for a, b in zip(schedule_0, schedule_1, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(net_0[0], net_1[0])
    (schedule_0, _), (schedule_1, _) = train(fixed=False)
    moved = [np.abs(a - b).max() for a, b in zip(schedule_0, schedule_1, strict=True)]
    assert min(moved) > 1e-3, moved

    from noprop_eqx._loop import build_model

    model = build_model(
        "CT", num_classes=M, image_shape=SHAPE, backbone="simple", embedding="one-hot",
        embed_dim=None, ct_fixed_schedule=True, key=jr.key(0),
    )  # fmt: skip
    assert model.schedule.fixed
    assert (float(model.schedule.gamma_0), float(model.schedule.gamma_1)) == pytest.approx((-2, 2))
    with pytest.raises(ValueError, match="ct_fixed_schedule applies to variant 'CT' only"):
        build_model(
            "FM", num_classes=M, image_shape=SHAPE, backbone="simple", embedding="one-hot",
            embed_dim=None, ct_fixed_schedule=True, key=jr.key(0),
        )  # fmt: skip


class _LinearGamma(AbstractNoiseSchedule):
    """γ(t) = 5 - 9t: SNR(t) = exp(9t - 5), so SNR'(t) = 9 SNR(t) and (log SNR)'(t) = 9."""

    def alpha_bar(self, t):
        return jax.nn.sigmoid(-(5.0 - 9.0 * t))


def test_log_snr_weighting_against_closed_forms():
    """`ct_denoising_weight`: "snr-prime" is SNR'(t) and "log-snr" is SNR'(t) / SNR(t) =
    -γ'(t), checked on a schedule linear in γ (closed forms 9 SNR(t) and 9) and on a learned
    schedule (against JAX's derivative of its γ). In the loss, with one example, the two
    weightings' denoising terms differ by exactly the factor SNR(t) at that example's t (the
    same key draws the same t, z_t and û); the other terms are the same."""
    weight = npx.ct_denoising_weight
    linear = _LinearGamma()
    for t in (0.0, 0.3, 0.77, 1.0):
        snr = math.exp(9 * t - 5)
        assert float(weight(linear, t, "snr-prime")) == pytest.approx(9 * snr, 1e-4)
        assert float(weight(linear, t, "log-snr")) == pytest.approx(9.0, 1e-4)
    learned = LearnedNoiseSchedule(-4.0, 5.0, key=jr.key(1))
    for t in (0.05, 0.5, 0.95):
        expected = -float(jax.grad(learned.gamma)(jnp.asarray(t)))
        assert expected > 0
        assert float(weight(learned, t, "log-snr")) == pytest.approx(expected, 1e-4)

    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, *SHAPE)), jnp.float32)
    y = jnp.asarray([2], jnp.int32)
    key = jr.key(5)
    aux = {}
    for weighting in ("snr-prime", "log-snr"):
        model = npx.NoPropCT(
            M, SHAPE, backbone=_TinyTimeNet, schedule=linear, weighting=weighting, key=jr.key(0)
        )
        aux[weighting] = model.loss_fn((x, y), key)[1]
    t = float(jr.uniform(jr.split(key, 4)[0], (1,))[0])  # the loss's t draw
    ratio = float(aux["snr-prime"]["denoise"]) / float(aux["log-snr"]["denoise"])
    assert ratio == pytest.approx(math.exp(9 * t - 5), rel=1e-4)
    for term in ("ce", "kl"):
        assert float(aux["snr-prime"][term]) == float(aux["log-snr"][term])


def test_weighting_bad_values_and_build_model():
    """A weighting that does not exist is refused, naming both; `build_model` passes
    `ct_weighting` to CT and refuses it for the other variants."""
    from noprop_eqx._loop import build_model

    with pytest.raises(ValueError, match=r"weighting to be one of \('snr-prime', 'log-snr'\)"):
        npx.NoPropCT(M, SHAPE, backbone=_TinyTimeNet, weighting="snr", key=jr.key(0))
    model = build_model(
        "CT", num_classes=M, image_shape=SHAPE, backbone="simple", embedding="one-hot",
        embed_dim=None, ct_weighting="log-snr", key=jr.key(0),
    )  # fmt: skip
    assert model.weighting == "log-snr"
    default = build_model(
        "CT", num_classes=M, image_shape=SHAPE, backbone="simple", embedding="one-hot",
        embed_dim=None, key=jr.key(0),
    )  # fmt: skip
    assert default.weighting == "snr-prime"
    with pytest.raises(ValueError, match="ct_weighting applies to variant 'CT' only"):
        build_model(
            "FM", num_classes=M, image_shape=SHAPE, backbone="simple", embedding="one-hot",
            embed_dim=None, ct_weighting="log-snr", key=jr.key(0),
        )  # fmt: skip
