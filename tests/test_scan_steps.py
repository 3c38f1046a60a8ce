"""Several training steps per compiled call (`CompiledStep.scan`, `train_epoch(steps_per_call=K)`)
follow the same trajectory as one call per step, and the per-backend defaults are what the
benchmarks measured."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import noprop_eqx as npx
from noprop_eqx._dt import default_dt_strategy
from noprop_eqx._dt_step import default_dt_memory
from noprop_eqx._loop import default_steps_per_call

from .conftest import as_a_user

SHAPE = (1, 8, 8)


def _setup(cls=npx.NoPropFM):
    extra = dict(num_blocks=2) if cls in (npx.NoPropDT, npx.BackpropBaseline) else {}
    model = cls(10, SHAPE, backbone="simple", key=jr.key(0), **extra)
    optimizer = npx.paper_optimizer(model)
    if cls is npx.NoPropDT:
        step = npx.make_dt_step(optimizer)
    else:
        step = npx.make_step(cls.loss_fn, optimizer)
    return model, optimizer, step


def _copy(tree):
    return jax.tree.map(lambda a: jnp.copy(a) if eqx.is_array(a) else a, tree)


def _assert_close(a, b, rtol=1e-4):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        scale = float(np.max(np.abs(y))) if y.size else 0.0
        np.testing.assert_allclose(x, y, rtol=0, atol=rtol * scale + 1e-6)


@pytest.mark.parametrize("cls", [npx.NoPropDT, npx.NoPropFM])
def test_scan_equals_one_call_per_step(cls):
    model, optimizer, step = _setup(cls)
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((3, 16, *SHAPE), dtype=np.float32)
    ys = rng.integers(0, 10, (3, 16)).astype(np.int32)
    keys = jr.split(jr.key(5), 3)

    m1, o1 = _copy(model), npx.init_optimizer_state(model, optimizer)
    losses = []
    for k in range(3):
        m1, o1, aux = step(m1, o1, (xs[k], ys[k]), keys[k])
        losses.append(float(aux["loss"]))
    m2, o2 = _copy(model), npx.init_optimizer_state(model, optimizer)
    m2, o2, aux2 = step.scan(m2, o2, (xs, ys), keys)

    assert aux2["loss"].shape == (3,)
    np.testing.assert_allclose(np.asarray(aux2["loss"]), losses, rtol=1e-5)
    _assert_close(eqx.filter(m2, eqx.is_array), eqx.filter(m1, eqx.is_array))
    _assert_close(o2, o1)


@pytest.mark.parametrize("augment", [False, True])
def test_train_epoch_steps_per_call_matches_one_step_per_call(augment):
    """10 batches in calls of 4, 4 and 2 steps: the same epoch as 10 calls of one step, with
    random-shift augmentation too (each batch shifted with its own key either way)."""
    model, optimizer, step = _setup(npx.NoPropFM)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((160, *SHAPE), dtype=np.float32)
    y = rng.integers(0, 10, 160).astype(np.int32)
    hook = None
    if augment:
        hook = functools.partial(npx.data.random_shift, max_shift=2, fill=np.zeros(1, np.float32))
    out = {}
    for k in (1, 4):
        m, o = _copy(model), npx.init_optimizer_state(model, optimizer)
        m, o, stats = npx.train_epoch(
            step, m, o, x, y, batch_size=16, key=jr.key(2), epoch=1, progress=False,
            steps_per_call=k, augment=hook,
        )  # fmt: skip
        out[k] = (eqx.filter(m, eqx.is_array), stats)
    assert out[4][1]["num_batches"] == out[1][1]["num_batches"] == 10
    np.testing.assert_allclose(
        out[4][1]["loss_terms"]["loss"], out[1][1]["loss_terms"]["loss"], rtol=1e-5
    )
    _assert_close(out[4][0], out[1][0])
    if augment:  # the shifts changed the epoch: the comparison above covers them
        m = _copy(model)
        m, _, plain = npx.train_epoch(
            step, m, npx.init_optimizer_state(model, optimizer), x, y, batch_size=16,
            key=jr.key(2), epoch=1, progress=False, steps_per_call=4,
        )  # fmt: skip
        assert plain["loss_terms"]["loss"] != out[4][1]["loss_terms"]["loss"]


def test_steps_per_call_needs_a_compiled_step():
    model, optimizer, step = _setup(npx.NoPropFM)
    x = np.zeros((32, *SHAPE), np.float32)
    y = np.zeros(32, np.int32)
    kwargs = dict(batch_size=16, key=jr.key(0), epoch=1, progress=False)
    with pytest.raises(TypeError, match="needs a step with a .scan method"):
        npx.train_epoch(step.fn, model, None, x, y, steps_per_call=2, **kwargs)
    with pytest.raises(ValueError, match="expected steps_per_call a positive int or 'auto'"):
        npx.train_epoch(step, model, None, x, y, steps_per_call=0, **kwargs)


def test_backend_defaults():
    """The per-backend choices the benchmarks measured (benchmarks/README.md)."""
    assert default_dt_strategy("cpu") == "loop" and default_dt_strategy("gpu") == "vmap"
    assert default_dt_memory("cpu") == "blockwise" and default_dt_memory("gpu") == "default"
    assert default_steps_per_call(469, "cpu") == 1
    assert default_steps_per_call(469, "gpu") == 47
    assert default_steps_per_call(3, "gpu") == 1


def test_compiler_options_fall_back_with_a_warning(monkeypatch):
    """An option the installed jaxlib rejects is dropped with a warning naming it, and the
    steps compile with XLA's defaults; an accepted one is used; "auto" means nothing off CPU."""
    from noprop_eqx import _xla

    _xla._accepted_cpu_options.cache_clear()
    try:
        assert _xla.default_compiler_options("cpu") == _xla.CPU_COMPILER_OPTIONS
        assert _xla.default_compiler_options("gpu") == {}
        _xla._accepted_cpu_options.cache_clear()
        monkeypatch.setattr(_xla, "CPU_COMPILER_OPTIONS", {"xla_no_such_option_here": "1"})
        with pytest.warns(UserWarning, match="rejects the CPU compiler options .*no_such_option"):
            assert _xla.default_compiler_options("cpu") == {}
    finally:
        _xla._accepted_cpu_options.cache_clear()
    assert _xla.jit_options(None) == {} and _xla.jit_options({}) == {}
    assert _xla.jit_options({"a": "1"}) == {"compiler_options": {"a": "1"}}
    with as_a_user():  # the library's message, not the suite's type checker's
        with pytest.raises(TypeError, match="expected compiler_options to be 'auto', None or a"):
            _xla.resolve_compiler_options("fast")
