"""`ResNetWrapper(norm="batch")`: BatchNorm with the batch's statistics in training and
population statistics, set by `recalibrate_batch_norm`, at evaluation. Checked against closed
forms on a depth-18, width-4 network on 8×8 images."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import noprop_eqx as npx
from noprop_eqx._config import ConfigError
from noprop_eqx.models import BATCH_AXIS, BatchNorm, ResNetWrapper, apply_batched
from noprop_eqx.models._factory import backbone_name, make_backbone

SHAPE = (3, 8, 8)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, *SHAPE)) * 2.0 + 0.5).astype(np.float32)


def _net(key, time_embed_dim=0):
    return ResNetWrapper(10, 18, 4, time_embed_dim, image_shape=SHAPE, norm="batch", key=key)


def test_training_mode_normalises_over_the_batch(getkey):
    norm = eqx.tree_at(lambda n: (n.weight, n.bias), BatchNorm(3), (jnp.full(3, 2.0), jnp.ones(3)))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3, 4, 4)) * 3 + 1, jnp.float32)
    out, (mean, var) = jax.vmap(
        lambda xi: norm(xi, training=True), axis_name=BATCH_AXIS, out_axes=(0, None)
    )(x)
    xn = np.asarray(x, np.float64)
    want_mean, want_var = xn.mean(axis=(0, 2, 3)), xn.var(axis=(0, 2, 3))
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, want_var, rtol=1e-5)
    want = 2.0 * (xn - want_mean[:, None, None]) / np.sqrt(want_var[:, None, None] + 1e-5) + 1.0
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
    # Evaluation: the stored statistics (0 and 1 as built), whatever the batch.
    out, _ = norm(x[0], training=False)
    np.testing.assert_allclose(out, 2.0 * xn[0] / np.sqrt(1 + 1e-5) + 1.0, rtol=1e-5)


def test_training_call_without_a_batch_says_how(getkey):
    net = _net(getkey())
    with pytest.raises(ValueError, match="must run under noprop_eqx.models.apply_batched"):
        net(jnp.zeros(10), jnp.zeros(SHAPE), key=getkey())
    net(jnp.zeros(10), jnp.zeros(SHAPE))  # evaluation needs no batch


def test_recalibration_is_the_population_statistics(getkey):
    net = _net(getkey())
    x = _images(96)
    model = npx.NoPropDT(10, SHAPE, num_blocks=2, backbone=lambda k: _net(k), key=getkey())
    model = npx.recalibrate_batch_norm(model, x, num_images=96, batch_size=32)
    # The stem's statistics are those of its convolution over all 96 images (three batches:
    # the mean of the batch variances plus the variance of the batch means).
    for t in range(2):
        block = model.block(t)
        conv = np.asarray(jax.vmap(block.stem)(jnp.asarray(x)), np.float64)
        np.testing.assert_allclose(block.stem_norm.mean, conv.mean(axis=(0, 2, 3)), atol=1e-5)
        np.testing.assert_allclose(block.stem_norm.var, conv.var(axis=(0, 2, 3)), rtol=1e-4)
    # The stacked blocks are recalibrated as each block alone would be.
    alone = npx.recalibrate_batch_norm(model.block(1), x, num_images=96, batch_size=32)
    for a, b in zip(alone.norm_layers(), model.block(1).norm_layers(), strict=True):
        np.testing.assert_allclose(a.var, b.var, rtol=1e-5)
    # On one batch, the population statistics are that batch's: evaluation then reproduces the
    # training-mode forward pass exactly, layer after layer.
    net = npx.recalibrate_batch_norm(net, x[:32], num_images=32, batch_size=32)
    z = jnp.zeros((32, 10))
    train_features = jax.vmap(
        lambda xi: net._features(xi, training=True, stats=None), axis_name=BATCH_AXIS
    )(jnp.asarray(x[:32]))
    eval_features = jax.vmap(net.encode)(jnp.asarray(x[:32]))
    np.testing.assert_allclose(eval_features, train_features, rtol=1e-4, atol=1e-4)
    # ... and an image's evaluation does not depend on the rest of its batch.
    one = apply_batched(net, z[:1], jnp.asarray(x[:1]))
    np.testing.assert_allclose(one, apply_batched(net, z, jnp.asarray(x[:32]))[:1], atol=1e-5)


def test_a_model_without_batch_norm_is_unchanged(getkey):
    model = npx.NoPropCT(10, (1, 8, 8), backbone="simple", key=getkey())
    assert not npx.has_batch_norm(model)
    assert npx.recalibrate_batch_norm(model, _images(10)) is model
    with pytest.raises(ValueError, match="at least batch_size=128 images"):
        npx.recalibrate_batch_norm(_net(getkey()), _images(10))


@pytest.mark.parametrize("variant", ["DT", "CT"])
def test_training_never_moves_the_population_statistics(variant, getkey):
    """The statistics have zero gradient and no weight decay (AdamW for DT, as for backprop;
    Adam with an L2 term for CT, as for FM), so steps leave them exactly; the norm's scale and
    shift train."""
    model = npx.build_model(
        variant, num_classes=10, image_shape=SHAPE, num_blocks=2, backbone="resnet18-w4-bn",
        key=getkey(),
    )  # fmt: skip
    model = npx.recalibrate_batch_norm(model, _images(64), batch_size=32)
    before = [(n.mean, n.var, n.weight) for n in _norms(model)]
    optimizer = npx.paper_optimizer(model)
    state = npx.init_optimizer_state(model, optimizer)
    step = npx.make_step(type(model).loss_fn, optimizer)
    x, y = _images(32, seed=3), np.arange(32) % 10
    params = jax.tree.map(lambda a: a.copy() if eqx.is_array(a) else a, model)
    for i in range(2):
        params, state, aux = step(params, state, (x, y), jr.fold_in(getkey(), i))
    assert np.isfinite(float(aux["loss"]))
    after = [(n.mean, n.var, n.weight) for n in _norms(params)]
    for (m0, v0, _), (m1, v1, _) in zip(before, after, strict=True):
        np.testing.assert_array_equal(m0, m1)
        np.testing.assert_array_equal(v0, v1)
    assert any(not np.array_equal(b[2], a[2]) for b, a in zip(before, after, strict=True))


def _norms(model):
    is_bn = lambda n: isinstance(n, BatchNorm)  # noqa: E731
    return [n for n in jax.tree.leaves(model, is_leaf=is_bn) if is_bn(n)]


def test_names_and_config(getkey):
    assert backbone_name("resnet18", 16, "batch") == "resnet18-w16-bn"
    assert backbone_name("resnet50", 64, "batch") == "resnet50-bn"
    assert backbone_name("resnet50", 64, "group") == "resnet50"
    net = eqx.filter_eval_shape(
        lambda k: make_backbone(
            "resnet18-w16-bn", num_classes=10, embed_dim=10, image_shape=(3, 32, 32),
            time_conditioned=False, key=k,
        ),
        getkey(),
    )  # fmt: skip
    assert net.norm == "batch" and isinstance(net.stem_norm, BatchNorm)
    # BatchNorm has no groups: a width GroupNorm cannot split is fine.
    wide = eqx.filter_eval_shape(lambda k: ResNetWrapper(10, 18, 6, norm="batch", key=k), getkey())
    assert wide.norm == "batch"
    with pytest.raises(ValueError, match="expected norm to be one of"):
        ResNetWrapper(10, 18, 8, norm="layer", key=getkey())
    assert npx.RunConfig(model="resnet18", width=16, norm="batch").backbone == "resnet18-w16-bn"
    with pytest.raises(ConfigError, match="only the ResNet backbones have a choice of norm"):
        npx.RunConfig(model="paper", norm="batch")
    with pytest.raises(ConfigError, match="BatchNorm backbones train on one device"):
        npx.RunConfig(model="resnet18", norm="batch", mesh="data=2")
