"""Each loss against a slow, literal, per-example reference written here."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import noprop_eqx as npx
from noprop_eqx.models import SimpleCNN
from noprop_eqx.noise_schedules import SigmoidNoiseSchedule

B, M, SHAPE = 4, 4, (1, 8, 8)


def _batch(key):
    kx, ky = jr.split(key)
    return jr.normal(kx, (B, *SHAPE)), jr.randint(ky, (B,), 0, M)


def _simple(time_embed_dim, dim):
    return lambda k: SimpleCNN(
        M, time_embed_dim, embed_dim=dim, image_shape=SHAPE, dropout=0.0, key=k
    )


def _np(a):
    return np.asarray(a, dtype=np.float64)


def _log_softmax(logits):
    logits = _np(logits)
    return logits - logits.max() - math.log(np.exp(logits - logits.max()).sum())


def _q_sample(u, alpha_bar, key):
    """z ~ q(z_t | y) written out: √ᾱ·u + √(1 - ᾱ)·ε, ε = jr.normal(key) (the library's draw)."""
    eps = _np(jr.normal(key, np.shape(u), jnp.float32))
    return math.sqrt(alpha_bar) * _np(u) + math.sqrt(1 - alpha_bar) * eps


def _kl(u, alpha_bar_0):
    d = len(u)
    return 0.5 * (alpha_bar_0 * (u @ u) + d * (1 - alpha_bar_0) - d - d * math.log(1 - alpha_bar_0))


def test_kl_formula_matches_monte_carlo():
    rng = np.random.default_rng(0)
    u = rng.normal(size=5)
    alpha_bar = 0.3
    mean, var = math.sqrt(alpha_bar) * u, 1 - alpha_bar
    z = mean + math.sqrt(var) * rng.normal(size=(400_000, 5))
    log_q = -0.5 * (((z - mean) ** 2) / var).sum(1) - 0.5 * 5 * math.log(2 * math.pi * var)
    log_p = -0.5 * (z**2).sum(1) - 0.5 * 5 * math.log(2 * math.pi)
    mc = np.mean(log_q - log_p)
    closed = float(npx.kl_to_standard_normal(jnp.asarray(u, dtype=jnp.float32), alpha_bar))
    assert closed == pytest.approx(mc, rel=1e-2)
    assert closed == pytest.approx(_kl(u, alpha_bar), rel=1e-5)


def test_sample_q_mean_and_covariance():
    """q(z_t | y) = N(√ᾱ·u, (1 - ᾱ) I): the sample mean is √ᾱ·u (not ᾱ·u or u) and the sample
    covariance is (1 - ᾱ)·I, to Monte-Carlo precision (n = 200,000: the mean's standard error is
    √(0.64/n) ≈ 0.0018, so 0.01 is over 5 standard errors; ᾱ·u differs from √ᾱ·u by ≥ 0.2)."""
    u = jnp.asarray([1.0, -2.0, 0.5], dtype=jnp.float32)
    alpha_bar = 0.36
    z = jax.vmap(lambda k: npx.sample_q(u, alpha_bar, key=k))(jr.split(jr.key(0), 200_000))
    z = _np(z)
    np.testing.assert_allclose(z.mean(0), 0.6 * _np(u), atol=0.01)
    np.testing.assert_allclose(np.cov(z.T), 0.64 * np.eye(3), atol=0.01)


@pytest.mark.parametrize("embedding", ["one-hot", "learned"])
def test_dt_loss_matches_reference(getkey, embedding):
    T = 3
    model = npx.NoPropDT(
        M,
        SHAPE,
        num_blocks=T,
        backbone=_simple(0, M if embedding == "one-hot" else 6),
        embedding=embedding,
        embed_dim=6,
        key=getkey(),
    )
    batch, key = _batch(getkey()), getkey()
    loss, aux = npx.NoPropDT.loss_fn(model, batch, key)

    x, y = batch
    w = model.embedding.matrix()
    # Cosine schedule, written out: ᾱ(τ) = clip(cos²(π/2 (1-τ+s)/(1+s)) / cos²(π/2 s/(1+s))).
    s = 0.008
    alpha_bar = [
        min(
            max(
                math.cos(0.5 * math.pi * (1 - k / T + s) / (1 + s)) ** 2
                / math.cos(0.5 * math.pi * s / (1 + s)) ** 2,
                1e-4,
            ),
            0.9999,
        )
        for k in range(T + 1)
    ]
    snr = [ab / (1 - ab) for ab in alpha_bar]
    # Key use as documented: z_k of example b = sample_q(..., key=split(split(k_z, T+1)[k], B)[b]).
    k_z, _ = jr.split(key)
    level_keys = jr.split(k_z, T + 1)
    ce = kl = 0.0
    denoise = np.zeros(T)
    for b in range(B):
        u = w[y[b]]
        for t in range(1, T + 1):
            z_prev = _q_sample(u, alpha_bar[t - 1], jr.split(level_keys[t - 1], B)[b])
            z_prev = jnp.asarray(z_prev, dtype=jnp.float32)
            logits = _np(eqx.filter_jit(model.block(t - 1))(z_prev, x[b]))
            probs = np.exp(_log_softmax(logits))
            u_hat = probs @ _np(w)
            denoise[t - 1] += (snr[t] - snr[t - 1]) * np.sum((u_hat - _np(u)) ** 2) / B
        z_T = jnp.asarray(_q_sample(u, alpha_bar[T], jr.split(level_keys[T], B)[b]), jnp.float32)
        ce += -_log_softmax(model.readout(z_T))[int(y[b])] / B
        kl += _kl(_np(u), alpha_bar[0]) / B
    expected = ce + kl + 0.5 * T * 0.1 * denoise.mean()
    assert float(aux["ce"]) == pytest.approx(ce, rel=1e-4)
    assert float(aux["kl"]) == pytest.approx(kl, rel=1e-4, abs=1e-6)
    np.testing.assert_allclose(_np(aux["denoise_per_block"]), denoise, rtol=1e-3)
    assert float(loss) == pytest.approx(expected, rel=1e-3)


def test_ct_loss_matches_reference(getkey):
    gamma = 2.5
    model = npx.NoPropCT(
        M, SHAPE, backbone=_simple(16, M), schedule=SigmoidNoiseSchedule(gamma), key=getkey()
    )
    batch, key = _batch(getkey()), getkey()
    loss, aux = npx.NoPropCT.loss_fn(model, batch, key)

    x, y = batch
    w = _np(model.embedding.matrix())
    k_t, k_z, k_z1, _ = jr.split(key, 4)
    ts = np.asarray(jr.uniform(k_t, (B,)), dtype=np.float64)
    sig = lambda v: 1 / (1 + math.exp(-v))
    ce = kl = denoise = 0.0
    for b in range(B):
        t = ts[b]
        alpha_bar = sig(gamma * (2 * t - 1))
        snr_prime = 2 * gamma * math.exp(gamma * (2 * t - 1))  # d/dt exp(γ(2t-1))
        u = w[int(y[b])]
        z_t = jnp.asarray(_q_sample(u, alpha_bar, jr.split(k_z, B)[b]), dtype=jnp.float32)
        logits = eqx.filter_jit(model.net)(z_t, x[b], jnp.asarray(t, dtype=jnp.float32))
        u_hat = np.exp(_log_softmax(logits)) @ w
        denoise += snr_prime * np.sum((u_hat - w[int(y[b])]) ** 2) / B
        z_1 = jnp.asarray(_q_sample(u, sig(gamma), jr.split(k_z1, B)[b]), dtype=jnp.float32)
        ce += -_log_softmax(model.readout(z_1))[int(y[b])] / B
        kl += _kl(w[int(y[b])], sig(-gamma)) / B
    assert float(aux["denoise"]) == pytest.approx(0.5 * 1.0 * denoise, rel=1e-3)
    assert float(aux["ce"]) == pytest.approx(ce, rel=1e-4)
    assert float(aux["kl"]) == pytest.approx(kl, rel=1e-4)
    assert float(loss) == pytest.approx(ce + kl + 0.5 * denoise, rel=1e-3)


@pytest.mark.parametrize(
    "embedding, z_input", [("one-hot", "full"), ("learned", "full"), ("learned", "span")]
)
def test_fm_loss_matches_reference(getkey, embedding, z_input):
    """With z_input "span" the network sees P z_t, P = Wᵀ (W Wᵀ)⁻¹ W the projection onto the
    rows of W_embed, written here with a float64 inverse."""
    dim = M if embedding == "one-hot" else 6
    model = npx.NoPropFM(
        M,
        SHAPE,
        backbone=_simple(16, dim),
        embedding=embedding,
        embed_dim=6,
        z_input=z_input,
        key=getkey(),
    )
    batch, key = _batch(getkey()), getkey()
    loss, aux = npx.NoPropFM.loss_fn(model, batch, key)

    x, y = batch
    w = _np(model.embedding.matrix())
    k_t, k_z0, _, _ = jr.split(key, 4)
    ts = np.asarray(jr.uniform(k_t, (B,)), dtype=np.float64)
    z0s = _np(jr.normal(k_z0, (B, dim)))
    project = w.T @ np.linalg.inv(w @ w.T) @ w if z_input == "span" else np.eye(dim)
    flow = ce = unprojected = 0.0
    for b in range(B):
        t, z0, u = ts[b], z0s[b], w[int(y[b])]
        z_t = t * u + (1 - t) * z0
        logits = _np(
            eqx.filter_jit(model.net)(
                jnp.asarray(project @ z_t, dtype=jnp.float32),
                x[b],
                jnp.asarray(t, dtype=jnp.float32),
            )
        )
        v = logits @ w
        flow += np.sum((v - (u - z0)) ** 2) / B
        if z_input == "span":  # the same network on z_t itself, which the loss must not use
            logits_full = eqx.filter_jit(model.net)(
                jnp.asarray(z_t, dtype=jnp.float32), x[b], jnp.asarray(t, dtype=jnp.float32)
            )
            unprojected += np.sum((_np(logits_full) @ w - (u - z0)) ** 2) / B
        z1 = jnp.asarray(z_t + (1 - t) * v, dtype=jnp.float32)
        ce += -_log_softmax(model.readout(z1))[int(y[b])] / B
    assert float(aux["flow"]) == pytest.approx(flow, rel=1e-3)
    if z_input == "span":  # the input matters by more than the tolerance above
        assert abs(unprojected - flow) > 5e-3 * flow
    if embedding == "learned":
        assert float(aux["ce"]) == pytest.approx(ce, rel=1e-3)
        assert float(loss) == pytest.approx(flow + ce, rel=1e-3)
    else:
        assert "ce" not in aux
        assert float(loss) == pytest.approx(flow, rel=1e-3)


def test_dt_no_gradient_crosses_blocks(getkey):
    T = 4
    model = npx.NoPropDT(M, SHAPE, num_blocks=T, backbone=_simple(0, M), key=getkey())
    batch, key = _batch(getkey()), getkey()
    # One compiled gradient of block j's term, j a traced index (compiled once, called T times).
    grad_of_term = eqx.filter_jit(
        lambda m, j: eqx.filter_grad(
            lambda m: npx.NoPropDT.loss_fn(m, batch, key)[1]["denoise_per_block"][j]
        )(m)
    )
    for j in range(T):
        grads = grad_of_term(model, jnp.asarray(j))
        for leaf in jax.tree.leaves(grads.blocks):
            norms = np.abs(np.asarray(leaf)).reshape(T, -1).sum(axis=1)
            assert all(norms[i] == 0.0 for i in range(T) if i != j)
        total = sum(np.abs(np.asarray(leaf))[j].sum() for leaf in jax.tree.leaves(grads.blocks))
        assert total > 0.0


def test_stratified_times_cover_each_stratum_once():
    """t_i = (u + i/B) mod 1: exactly one t in each [k/B, (k+1)/B), and over many batches each
    t_i is uniform on [0, 1] (so Eq. 9's and Eq. 11's expectations are unchanged)."""
    from noprop_eqx._losses import sample_times

    batch = 16
    draws = np.stack([np.asarray(sample_times(jr.key(i), batch, "stratified")) for i in range(400)])
    assert draws.min() >= 0 and draws.max() < 1
    for row in draws[:20]:
        assert sorted(np.floor(row * batch).astype(int)) == list(range(batch))
    # Each position's marginal: mean 1/2, variance 1/12 (U[0, 1]); 400 draws -> s.e. ~0.014.
    assert np.abs(draws.mean(axis=0) - 0.5).max() < 0.08
    assert np.abs(draws.var(axis=0) - 1 / 12).max() < 0.03
    uniform = np.asarray(sample_times(jr.key(0), batch, "uniform"))
    assert np.array_equal(uniform, np.asarray(jr.uniform(jr.key(0), (batch,))))


def test_span_projection_against_numpy(getkey):
    """`span_projection` is the orthogonal projection onto the rows of W: it keeps the rows,
    is idempotent, leaves a residual orthogonal to every row, and equals a float64 pinv, also
    for rows far from orthogonal and in bfloat16; with no more dimensions than rows it is the
    identity."""
    from noprop_eqx._fm import span_projection

    w = jr.normal(getkey(), (4, 9))
    z = jr.normal(getkey(), (5, 9))
    p = span_projection(z, w)
    pinv = np.linalg.pinv(_np(w))
    np.testing.assert_allclose(_np(p), _np(z) @ pinv @ _np(w), atol=1e-5)
    np.testing.assert_allclose(_np(span_projection(w, w)), _np(w), atol=1e-5)
    np.testing.assert_allclose(_np(span_projection(p, w)), _np(p), atol=1e-5)
    np.testing.assert_allclose(_np((z - p) @ w.T), 0.0, atol=1e-5)
    # rows sharing a large common part (as images do): cond(W Wᵀ) in the hundreds
    close = w + 5.0 * jr.normal(getkey(), (1, 9))
    expected = _np(z) @ np.linalg.pinv(_np(close)) @ _np(close)
    np.testing.assert_allclose(_np(span_projection(z, close)), expected, atol=1e-4)
    half = span_projection(z.astype(jnp.bfloat16), close.astype(jnp.bfloat16))
    assert half.dtype == jnp.bfloat16
    half_w = _np(close.astype(jnp.bfloat16))
    half_expected = _np(z.astype(jnp.bfloat16)) @ np.linalg.pinv(half_w) @ half_w
    np.testing.assert_allclose(_np(half), half_expected, atol=0.05)
    wide = jr.normal(getkey(), (12, 9))  # 12 rows in 9 dimensions span everything
    assert span_projection(z, wide) is z


def test_span_projection_dependent_rows_and_gradient(getkey):
    """Orthonormal rows to float32 precision for rows far from orthogonal; rows that depend on
    earlier ones add zero rows, so the projection is onto W's span at any rank (pinv's); the
    gradient with respect to W (which W_embed trains through) is that of the closed form
    z Wᵀ (W Wᵀ)⁻¹ W."""
    from noprop_eqx._fm import orthonormal_rows, span_projection

    w = jr.normal(getkey(), (4, 9))
    close = w + 5.0 * jr.normal(getkey(), (1, 9))  # cond(W Wᵀ) in the hundreds
    q = orthonormal_rows(close)
    np.testing.assert_allclose(_np(q @ q.T), np.eye(4), atol=2e-6)
    # rank 2: row 2 is the sum of rows 0 and 1, row 3 repeats row 0
    dependent = jnp.stack([w[0], w[1], w[0] + w[1], w[0]])
    q = orthonormal_rows(dependent)
    np.testing.assert_allclose(np.linalg.norm(_np(q), axis=1), [1.0, 1.0, 0.0, 0.0], atol=1e-6)
    z = jr.normal(getkey(), (5, 9))
    # float32 rounding leaves the dependent rows independent by 1e-7 in float64: pinv's cut
    # must be float32's, not float64's
    pinv = np.linalg.pinv(_np(dependent), rcond=1e-5)
    expected = _np(z) @ pinv @ _np(dependent)
    assert np.linalg.matrix_rank(pinv, tol=1e-3) == 2
    np.testing.assert_allclose(_np(span_projection(z, dependent)), expected, atol=1e-5)

    def closed_form(z, w):
        return z @ w.T @ jnp.linalg.solve(w @ w.T, w)

    def objective(projection):
        return lambda z, w: jnp.sum(jnp.sin(3.0 * projection(z, w)))

    got = jax.grad(objective(span_projection), argnums=(0, 1))(z, w)
    want = jax.grad(objective(closed_form), argnums=(0, 1))(z, w)
    for g, h in zip(got, want, strict=True):
        assert np.abs(_np(h)).max() > 0.1  # a gradient worth comparing
        np.testing.assert_allclose(_np(g), _np(h), atol=1e-4)


def test_fm_span_input_ignores_noise_outside_the_span(getkey):
    """With z_input "span" the velocity field does not depend on the part of z outside the span
    of the embeddings; with "full" it does. One-hot embeddings span everything, so there the
    two inputs give the same loss."""
    dim = 6
    key = getkey()

    def fm(z_input, **kwargs):  # the same weights for either input
        return npx.NoPropFM(M, SHAPE, z_input=z_input, key=key, **kwargs)

    learned = dict(backbone=_simple(16, dim), embedding="learned", embed_dim=dim)
    span, full = fm("span", **learned), fm("full", **learned)
    x, _ = _batch(getkey())
    w = span.embedding.matrix()
    z = jr.normal(getkey(), (B, dim))
    off = jr.normal(getkey(), (B, dim))
    off = off - (off @ jnp.linalg.pinv(w)) @ w  # outside the span
    t = jnp.asarray(0.3)
    v_span = span.vector_field(t, z, x)
    np.testing.assert_allclose(_np(span.vector_field(t, z + 3 * off, x)), _np(v_span), atol=1e-4)
    moved = full.vector_field(t, z + 3 * off, x) - full.vector_field(t, z, x)
    assert float(jnp.max(jnp.abs(moved))) > 1e-3

    one_hot, paper = fm("span", backbone=_simple(16, M)), fm("full", backbone=_simple(16, M))
    batch, k = _batch(getkey()), getkey()
    loss_span, _ = npx.NoPropFM.loss_fn(one_hot, batch, k)
    loss_full, _ = npx.NoPropFM.loss_fn(paper, batch, k)
    assert float(loss_span) == pytest.approx(float(loss_full), rel=1e-5)
    with pytest.raises(ValueError, match=r"z_input to be one of \('full', 'span'\)"):
        npx.NoPropFM(M, SHAPE, backbone=_simple(16, M), z_input="proj", key=key)


def test_build_model_passes_fm_z_input_to_fm_only():
    from noprop_eqx._loop import build_model

    def build(variant, **kwargs):
        return build_model(
            variant, num_classes=M, image_shape=SHAPE, backbone="simple", embedding="learned",
            embed_dim=6, key=jr.key(0), **kwargs,
        )  # fmt: skip

    assert build("FM", fm_z_input="span").z_input == "span"
    assert build("FM").z_input == "full"
    with pytest.raises(ValueError, match="fm_z_input applies to variant 'FM' only"):
        build("CT", fm_z_input="span")
