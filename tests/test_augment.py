"""Random-shift augmentation: against a brute-force translation, its offsets, its keys in the
training loop, and the CLI option."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import noprop_eqx as npx
from noprop_eqx import data as data_lib
from noprop_eqx.__main__ import main

from .conftest import as_a_user


def _translate_brute_force(image, dy, dx, fill):
    """Output[k, i, j] = image[k, i + dy, j + dx], else fill[k], by explicit loops."""
    c, h, w = image.shape
    out = np.empty_like(image)
    for k in range(c):
        for i in range(h):
            for j in range(w):
                src_i, src_j = i + dy, j + dx
                inside = 0 <= src_i < h and 0 <= src_j < w
                out[k, i, j] = image[k, src_i, src_j] if inside else fill[k]
    return out


def test_shift_images_matches_brute_force():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(9, 2, 5, 7)).astype(np.float32)
    offsets = np.array([(dy, dx) for dy in (-2, 0, 2) for dx in (-1, 0, 2)], dtype=np.int32)
    fill = np.array([-0.5, 3.0], dtype=np.float32)
    out = np.asarray(data_lib.shift_images(images, offsets, fill, max_shift=2))
    for b, (dy, dx) in enumerate(offsets):
        np.testing.assert_array_equal(out[b], _translate_brute_force(images[b], dy, dx, fill))


def test_random_shift_offsets_are_uniform_and_keyed():
    # One bright pixel at the centre of a black 9x9 image: where it lands gives the offset.
    n, s = 4000, 2
    images = np.zeros((n, 1, 9, 9), np.float32)
    images[:, 0, 4, 4] = 1.0
    out = np.asarray(data_lib.random_shift(images, max_shift=s, fill=[0.0], key=jr.key(0)))
    assert np.all(out.reshape(n, -1).sum(axis=1) == 1.0)  # the pixel is moved, never lost
    flat = out[:, 0].reshape(n, -1).argmax(axis=1)
    rows, cols = flat // 9 - 4, flat % 9 - 4
    counts = np.zeros((2 * s + 1, 2 * s + 1), int)
    np.add.at(counts, (rows + s, cols + s), 1)
    expected = n / counts.size
    assert counts.min() > 0.6 * expected and counts.max() < 1.4 * expected, counts
    again = data_lib.random_shift(images, max_shift=s, fill=[0.0], key=jr.key(0))
    other = data_lib.random_shift(images, max_shift=s, fill=[0.0], key=jr.key(1))
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, np.asarray(other))


def test_random_shift_zero_is_identity_and_bad_input_is_a_clear_error():
    x = np.random.default_rng(1).normal(size=(3, 1, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(
        data_lib.random_shift(x, max_shift=0, fill=[0.0], key=jr.key(0)), x
    )
    with pytest.raises(ValueError, match="non-negative int, got -1"):
        data_lib.random_shift(x, max_shift=-1, fill=[0.0], key=jr.key(0))
    with pytest.raises(ValueError, match=r"one fill value per channel \(1\), got shape \(3,\)"):
        data_lib.random_shift(x, max_shift=1, fill=[0.0, 0.0, 0.0], key=jr.key(0))
    with as_a_user():  # the library's messages, not the suite's type checker's
        with pytest.raises(TypeError, match="expected max_shift a non-negative int, got float"):
            data_lib.random_shift(x, max_shift=1.5, fill=[0.0], key=jr.key(0))
        with pytest.raises(ValueError, match=r"shape \(batch, c, h, w\), got \(1, 4, 4\)"):
            data_lib.random_shift(x[0], max_shift=1, fill=[0.0], key=jr.key(0))


def test_background_is_the_normalised_black_pixel():
    ds = data_lib.load_digits()
    black = data_lib.normalise(np.zeros((1, 8, 8), np.uint8), ds.mean, ds.std, scale=16.0)
    np.testing.assert_allclose(ds.background, black[0, :, 0, 0], rtol=1e-6)
    assert ds.background.shape == (1,)


def test_train_epoch_augments_each_batch_with_its_own_key():
    """The hook sees every batch in order, each with a distinct key from `augment_key`, and the
    shuffle is the one of the run without augmentation."""
    x = np.arange(40, dtype=np.float32).reshape(10, 1, 2, 2)
    y = np.arange(10, dtype=np.int32) % 3
    seen, keys = [], []

    def record(images, *, key):
        keys.append(jr.key_data(key))
        return images + 1000.0  # visible in what the step gets

    def step(model, opt_state, batch, key):
        seen.append(np.asarray(batch[0]))
        return model, opt_state, {"loss": jnp.float32(0.0)}

    base = jr.key(3)
    npx.train_epoch(
        step, None, None, x, y, batch_size=4, key=base, epoch=2, progress=False, augment=record
    )
    k_shuffle, _ = npx.epoch_keys(base, 2)
    plain = [bx for bx, _ in data_lib.train_batches(x, y, 4, key=k_shuffle)]
    assert len(seen) == len(plain) == 3
    for got, want in zip(seen, plain, strict=True):
        np.testing.assert_array_equal(got, want + 1000.0)
    k_aug = npx.augment_key(base, 2)
    for i, k in enumerate(keys):
        np.testing.assert_array_equal(k, jr.key_data(jr.fold_in(k_aug, i)))
    assert len({bytes(np.asarray(k)) for k in keys}) == 3
    for k in npx.epoch_keys(base, 2):  # a stream apart from the shuffle and step keys
        assert not np.array_equal(jr.key_data(k), jr.key_data(k_aug))


def test_cli_bad_augment_shift_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "digits", "--augment-shift", "-2", "--out", str(tmp_path)])
    assert "expected a non-negative integer, got -2" in capsys.readouterr().err
