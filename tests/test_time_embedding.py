"""`SinusoidalTimeEmbedding` against its formula written out here.

The convention (noprop_eqx/models/_time_embedding.py): for dim = 2k and t used as given (no
×1000 scaling of t; the large frequencies play that role),

    f_i = F^(i / (k - 1)), i = 0..k-1   (geometric from 1 to F = max_frequency; f_0 = 1 if k = 1),
    e(t) = [sin(f_0 t), ..., sin(f_{k-1} t), cos(f_0 t), ..., cos(f_{k-1} t)]   (all sines first).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from noprop_eqx.models import SinusoidalTimeEmbedding

TIMES = (0.0, 0.013, 0.25, 0.5, 0.9, 1.0)


def _reference(t: float, dim: int, max_frequency: float) -> np.ndarray:
    k = dim // 2
    freqs = [max_frequency ** (i / (k - 1)) if k > 1 else 1.0 for i in range(k)]
    return np.array([math.sin(f * t) for f in freqs] + [math.cos(f * t) for f in freqs])


@pytest.mark.parametrize("dim, max_frequency", [(64, 1000.0), (8, 1000.0), (6, 3.0), (2, 1000.0)])
def test_values_match_the_formula(dim, max_frequency):
    embed = SinusoidalTimeEmbedding(dim, max_frequency)
    # One compiled call for every t: the same function the networks vmap over their batch.
    got = eqx.filter_jit(lambda e, t: jax.vmap(e)(t))(embed, jnp.asarray(TIMES))
    got = np.asarray(got, dtype=np.float64)
    for t, row in zip(TIMES, got, strict=True):
        # float32 angles up to f·t = 1000: sin/cos of an angle rounded to ~6e-5 absolute.
        np.testing.assert_allclose(row, _reference(t, dim, max_frequency), atol=2e-4, err_msg=t)


def test_shape_dtype_and_endpoints():
    embed = SinusoidalTimeEmbedding(64)
    e = embed(jnp.asarray(0.3))
    assert e.shape == (64,) and e.dtype == jnp.float32
    assert jax.vmap(embed)(jnp.linspace(0.0, 1.0, 5)).shape == (5, 64)
    # t = 0: every sine is 0 and every cosine 1.
    np.testing.assert_array_equal(np.asarray(embed(jnp.asarray(0.0))), [0.0] * 32 + [1.0] * 32)
    # The lowest frequency is 1 and the highest is max_frequency: the first sine/cosine pair is
    # (sin t, cos t), the last pair (sin 1000 t, cos 1000 t).
    t = 0.3
    assert float(e[0]) == pytest.approx(math.sin(t), abs=1e-6)
    assert float(e[32]) == pytest.approx(math.cos(t), abs=1e-6)
    assert float(e[31]) == pytest.approx(math.sin(1000.0 * t), abs=2e-4)
    assert float(e[63]) == pytest.approx(math.cos(1000.0 * t), abs=2e-4)


@pytest.mark.parametrize("dim", [0, 1, 7])
def test_odd_or_too_small_dimension_raises(dim):
    with pytest.raises(ValueError, match=f"even time embedding dimension >= 2, got {dim}"):
        SinusoidalTimeEmbedding(dim)
