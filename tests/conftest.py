from pathlib import Path

import jax
import jax.random as jr
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def getkey():
    """A fresh key on every call: never reuse a key for two draws."""
    keys = iter(jr.split(jr.key(5678), 1000))
    return lambda: next(keys)
