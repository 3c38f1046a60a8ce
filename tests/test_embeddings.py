"""Class embeddings: the prototype medoids and their scaling, checked by brute force."""

import itertools

import numpy as np
import pytest

import noprop_eqx as npx
from noprop_eqx._embeddings import PROTOTYPE_SCALES, one_hot_scale_factor


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
