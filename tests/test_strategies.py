"""Every way of running NoProp-DT's T blocks gives the same loss and gradients.

The strategies ("loop", "vmap", "scan" in `NoPropDT.block_logits`) and the low-memory step
(`dt_value_and_grad` / `make_dt_step(memory="low")`) only change how XLA executes Eq. 8, never
its value: for the same key they must agree to float tolerance.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import noprop_eqx as npx
from noprop_eqx._dt import STRATEGIES

from .conftest import as_a_user

NUM_CLASSES = 4
IMAGE_SHAPE = (1, 8, 8)
NUM_BLOCKS = 3
# d > m gives an orthogonal learned embedding. (With d = 3 < m = 4 the float32 gradient of the
# last block, whose SNR weight is ~8e3, is ill-conditioned: two exact formulations then differ
# by ~10% in float32 while agreeing to 1e-14 in float64.)
EMBED_DIM = 8


def _model(strategy: str, embedding: str = "learned") -> npx.NoPropDT:
    return npx.NoPropDT(
        NUM_CLASSES,
        IMAGE_SHAPE,
        num_blocks=NUM_BLOCKS,
        backbone="simple",
        embedding=embedding,
        embed_dim=EMBED_DIM,
        strategy=strategy,
        key=jr.key(0),
    )


def _batch(size: int = 4, image_shape=IMAGE_SHAPE):
    x = jr.normal(jr.key(1), (size, *image_shape))
    y = jnp.arange(size) % NUM_CLASSES
    return x, y


def _assert_trees_close(a, b, rtol=1e-4, atol=1e-6):
    """Leaf by leaf (the static `strategy` field may differ between the two trees), with the
    error measured against each leaf's largest entry: float32 reductions summed in another order
    differ by a few ulps of the leaf's scale, not of each entry."""
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape
        scale = float(np.max(np.abs(y))) if y.size else 0.0
        np.testing.assert_allclose(x, y, rtol=0, atol=rtol * scale + atol)


_value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(npx.NoPropDT.loss_fn, has_aux=True))


@pytest.fixture(scope="module")
def reference():
    """Loss, aux and gradients of the "loop" strategy (a plain Python loop over the blocks)."""
    model = _model("loop")
    batch = _batch()
    (loss, aux), grads = _value_and_grad(model, batch, jr.key(2))
    # A nonzero gradient reaches every block and the learned embedding: the comparison is
    # not between two vectors of zeros.
    block_grads = jax.tree.leaves(grads.blocks)
    assert all(float(jnp.max(jnp.abs(g[t]))) > 0 for g in block_grads[:1] for t in range(3))
    assert float(jnp.max(jnp.abs(grads.embedding.weight))) > 0
    return model, batch, loss, aux, grads


@pytest.mark.parametrize("strategy", [s for s in STRATEGIES if s != "loop"])
def test_strategies_give_same_loss_and_gradients(reference, strategy):
    model, batch, loss, aux, grads = reference
    other = _model(strategy)  # the same key, so the same parameters
    assert other.strategy == strategy
    _assert_trees_close(eqx.filter(other, eqx.is_array), eqx.filter(model, eqx.is_array), 0, 0)
    (loss2, aux2), grads2 = _value_and_grad(other, batch, jr.key(2))
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
    _assert_trees_close(aux2, aux)
    _assert_trees_close(grads2, grads)


def test_low_memory_value_and_grad_matches(reference):
    model, batch, loss, aux, grads = reference
    (loss2, aux2), grads2 = eqx.filter_jit(npx.dt_value_and_grad)(model, batch, jr.key(2))
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
    assert set(aux2) == set(aux)
    _assert_trees_close(aux2, aux)
    _assert_trees_close(grads2, grads)


def test_low_memory_value_and_grad_differs_for_another_key(reference):
    model, batch, loss, _, _ = reference
    (loss2, _), _ = eqx.filter_jit(npx.dt_value_and_grad)(model, batch, jr.key(3))
    assert float(loss2) != float(loss)


@pytest.mark.parametrize("memory", ["low-scan", "low-calls", "blockwise"])
def test_per_block_steps_match_make_step(memory):
    model = _model("loop", embedding="one-hot")
    optimizer = optax.adamw(1e-3, weight_decay=1e-3)
    opt_state = npx.init_optimizer_state(model, optimizer)
    default_step = npx.make_step(npx.NoPropDT.loss_fn, optimizer)
    low_step = npx.make_dt_step(optimizer, memory=memory)

    # The steps donate the model and the optimiser state: each call gets fresh copies.
    def copy(tree):
        return jax.tree.map(lambda a: jnp.copy(a) if eqx.is_array(a) else a, tree)

    new_a, state_a, aux_a = default_step(copy(model), copy(opt_state), _batch(), jr.key(4))
    new_b, state_b, aux_b = low_step(copy(model), opt_state, _batch(), jr.key(4))
    _assert_trees_close(aux_b, aux_a)
    _assert_trees_close(eqx.filter(new_b, eqx.is_array), eqx.filter(new_a, eqx.is_array))
    _assert_trees_close(state_b, state_a)
    changed = [
        not np.array_equal(np.asarray(p), np.asarray(q))
        for p, q in zip(
            jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)),
            jax.tree.leaves(eqx.filter(new_b, eqx.is_inexact_array)),
            strict=True,
        )
    ]
    assert any(changed)
    # A second call reuses the compiled step.
    new_b, state_b, _ = low_step(new_b, state_b, _batch(), jr.key(5))
    jax.block_until_ready(new_b)
    assert low_step.num_compilations() == 1


def test_low_memory_step_uses_less_temp_memory():
    """With T = 4 blocks the default step keeps every block's activations for the backward
    pass; the low-memory step keeps one block's."""
    image_shape = (1, 16, 16)
    model = npx.NoPropDT(
        NUM_CLASSES, image_shape, num_blocks=4, backbone="simple", strategy="loop", key=jr.key(0)
    )
    batch = _batch(64, image_shape)
    optimizer = optax.adamw(1e-3)
    opt_state = npx.init_optimizer_state(model, optimizer)

    def temp_bytes(step):
        compiled = step.lower(model, opt_state, batch, jr.key(0)).compile()
        return compiled.compiled.memory_analysis().temp_size_in_bytes

    default = temp_bytes(npx.make_dt_step(optimizer, memory="default"))
    blockwise = temp_bytes(npx.make_dt_step(optimizer, memory="blockwise"))
    low = temp_bytes(npx.make_dt_step(optimizer, memory="low-scan"))
    # One call per block: its largest call's temporaries plus the gradient buffer.
    calls = npx.make_dt_step(optimizer, memory="low-calls").temp_bytes(
        model, opt_state, batch, jr.key(0)
    )
    assert low < 0.5 * default, (low, default)
    assert low < blockwise <= default, (low, blockwise, default)
    assert calls < 0.5 * default, (calls, default)


def test_bad_arguments():
    with as_a_user():  # the library's messages, not the suite's type checker's
        with pytest.raises(ValueError, match="expected memory to be one of .*got 'tiny'"):
            npx.make_dt_step(optax.adam(1e-3), memory="tiny")
        with pytest.raises(ValueError, match="expected strategy to be one of .*got 'grouped'"):
            _model("grouped")
    ct = npx.NoPropCT(NUM_CLASSES, IMAGE_SHAPE, backbone="simple", key=jr.key(0))
    with pytest.raises(TypeError, match="NoPropDT"):
        npx.dt_value_and_grad(ct, _batch(), jr.key(0))
