"""The backprop baseline (Eq. 17-19) against a literal reference written here, its end-to-end
gradient, and that it learns.

What `BackpropBaseline` computes (noprop_eqx/_backprop.py), for one example x:

    z_0 = 0 (a zero vector of the embedding's dimension d; no noise)
    for t = 1..T:  û_t = softmax(f_θt(z_{t-1}, x)) · W_embed          (f_θt: block t's logits)
                   z_t = (1 - α_t) z_{t-1} + α_t û_t,   α_t = tanh(w_t)   (w_t: `mixing[t-1]`)
    loss = mean over the batch of CE(R z_T + r, y) = logsumexp(R z_T + r) - (R z_T + r)_y,

with every parameter (blocks, w, readout R and r, a learned W_embed) trained end to end.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import noprop_eqx as npx
from noprop_eqx.data import load_dataset, train_batches
from noprop_eqx.models import AbstractBackbone

SHAPE, M, D, T, B = (1, 4, 4), 4, 6, 3, 5


class _MLP(AbstractBackbone):
    """logits = W2 tanh(W1 [z; x] + b1) + b2: a block small enough to write out in numpy (and
    fast to build and compile)."""

    hidden: eqx.nn.Linear
    out: eqx.nn.Linear
    num_classes: int = eqx.field(static=True)
    embed_dim: int = eqx.field(static=True)
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    time_conditioned: bool = eqx.field(static=True)

    def __init__(self, key, *, num_classes=M, embed_dim=D, image_shape=SHAPE, width=8):
        k1, k2 = jr.split(key)
        self.hidden = eqx.nn.Linear(embed_dim + math.prod(image_shape), width, key=k1)
        self.out = eqx.nn.Linear(width, num_classes, key=k2)
        self.num_classes, self.embed_dim, self.image_shape = num_classes, embed_dim, image_shape
        self.time_conditioned = False

    def __call__(self, z, x, t=None, *, key=None):
        return self.out(jnp.tanh(self.hidden(jnp.concatenate([z, x.reshape(-1)]))))


@pytest.fixture(scope="module")
def model_and_batch():
    """A 3-block baseline with a learned 6-d embedding, and a batch of 5 (built once: both
    tests only read them). Distinct gates (one negative) and a readout moved off its
    nearest-embedding start, so that a mixed-up α_t, block order or readout shows."""
    model = npx.BackpropBaseline(
        M, SHAPE, num_blocks=T, backbone=_MLP, embedding="learned", embed_dim=D, key=jr.key(0)
    )
    rng = np.random.default_rng(0)
    model = eqx.tree_at(
        lambda m: (m.mixing, m.readout.weight, m.readout.bias),
        model,
        (
            jnp.asarray([0.3, -0.4, 1.1]),
            model.readout.weight + jnp.asarray(rng.normal(size=(M, D)), jnp.float32),
            jnp.asarray(rng.normal(size=M), jnp.float32),
        ),
    )
    x = jnp.asarray(rng.normal(size=(B, *SHAPE)), jnp.float32)
    y = jnp.asarray([0, 3, 1, 2, 3], jnp.int32)
    return model, (x, y)


def _params(model):
    """The parameters the reference needs, as a plain dict (stacked blocks: leading axis T)."""
    return dict(
        w1=model.blocks.hidden.weight,
        b1=model.blocks.hidden.bias,
        w2=model.blocks.out.weight,
        b2=model.blocks.out.bias,
        mixing=model.mixing,
        embed=model.embedding.weight,
        readout_w=model.readout.weight,
        readout_b=model.readout.bias,
    )


def _reference_loss(p, x, y, xp):
    """Eq. 17-19 written out, one example at a time; `xp` is numpy (float64 values) or
    jax.numpy (for the reference gradient)."""
    losses = []
    for i in range(len(y)):
        z = xp.zeros(D)
        for t in range(T):
            h = xp.tanh(p["w1"][t] @ xp.concatenate([z, x[i].reshape(-1)]) + p["b1"][t])
            logits = p["w2"][t] @ h + p["b2"][t]
            probs = xp.exp(logits - logits.max())
            probs = probs / probs.sum()
            u_hat = probs @ p["embed"]
            alpha = xp.tanh(p["mixing"][t])
            z = (1.0 - alpha) * z + alpha * u_hat
        out = p["readout_w"] @ z + p["readout_b"]
        losses.append(out.max() + xp.log(xp.exp(out - out.max()).sum()) - out[int(y[i])])
    return sum(losses) / len(losses)


def _np64(tree):
    return jax.tree.map(lambda a: np.asarray(a, dtype=np.float64), tree)


def test_forward_matches_eq_17_to_19(model_and_batch):
    model, (x, y) = model_and_batch
    loss, aux = eqx.filter_jit(npx.BackpropBaseline.loss_fn)(model, (x, y), jr.key(1))
    expected = _reference_loss(_np64(_params(model)), np.asarray(x, np.float64), np.asarray(y), np)
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert float(aux["ce"]) == pytest.approx(expected, rel=1e-4)
    # Evaluation runs the same chain (this block has no dropout): predict = argmax of it.
    logits, predictions = eqx.filter_jit(lambda m, x: (m.logits(x), m.predict(x)))(model, x)
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(y)
    ce = [np.log(np.exp(row).sum()) - row[k] for row, k in zip(logits, labels, strict=True)]
    assert float(np.mean(ce)) == pytest.approx(expected, rel=1e-4)
    np.testing.assert_array_equal(predictions, logits.argmax(-1))


def test_gradient_reaches_every_block_end_to_end(model_and_batch):
    """One loss evaluation gives every block, every gate w_t, the readout and the learned
    W_embed a non-zero gradient (in NoProp-DT each block's loss sees only its own block:
    tests/test_losses.py::test_dt_no_gradient_crosses_blocks). And the gradient is that of the
    whole chain: equal to autodiff of the reference, including the paths from block t's
    output through blocks t+1..T (a stop_gradient between blocks would change it)."""
    model, batch = model_and_batch
    loss = lambda m: npx.BackpropBaseline.loss_fn(m, batch, jr.key(0))[0]  # noqa: E731
    grads = eqx.filter_jit(eqx.filter_grad(loss))(model)
    got = _params(grads)
    for name in ("w1", "b1", "w2", "b2"):
        for t in range(T):
            assert np.abs(np.asarray(got[name][t])).max() > 1e-6, (name, t)
    assert np.all(np.abs(np.asarray(got["mixing"])) > 1e-6)
    for name in ("embed", "readout_w", "readout_b"):
        assert np.abs(np.asarray(got[name])).max() > 1e-6, name

    x, y = batch
    ref_grad = jax.jit(jax.grad(lambda p: _reference_loss(p, x, np.asarray(y), jnp)))
    expected = ref_grad(_params(model))
    for name, g in expected.items():
        g, h = np.asarray(g, np.float64), np.asarray(got[name], np.float64)
        np.testing.assert_allclose(h, g, rtol=1e-3, atol=1e-4 * np.abs(g).max(), err_msg=name)
    # Block 1's input weights on z see z_0 = 0: their gradient is exactly zero; later blocks'
    # are not (they see z_{t-1} ≠ 0).
    assert np.all(np.asarray(got["w1"][0, :, :D]) == 0.0)
    assert np.all(np.abs(np.asarray(got["w1"][1:, :, :D])).max(axis=(1, 2)) > 1e-6)


def test_learns_digits():
    """200 AdamW steps (paper_optimizer: lr 1e-3, wd 1e-3) of batch 64 on scikit-learn digits,
    three MLP blocks of width 64, one-hot embeddings. Measured test accuracy after 200 steps:
    0.960 (model key 0, data key 1, as here); 0.967 and 0.958 with keys (1, 2) and (2, 3);
    0.89-0.91 after 100 steps. (Three SimpleCNN blocks: 0.947-0.964 at 200 steps, but their
    build and compile take ~15 s here.) Chance is 0.10; the threshold 0.85 leaves room for
    platform differences."""
    data = load_dataset("digits")
    block = lambda k: _MLP(k, num_classes=10, embed_dim=10, image_shape=(1, 8, 8), width=64)  # noqa: E731
    model = npx.BackpropBaseline(10, data.image_shape, num_blocks=3, backbone=block, key=jr.key(0))
    optimizer = npx.paper_optimizer(model)
    step = npx.make_step(npx.BackpropBaseline.loss_fn, optimizer)
    opt_state = npx.init_optimizer_state(model, optimizer)
    key, steps = jr.key(1), 0
    while steps < 200:
        k_epoch = jr.fold_in(key, steps)
        for batch in train_batches(data.x_train, data.y_train, 64, key=k_epoch):
            model, opt_state, aux = step(model, opt_state, batch, jr.fold_in(k_epoch, steps))
            steps += 1
            if steps == 200:
                break
    assert bool(jnp.isfinite(aux["loss"]))
    accuracy = npx.evaluate_accuracy(model, data.x_test, data.y_test)
    assert accuracy >= 0.85, f"backprop baseline on digits after {steps} steps: {accuracy:.4f}"
