"""Class embeddings: the prototype medoids and their scaling, checked by brute force; fixed
prototypes stay fixed in training."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import noprop_eqx as npx
from noprop_eqx._embeddings import PROTOTYPE_SCALES, one_hot_scale_factor
from noprop_eqx._loop import build_model


def _brute_force_medoid(points: np.ndarray) -> np.ndarray:
    """The point with the smallest median distance to the others, by explicit loops."""
    best, best_median = None, np.inf
    for i, p in enumerate(points):
        others = [np.linalg.norm(p - q) for j, q in enumerate(points) if j != i]
        median = float(np.median(others))
        if median < best_median:
            best, best_median = p, median
    return best


def _images(seed: int = 0, per_class: int = 7, classes: int = 3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 1, 4, 4)) * 3.0
    labels = np.repeat(np.arange(classes), per_class)
    rng.shuffle(labels)
    images = centres[labels] + rng.normal(size=(len(labels), 1, 4, 4))
    return images.astype(np.float32), labels


def test_raw_prototypes_are_the_class_medoids():
    images, labels = _images()
    emb = npx.PrototypeEmbedding(images, labels, 3)
    assert emb.dim == 16 and emb.num_classes == 3
    for c in range(3):
        expected = _brute_force_medoid(images[labels == c].reshape(-1, 16))
        np.testing.assert_allclose(np.asarray(emb.weight[c]), expected, rtol=1e-6)


def test_one_hot_scale_gives_one_hot_mean_squared_distance():
    images, labels = _images(seed=1)
    raw = np.asarray(npx.PrototypeEmbedding(images, labels, 3).weight, dtype=np.float64)
    scaled = np.asarray(
        npx.PrototypeEmbedding(images, labels, 3, scale="one-hot").weight, dtype=np.float64
    )
    # One common factor: the directions and relative sizes are the medoids'.
    ratio = scaled / raw
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
    pairs = list(itertools.combinations(range(3), 2))
    mean_sq = np.mean([np.sum((scaled[i] - scaled[j]) ** 2) for i, j in pairs])
    assert mean_sq == pytest.approx(2.0, rel=1e-5)


def test_one_hot_scale_factor_closed_forms():
    assert one_hot_scale_factor(np.eye(10)) == pytest.approx(1.0)
    assert one_hot_scale_factor(3.0 * np.eye(4, 7)) == pytest.approx(1.0 / 3.0)
    # Two points at distance 4: the factor brings them to distance sqrt(2).
    assert one_hot_scale_factor(np.array([[0.0, 0.0], [4.0, 0.0]])) == pytest.approx(2**0.5 / 4)


def test_prototype_scale_errors():
    images, labels = _images()
    with pytest.raises(ValueError, match=r"scale to be one of \('raw', 'one-hot'\), got 'unit'"):
        npx.PrototypeEmbedding(images, labels, 3, scale="unit")
    with pytest.raises(ValueError, match="at least 2 prototypes"):
        one_hot_scale_factor(np.ones((1, 5)))
    with pytest.raises(ValueError, match="all the same image"):
        one_hot_scale_factor(np.ones((3, 5)))
    assert PROTOTYPE_SCALES == ("raw", "one-hot")


def _digits_dt(fixed: bool):
    ds = npx.data.load_digits()
    model = build_model(
        "DT",
        num_classes=10,
        image_shape=ds.image_shape,
        backbone="simple",
        embedding="prototype",
        num_blocks=3,
        x_train=ds.x_train,
        y_train=ds.y_train,
        fixed_embedding=fixed,
        key=jr.key(0),
    )
    return model, (ds.x_train[:32], ds.y_train[:32])


def _snapshot(tree):
    """Host copies of the array leaves (the step donates, and so deletes, its input model)."""
    return jax.tree.map(lambda a: np.array(a, copy=True), eqx.filter(tree, eqx.is_inexact_array))


def _max_change(new, old_snapshot) -> float:
    diffs = jax.tree.map(
        lambda a, b: np.max(np.abs(np.asarray(a) - b)),
        eqx.filter(new, eqx.is_inexact_array),
        old_snapshot,
    )
    return max(float(d) for d in jax.tree.leaves(diffs))


def test_fixed_prototypes_never_change_in_training():
    """A fixed prototype embedding is bit-for-bit the same after DT steps with a large learning
    rate and weight decay, while a trainable one moves; the blocks train either way."""
    moved = {}
    for fixed in (False, True):
        model, batch = _digits_dt(fixed)
        assert model.embedding.fixed is fixed and model.embedding.trainable is not fixed
        optimizer = npx.paper_optimizer(model, learning_rate=1e-2, weight_decay=0.5)
        opt_state = npx.init_optimizer_state(model, optimizer)
        step = npx.make_dt_step(optimizer)
        blocks, embedding = _snapshot(model.blocks), _snapshot(model.embedding)
        for i in range(3):
            model, opt_state, aux = step(model, opt_state, batch, jr.key(i))
            assert bool(jnp.isfinite(aux["loss"]))
        assert _max_change(model.blocks, blocks) > 1e-3
        moved[fixed] = _max_change(model.embedding, embedding)
    assert moved[True] == 0.0
    assert moved[False] > 1e-3


def test_fixed_embedding_needs_prototypes():
    with pytest.raises(ValueError, match="fixed_embedding applies to the prototype embedding"):
        build_model(
            "DT",
            num_classes=10,
            image_shape=(1, 8, 8),
            embedding="one-hot",
            fixed_embedding=True,
            key=jr.key(0),
        )
