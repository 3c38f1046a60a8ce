"""Mixed precision: `mixed_precision(loss_fn, jnp.bfloat16)`, `make_step(compute_dtype=...)`
and `dt_value_and_grad(compute_dtype=...)` compute in bf16 and keep float32 parameters."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import noprop_eqx as npx
from noprop_eqx._train import cast_floating, check_compute_dtype, mixed_precision

IMAGE_SHAPE = (1, 12, 12)


def _batch(size=8):
    x = jr.normal(jr.key(1), (size, *IMAGE_SHAPE))
    return x, jnp.arange(size) % 10


def _model(cls):
    extra = dict(num_blocks=2) if cls in (npx.NoPropDT, npx.BackpropBaseline) else {}
    return cls(10, IMAGE_SHAPE, backbone="paper", key=jr.key(0), **extra)


def _flat(tree):
    leaves = jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))
    return jnp.concatenate([jnp.ravel(a).astype(jnp.float32) for a in leaves])


def _cosine(a, b):
    return float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def _dtypes(tree):
    return {a.dtype for a in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))}


@pytest.mark.parametrize(
    "cls",
    [
        npx.NoPropDT,
        npx.NoPropFM,
        # The same code path (mixed_precision) with other losses; -m slow runs them.
        pytest.param(npx.NoPropCT, marks=pytest.mark.slow),
        pytest.param(npx.BackpropBaseline, marks=pytest.mark.slow),
    ],
)
def test_bf16_gradients_follow_float32(cls):
    """The bf16 gradient points where the float32 one does, and comes back in float32."""
    model, batch, key = _model(cls), _batch(), jr.key(2)

    def grad(loss_fn):  # compiled: faster than op-by-op dispatch of a whole model here
        return eqx.filter_jit(eqx.filter_value_and_grad(loss_fn, has_aux=True))

    (loss32, _), g32 = grad(cls.loss_fn)(model, batch, key)
    (loss16, aux16), g16 = grad(mixed_precision(cls.loss_fn))(model, batch, key)
    assert loss16.dtype == jnp.float32 and _dtypes(aux16) <= {jnp.dtype(jnp.float32)}
    assert _dtypes(g16) == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(float(loss16), float(loss32), rtol=0.1)
    assert _cosine(_flat(g16), _flat(g32)) > 0.99
    # ... and was computed in bf16: rounding moves both (an ignored compute dtype would not).
    assert float(loss16) != float(loss32)
    assert float(jnp.max(jnp.abs(_flat(g16) - _flat(g32)))) > 0


def _conv_operand_dtypes(fn, *args) -> list[tuple]:
    """The operand dtypes of every convolution in the traced `fn(*args)`, nested calls (jit,
    scan, remat, custom derivatives) included."""
    jaxpr = eqx.filter_make_jaxpr(fn)(*args)[0]
    found = []

    def walk(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                found.append(tuple(v.aval.dtype for v in eqn.invars))
            for param in eqn.params.values():
                for sub in param if isinstance(param, tuple | list) else (param,):
                    inner = getattr(sub, "jaxpr", None)
                    if inner is not None:
                        walk(getattr(inner, "jaxpr", inner))

    walk(jaxpr.jaxpr)
    return found


def test_bf16_convolutions_run_in_bf16():
    """The FLOPs run in bf16: every convolution in the traced loss takes bf16 operands. (With
    float32 the same check finds no bf16 at all.)"""
    model, batch = _model(npx.NoPropDT), _batch()
    bf16 = _conv_operand_dtypes(
        lambda m: mixed_precision(npx.NoPropDT.loss_fn)(m, batch, jr.key(0)), model
    )
    f32 = _conv_operand_dtypes(lambda m: npx.NoPropDT.loss_fn(m, batch, jr.key(0)), model)
    assert bf16 and f32
    assert all(d == (jnp.bfloat16, jnp.bfloat16) for d in bf16)
    assert all(d == (jnp.float32, jnp.float32) for d in f32)


@pytest.mark.parametrize("kind", ["make_step", "make_dt_step"])
def test_steps_compute_in_the_compute_dtype(kind):
    """`make_step(compute_dtype=bf16)` and `make_dt_step(compute_dtype=bf16)` run every
    convolution of the whole step, forward and backward, in bf16; without it, in float32."""
    model = _model(npx.NoPropDT)
    optimizer = npx.paper_optimizer(model)
    opt_state = npx.init_optimizer_state(model, optimizer)

    def build(dtype):
        if kind == "make_step":
            return npx.make_step(npx.NoPropDT.loss_fn, optimizer, compute_dtype=dtype)
        return npx.make_dt_step(optimizer, compute_dtype=dtype)

    for dtype, expected in ((jnp.bfloat16, "bf16"), (None, "f32")):
        # The steps are top-level jits with compiler options: read the lowered StableHLO.
        text = build(dtype).lower(model, opt_state, _batch(), jr.key(3)).as_text()
        convs = [line for line in text.splitlines() if "stablehlo.convolution" in line]
        assert len(convs) >= 3 * 2  # two blocks' three convolutions, at least forward
        for line in convs:
            operands = line.rsplit(" : (", 1)[1].split(") -> ")[0]
            types = re.findall(r"tensor<[^>]*x(\w+)>", operands)
            assert types == [expected, expected], (dtype, line)


def test_make_step_bf16_keeps_float32_parameters():
    model = npx.NoPropDT(10, IMAGE_SHAPE, num_blocks=2, backbone="simple", key=jr.key(0))
    optimizer = npx.paper_optimizer(model)
    before = jax.tree.map(jnp.copy, eqx.filter(model, eqx.is_inexact_array))
    for step in (
        npx.make_step(npx.NoPropDT.loss_fn, optimizer, compute_dtype=jnp.bfloat16),
        npx.make_dt_step(optimizer, compute_dtype=jnp.bfloat16),
    ):
        m = jax.tree.map(lambda a: jnp.copy(a) if eqx.is_array(a) else a, model)
        opt_state = npx.init_optimizer_state(m, optimizer)
        m, opt_state, aux = step(m, opt_state, _batch(), jr.key(3))
        assert np.isfinite(float(aux["loss"]))
        assert _dtypes(m) == {jnp.dtype(jnp.float32)}
        assert _dtypes(opt_state) == {jnp.dtype(jnp.float32)}
        assert float(jnp.max(jnp.abs(_flat(m) - _flat(before)))) > 0


@pytest.mark.slow
def test_blockwise_bf16_matches_joint_bf16():
    """`dt_value_and_grad(compute_dtype=bf16)` casts per term as `mixed_precision` does for the
    whole loss: same loss, nearly the same gradient (bf16 rounding in other places)."""
    model, batch, key = _model(npx.NoPropDT), _batch(), jr.key(2)
    joint = eqx.filter_value_and_grad(mixed_precision(npx.NoPropDT.loss_fn), has_aux=True)
    (l_joint, _), g_joint = joint(model, batch, key)
    (l_block, _), g_block = npx.dt_value_and_grad(
        model, batch, key, unroll=True, compute_dtype=jnp.bfloat16
    )
    np.testing.assert_allclose(float(l_block), float(l_joint), rtol=1e-2)
    assert _cosine(_flat(g_block), _flat(g_joint)) > 0.995


def test_cast_floating_leaves_other_leaves_alone():
    tree = (jnp.ones(2), jnp.arange(3), 1.5, "name", None)
    out = cast_floating(tree, jnp.bfloat16)
    assert out[0].dtype == jnp.bfloat16 and out[1].dtype == tree[1].dtype
    assert out[2:] == tree[2:]
    assert cast_floating(tree, None) is tree


@pytest.mark.parametrize("bad", [jnp.int32, "int8", "no-such-dtype"])
def test_compute_dtype_must_be_floating(bad):
    with pytest.raises(TypeError, match="expected compute_dtype to be a floating dtype"):
        check_compute_dtype(bad)
