"""`paper_optimizer`'s choice per variant, read off the first update it makes, against Adam's
update written out here in float64 (and `weight_decay_mode`, which records that choice).

Adam's first step from zero moments on a gradient g (bias-corrected, β1 = 0.9, β2 = 0.999,
ε = 1e-8 outside the root: optax's and PyTorch's defaults) has m̂ = g, v̂ = g², so

    Adam:               Δp = -lr · g / (|g| + ε)
    AdamW (decoupled):  Δp = -lr · (g / (|g| + ε) + wd · p)          (optax.adamw, PyTorch AdamW)
    Adam + L2 (PyTorch's Adam(weight_decay=wd)): g ← g + wd · p before the normalisation:
                        Δp = -lr · (g + wd·p) / (|g + wd·p| + ε)

With a zero loss gradient AdamW moves p by exactly -lr·wd·p, Adam + L2 by -lr·sign(p) (up to
ε), plain Adam not at all.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import noprop_eqx as npx
from noprop_eqx._train import weight_decay_mode
from noprop_eqx.models import AbstractBackbone

SHAPE, M = (1, 8, 8), 10
EPS = 1e-8
LR, WD = 1e-3, 1e-3  # the paper's Table 3 values, paper_optimizer's defaults
CLASSES = {"DT": npx.NoPropDT, "BP": npx.BackpropBaseline, "CT": npx.NoPropCT, "FM": npx.NoPropFM}


class _TinyNet(AbstractBackbone):
    """logits = W [z; x; t] + b: a backbone with few parameters, so that models build and
    compile fast; the optimiser sees the variant's full parameter tree all the same."""

    linear: eqx.nn.Linear
    num_classes: int = eqx.field(static=True)
    embed_dim: int = eqx.field(static=True)
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    time_conditioned: bool = eqx.field(static=True)

    def __init__(self, embed_dim, time_conditioned, *, key):
        size = embed_dim + int(np.prod(SHAPE)) + int(time_conditioned)
        self.linear = eqx.nn.Linear(size, M, key=key)
        self.num_classes, self.embed_dim = M, embed_dim
        self.image_shape, self.time_conditioned = SHAPE, time_conditioned

    def __call__(self, z, x, t=None, *, key=None):
        parts = [z, x.reshape(-1)] + ([jnp.reshape(t, (1,))] if self.time_conditioned else [])
        return self.linear(jnp.concatenate(parts))


def _build(variant, embedding="one-hot"):
    dim = M if embedding == "one-hot" else embedding.dim
    timed = variant in ("CT", "FM")
    extra = dict(num_blocks=2) if variant in ("DT", "BP") else {}
    backbone = lambda k: _TinyNet(dim, timed, key=k)  # noqa: E731
    cls = CLASSES[variant]
    return cls(M, SHAPE, backbone=backbone, embedding=embedding, key=jr.key(0), **extra)


@functools.cache
def _model(variant):
    """A small one-hot model of `variant`, built once (models are immutable)."""
    return _build(variant)


def _flat(tree):
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in jax.tree.leaves(tree)])


