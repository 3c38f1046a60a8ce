"""NoProp-DT inference (Eq. 3) and its two read-outs against a literal per-example reference."""

import math

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import noprop_eqx as npx

B, M, T, SHAPE = 5, 4, 3, (1, 8, 8)


def _model(key, embedding="one-hot"):
    model = npx.NoPropDT(
        M, SHAPE, num_blocks=T, backbone="simple", embedding=embedding, embed_dim=6, key=key
    )
    return model, [model.block(t) for t in range(T)]


@eqx.filter_jit
def _call(block, z, x):
    return block(z, x)


@eqx.filter_jit
def _chain(model, x, key):
    return model.denoise_chain(x, key=key)


def _reference_chain(model, blocks, x, z0, noise):
    """Eq. 3 one example at a time, in float64, from the schedule's alpha-bar grid: returns the
    final z and every block's class logits."""
    ab = np.asarray(npx.noise_schedules.alpha_bar_grid(model.schedule, T), dtype=np.float64)
    w = np.asarray(model.embedding.matrix(), dtype=np.float64)
    zs, all_logits = [], []
    for n in range(len(x)):
        z, per_block = np.asarray(z0[n], dtype=np.float64), []
        for t in range(1, T + 1):
            # q(z_{t-1} | z_t, y) read forwards: alpha_{t-1} = ab[t-1] / ab[t].
            alpha = ab[t - 1] / ab[t]
            a = math.sqrt(ab[t]) * (1 - alpha) / (1 - ab[t - 1])
            b = math.sqrt(alpha) * (1 - ab[t]) / (1 - ab[t - 1])
            c = (1 - ab[t]) * (1 - alpha) / (1 - ab[t - 1])
            logits = np.asarray(_call(blocks[t - 1], jnp.asarray(z, jnp.float32), x[n]), np.float64)
            p = np.exp(logits - logits.max())
            p /= p.sum()
            z = a * (p @ w) + b * z + math.sqrt(c) * np.asarray(noise[t - 1][n], np.float64)
            per_block.append(logits)
        zs.append(z)
        all_logits.append(per_block)
    return np.stack(zs), np.transpose(np.asarray(all_logits), (1, 0, 2))


@pytest.mark.parametrize("embedding", ["one-hot", "learned"])
def test_dt_chain_matches_reference(getkey, embedding):
    model, blocks = _model(getkey(), embedding)
    x = jr.normal(getkey(), (B, *SHAPE))
    dim = model.embedding.dim
    # Deterministic chain: z_0 = 0 and no noise.
    zeros = np.zeros((T, B, dim))
    z, logits = _chain(model, x, None)
    z_ref, logits_ref = _reference_chain(model, blocks, x, zeros[0], zeros)
    np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits, logits_ref, rtol=1e-4, atol=1e-5)
    # Stochastic chain: the same draws as `denoise_chain` makes from its key.
    key = getkey()
    k0, k_eps = jr.split(key)
    z0, noise = jr.normal(k0, (B, dim)), jr.normal(k_eps, (T, B, dim))
    z, logits = _chain(model, x, key)
    z_ref, logits_ref = _reference_chain(model, blocks, x, z0, noise)
    np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits, logits_ref, rtol=1e-4, atol=1e-5)


def test_dt_readouts(getkey):
    model, blocks = _model(getkey(), "learned")
    x = jr.normal(getkey(), (B, *SHAPE))
    z_ref, logits_ref = _reference_chain(
        model, blocks, x, np.zeros((B, model.embedding.dim)), np.zeros((T, B, 6))
    )
    # "final": the linear readout of z_T.
    w, bias = np.asarray(model.readout.weight, np.float64), np.asarray(model.readout.bias)
    np.testing.assert_allclose(model.logits(x), z_ref @ w.T + bias, rtol=1e-4, atol=1e-4)
    # "blocks": log of the mean of the T blocks' softmax probabilities.
    probs = np.exp(logits_ref - logits_ref.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = np.log(probs.mean(0))
    np.testing.assert_allclose(model.logits(x, readout="blocks"), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(model.predict(x, readout="blocks"), np.argmax(expected, axis=-1))
    # evaluate_accuracy counts right and wrong answers: two of five labels changed gives 3/5,
    # in one batch and in batches of 2 (the last one padded by repeating an example, which must
    # not be counted), and of 3.
    labels = np.argmax(expected, -1)
    labels[:2] = (labels[:2] + 1) % M
    for batch_size in (1000, 2, 3):
        got = npx.evaluate_accuracy(
            model, np.asarray(x), labels, readout="blocks", batch_size=batch_size
        )
        assert got == pytest.approx(3 / 5), batch_size
    with pytest.raises(ValueError, match=r"expected readout to be one of \('final', 'blocks'\)"):
        model.logits(x, readout="mean")
