"""The fast layers (`noprop_eqx.models._layers`) against their plain formulations."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

from noprop_eqx.models import PaperConvStack
from noprop_eqx.models._layers import (
    conv_hwc,
    conv_pool_relu_hwc,
    dropout,
    hash_bits,
    max_pool_hwc,
)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_channels=3, out_channels=5, kernel_size=3),
        dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, stride=2),
        dict(in_channels=4, out_channels=6, kernel_size=1, use_bias=False, groups=2),
        dict(in_channels=2, out_channels=3, kernel_size=3, padding="SAME", dilation=2),
    ],
)
def test_conv_hwc_equals_the_channels_first_convolution(getkey, kwargs):
    conv = eqx.nn.Conv2d(**kwargs, key=getkey())
    x = jr.normal(getkey(), (kwargs["in_channels"], 9, 11))
    expected = jnp.transpose(conv(x), (1, 2, 0))
    got = conv_hwc(conv, jnp.transpose(x, (1, 2, 0)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_max_pool_hwc_brute_force(getkey):
    x = np.asarray(jr.normal(getkey(), (7, 9, 3)))
    expected = np.empty((3, 4, 3))
    for i in range(3):
        for j in range(4):
            expected[i, j] = x[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].max(axis=(0, 1))
    np.testing.assert_array_equal(max_pool_hwc(jnp.asarray(x)), expected)


def _pool_chw(h):
    c, hh, ww = h.shape
    return h[:, : hh // 2 * 2, : ww // 2 * 2].reshape(c, hh // 2, 2, ww // 2, 2).max((2, 4))


@pytest.mark.parametrize("use_bias", [True, False])
def test_conv_pool_relu_hwc_equals_relu_then_pool_with_gradients(getkey, use_bias):
    conv = eqx.nn.Conv2d(3, 8, 3, use_bias=use_bias, key=getkey())
    if use_bias:  # biases of both signs, large enough to move many pre-activations across 0
        conv = eqx.tree_at(lambda c: c.bias, conv, jr.normal(getkey(), conv.bias.shape))
    x = jr.normal(getkey(), (3, 11, 10))
    cotangent = jr.normal(getkey(), (8, 4, 4))

    def reference(conv, x):  # channels first: conv (with bias) → ReLU → pool
        return jnp.sum(_pool_chw(jax.nn.relu(conv(x))) * cotangent)

    def fast(conv, x):
        y = conv_pool_relu_hwc(conv, jnp.transpose(x, (1, 2, 0)))
        return jnp.sum(jnp.transpose(y, (2, 0, 1)) * cotangent)

    value, grads = eqx.filter_value_and_grad(reference)(conv, x)
    got_value, got_grads = eqx.filter_value_and_grad(fast)(conv, x)
    np.testing.assert_allclose(got_value, value, rtol=1e-5, atol=1e-5)
    assert np.any(np.asarray(grads.weight) != 0)
    for got, expected in zip(jax.tree.leaves(got_grads), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_paper_conv_stack_equals_its_channels_first_reference(getkey):
    stack = PaperConvStack((3, 32, 32), dropout=0.2, key=getkey())
    x = jr.normal(getkey(), (3, 32, 32))
    cotangent = jr.normal(getkey(), (stack.out_features,))

    def reference(stack, x):
        h = _pool_chw(jax.nn.relu(stack.convs[0](x)))
        h = jax.nn.relu(stack.convs[1](h))
        return _pool_chw(jax.nn.relu(stack.convs[2](h))).reshape(-1)

    got = stack(x, key=None)
    assert got.shape == (stack.out_features,)
    np.testing.assert_allclose(got, reference(stack, x), rtol=1e-5, atol=1e-5)
    grads = eqx.filter_jit(eqx.filter_grad(lambda s: jnp.dot(reference(s, x), cotangent)))(stack)
    got_grads = eqx.filter_jit(eqx.filter_grad(lambda s: jnp.dot(s(x, key=None), cotangent)))(stack)
    for got, expected in zip(jax.tree.leaves(got_grads), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_dropout_keep_rate_scaling_and_independence(getkey):
    p, n = 0.2, 1_000_000
    x = jnp.ones(n)
    y = np.asarray(jax.jit(dropout, static_argnums=1)(x, p, getkey()))
    kept = y != 0
    # Survivors are scaled by exactly 1/(1 - p); the rest are zero.
    np.testing.assert_allclose(y[kept], 1.0 / (1.0 - p), rtol=1e-6)
    # Keep rate 1 - p within 5 binomial standard deviations.
    sd = np.sqrt(p * (1 - p) / n)
    assert abs(kept.mean() - (1 - p)) < 5 * sd
    # Neighbouring elements are independent: P(both kept) = (1 - p)^2.
    both = (kept[:-1] & kept[1:]).mean()
    assert abs(both - (1 - p) ** 2) < 5 * np.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / n)
    # Another key gives an independent mask: agreement (1-p)^2 + p^2.
    other = np.asarray(dropout(x, p, getkey())) != 0
    agree = (kept == other).mean()
    assert abs(agree - ((1 - p) ** 2 + p**2)) < 0.005


def test_dropout_per_example_keys_under_vmap_give_different_masks(getkey):
    keys = jr.split(getkey(), 64)
    masks = np.asarray(jax.vmap(lambda k: dropout(jnp.ones((16, 16)), 0.5, k))(keys)) != 0
    flat = masks.reshape(64, -1)
    # No two examples share their mask, and each keeps about half of its 256 elements.
    assert len({row.tobytes() for row in flat}) == 64
    assert np.all(np.abs(flat.mean(axis=1) - 0.5) < 0.15)


def test_hash_bits_are_uniform(getkey):
    bits = np.asarray(hash_bits(getkey(), (200_000,)))
    counts = np.bincount(bits >> 28, minlength=16)  # top 4 bits: 16 equiprobable bins
    chi2 = ((counts - len(bits) / 16) ** 2 / (len(bits) / 16)).sum()
    assert chi2 < 50  # chi-square with 15 dof: P(chi2 > 50) < 1e-5


def test_dropout_identity_and_errors(getkey):
    x = jr.normal(getkey(), (5, 7))
    assert dropout(x, 0.3, None) is x
    assert dropout(x, 0.0, getkey()) is x
    with pytest.raises(ValueError, match="expected a dropout probability in \\[0, 1\\), got 1.0"):
        dropout(x, 1.0, getkey())
