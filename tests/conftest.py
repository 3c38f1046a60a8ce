import contextlib
from pathlib import Path

import jax
import jax.random as jr
import jaxtyping
import pytest

# Strict rank promotion catches silent broadcasting bugs. (Strict *dtype* promotion is left off:
# optax's Adam bias correction mixes a Python float with an int32 step count.)
jax.config.update("jax_numpy_rank_promotion", "raise")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def getkey():
    """A fresh key on every call: never reuse a key for two draws."""
    keys = iter(jr.split(jr.key(5678), 1000))
    return lambda: next(keys)


@contextlib.contextmanager
def as_a_user():
    """Runs the block without the suite's runtime type checks (pytest's
    `--jaxtyping-packages`), as a user's program runs: an error test inside it sees the
    library's own message, not the type checker's."""
    before = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", before)
