"""Checkpoints round-trip, and a resumed run reproduces an uninterrupted one exactly."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import noprop_eqx as npx


def _tiny_model(key, width=8):
    return eqx.nn.MLP(4, 3, width, 1, key=key)


def _optimizer():
    return optax.adamw(1e-2, weight_decay=1e-3)


def _trained(key):
    model = _tiny_model(key)
    opt_state = npx.init_optimizer_state(model, _optimizer())

    def loss_fn(model, batch, key):
        del key
        x, y = batch
        loss = jnp.mean((jax.vmap(model)(x) - y) ** 2)
        return loss, dict(loss=loss)

    step = npx.make_step(loss_fn, _optimizer())
    batch = (jr.normal(jr.fold_in(key, 1), (5, 4)), jr.normal(jr.fold_in(key, 2), (5, 3)))
    model, opt_state, _ = step(model, opt_state, batch, jr.fold_in(key, 3))
    return model, opt_state


def _assert_trees_equal(a, b):
    la, lb = (
        jax.tree.leaves(eqx.filter(a, eqx.is_array)),
        jax.tree.leaves(eqx.filter(b, eqx.is_array)),
    )
    assert len(la) == len(lb)
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_checkpoint_round_trip(tmp_path, getkey):
    model, opt_state = _trained(getkey())
    run_key = getkey()
    path = npx.save_checkpoint(tmp_path / "ck.eqx", model, opt_state, epoch=3, key=run_key)
    skeleton = _tiny_model(getkey())
    skeleton_opt = npx.init_optimizer_state(skeleton, _optimizer())
    model2, opt2, epoch, key2 = npx.load_checkpoint(path, skeleton, skeleton_opt, key=getkey())
    assert epoch == 3
    _assert_trees_equal(model, model2)
    _assert_trees_equal(opt_state, opt2)
    np.testing.assert_array_equal(jr.key_data(key2), jr.key_data(run_key))
    assert not (tmp_path / "ck.eqx.tmp").exists()


def test_checkpoint_mismatch_is_a_clear_error(tmp_path, getkey):
    model, opt_state = _trained(getkey())
    path = npx.save_checkpoint(tmp_path / "ck.eqx", model, opt_state, epoch=1, key=getkey())
    other = _tiny_model(getkey(), width=6)
    other_opt = npx.init_optimizer_state(other, _optimizer())
    with pytest.raises(ValueError, match="does not match"):
        npx.load_checkpoint(path, other, other_opt, key=getkey())
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        npx.load_checkpoint(tmp_path / "missing.eqx", other, other_opt, key=getkey())
    with pytest.raises(ValueError, match="epoch"):
        npx.save_checkpoint(tmp_path / "x.eqx", model, opt_state, epoch=-1, key=getkey())


def test_epoch_keys_depend_only_on_base_key_and_epoch():
    base = jr.key(0)
    a = [jr.key_data(k) for k in npx.epoch_keys(base, 3)]
    b = [jr.key_data(k) for k in npx.epoch_keys(jr.key(0), 3)]
    c = [jr.key_data(k) for k in npx.epoch_keys(base, 4)]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[0], a[1])