@functools.cache
def _first_updates(variant, weight_decay=WD):
    """(p, g, update for a zero gradient, update for g): the first update of
    paper_optimizer(model, weight_decay=...) at the default lr, each flattened to float64."""
    model = _model(variant)
    optimizer = npx.paper_optimizer(model, weight_decay=weight_decay)
    params = eqx.filter(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree.flatten(params)
    keys = jr.split(jr.key(1), len(leaves))
    grads = jax.tree.unflatten(
        treedef, [0.01 * jr.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    )

    @eqx.filter_jit
    def updates(params, grads):
        state = optimizer.init(params)
        zero, _ = optimizer.update(jax.tree.map(jnp.zeros_like, grads), state, params)
        random, _ = optimizer.update(grads, state, params)
        return zero, random

    zero, random = updates(params, grads)
    return _flat(params), _flat(grads), _flat(zero), _flat(random)


def _adam(g, lr=LR):
    return -lr * g / (np.abs(g) + EPS)


def _adamw(g, p, lr=LR, wd=WD):
    return -lr * (g / (np.abs(g) + EPS) + wd * p)


def _adam_l2(g, p, lr=LR, wd=WD):
    return _adam(g + wd * p, lr)


# Adam's float32 bias corrections (1 - 0.999 is 0.00099998713 in float32) put m̂/√v̂ about
# 1e-5 off its float64 value: updates that go through Adam's normalisation get rtol 1e-4.
ADAM_RTOL = 1e-4


@pytest.mark.parametrize("variant", ["DT", "BP"])
def test_dt_and_backprop_use_adamw(variant):
    p, g, zero, random = _first_updates(variant)
    # Zero gradient: exactly the decoupled decay -lr·wd·p (optax.adamw multiplies it by lr, as
    # PyTorch's AdamW does), nothing from Adam's normalisation, not the L2 form's -lr·sign(p).
    np.testing.assert_allclose(zero, -LR * WD * p, rtol=1e-6, atol=1e-14)
    assert np.abs(p).max() > 1.0  # the test sees parameters whose decay is not negligible
    np.testing.assert_allclose(random, _adamw(g, p), rtol=ADAM_RTOL, atol=1e-12)


@pytest.mark.parametrize("variant", ["CT", "FM"])
def test_ct_and_fm_use_adam_with_l2_before_normalisation(variant):
    p, g, zero, random = _first_updates(variant)
    # Zero loss gradient: Adam sees g = wd·p, so the update is -lr·wd·p/(|wd·p| + ε).
    np.testing.assert_allclose(zero, _adam_l2(0.0 * p, p), rtol=ADAM_RTOL, atol=1e-12)
    # Where |wd·p| >> ε (|p| > 0.02: ε/|wd·p| < 5e-4) that is -lr·sign(p), about lr in size:
    # 1/(wd·|p|) times AdamW's -lr·wd·p.
    large = np.abs(p) > 0.02
    assert large.sum() > 100
    np.testing.assert_allclose(zero[large], -LR * np.sign(p[large]), rtol=1e-3)
    np.testing.assert_allclose(random, _adam_l2(g, p), rtol=ADAM_RTOL, atol=1e-12)


@pytest.mark.parametrize("variant", ["CT", "FM"])
def test_ct_and_fm_without_weight_decay_are_plain_adam(variant):
    p, g, zero, random = _first_updates(variant, 0.0)
    np.testing.assert_array_equal(zero, 0.0)
    np.testing.assert_allclose(random, _adam(g), rtol=ADAM_RTOL, atol=1e-12)


@pytest.mark.parametrize("variant", ["BP", "CT"])  # AdamW; Adam + L2. (DT: test_embeddings.py)
def test_fixed_prototype_is_untouched_by_either_optimiser(variant):
    """With a zero loss gradient only the weight decay moves parameters: a trainable prototype
    embedding moves (by -lr·wd·p, or ≈ -lr·sign(p)), a fixed one stays bit for bit. With the
    backprop baseline's real loss (large lr and decay) the fixed prototypes still do not move
    while the readout does. (The CT loss is left out for time: compiling it costs ~6 s here.)"""
    data = npx.data.load_digits()
    lr, wd = 0.1, 0.5
    for fixed in (False, True):
        embedding = npx.PrototypeEmbedding(data.x_train, data.y_train, M, fixed=fixed)
        model = _build(variant, embedding)
        before = np.array(model.embedding.weight, dtype=np.float64)
        params = eqx.filter(model, eqx.is_inexact_array)
        optimizer = npx.paper_optimizer(model, learning_rate=lr, weight_decay=wd)
        state = npx.init_optimizer_state(model, optimizer)
        zero_grads = jax.tree.map(jnp.zeros_like, params)
        updates, _ = eqx.filter_jit(optimizer.update)(zero_grads, state, params)
        moved = np.asarray(updates.embedding.weight, dtype=np.float64)
        if fixed:
            np.testing.assert_array_equal(moved, 0.0)
        elif variant == "BP":
            np.testing.assert_allclose(moved, -lr * wd * before, rtol=1e-6, atol=1e-12)
        else:
            np.testing.assert_allclose(moved, _adam_l2(0.0, before, lr, wd), rtol=ADAM_RTOL)
            assert np.abs(moved).max() > 0.09
    if variant != "BP":
        return
    # `model` has the fixed prototypes now: one real training step.
    step = npx.make_step(type(model).loss_fn, optimizer)
    readout = np.array(model.readout.weight, copy=True)
    model, _, aux = step(model, state, (data.x_train[:16], data.y_train[:16]), jr.key(2))
    assert bool(jnp.isfinite(aux["loss"]))
    np.testing.assert_array_equal(np.asarray(model.embedding.weight), before)
    assert np.abs(np.asarray(model.readout.weight) - readout).max() > 1e-3


def test_weight_decay_mode_table():
    for variant in ("DT", "BP"):
        for wd in (1e-3, 0.0, None):
            assert weight_decay_mode(variant, wd) == "decoupled"
    for variant in ("CT", "FM"):
        assert weight_decay_mode(variant, 1e-3) == "l2"
        assert weight_decay_mode(variant, 0.0) == "none"
        # None: a run saved before CT/FM had weight decay, which trained with plain Adam.
        assert weight_decay_mode(variant, None) == "none"


@pytest.mark.parametrize("variant", list(CLASSES))
def test_weight_decay_mode_says_what_paper_optimizer_does(variant):
    """The mode a run records is the behaviour of the optimiser it trains with, read off the
    zero-gradient update at the paper's decay (and, for CT/FM, at no decay)."""
    for wd in (WD, 0.0) if variant in ("CT", "FM") else (WD,):
        p, _, zero, _ = _first_updates(variant, wd)
        if np.all(zero == 0.0):
            observed = "none"
        elif np.allclose(zero, -LR * wd * p, rtol=1e-6, atol=1e-14):
            observed = "decoupled"
        elif np.allclose(zero, _adam_l2(0.0, p, LR, wd), rtol=ADAM_RTOL, atol=1e-12):
            observed = "l2"
        else:
            observed = "unknown"
        assert observed == weight_decay_mode(variant, wd), (variant, wd)
