import contextlib
import os
import tempfile
from pathlib import Path

# One persistent XLA compilation cache for the whole suite: its pytest-xdist workers and the
# processes the tests start (CLI runs, benchmark scripts, multi-device workers) compile many
# identical programs (the same small models and steps); each is compiled once, then read back.
# It lives in the system's temporary folder, so a second run on the same machine starts warm.
# The cache never changes what runs: XLA keys it by the program, options and versions.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"noprop-eqx-test-xla-cache-{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

import jax  # noqa: E402
import jax.random as jr  # noqa: E402
import jaxtyping  # noqa: E402
import pytest  # noqa: E402

# Strict rank promotion catches silent broadcasting bugs. (Strict *dtype* promotion is left off:
# optax's Adam bias correction mixes a Python float with an int32 step count.)
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)

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
