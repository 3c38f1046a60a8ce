"""One generic, compiled training step for every variant, plus evaluation."""

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray, PyTree

from ._xla import CompilerOptions, resolve_compiler_options
from .data import eval_batches

LossFn = Callable[[PyTree, Any, PRNGKeyArray], tuple[Array, dict[str, Array]]]


def make_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    compiler_options: CompilerOptions = "auto",
):
    """`step(model, opt_state, batch, key) -> (model, opt_state, aux)`: value-and-grad of
    `loss_fn(model, batch, key) -> (loss, aux)`, the optax update and its application, compiled
    as one `eqx.filter_jit` region. Gradients flow to every inexact array of the model.

    The model and optimiser state passed in are donated (their buffers are reused for the
    results): use the returned ones. The batch and key are not donated.
    `compiler_options`: "auto" (tuned per backend, see `noprop_eqx.default_compiler_options`),
    None (XLA's defaults) or a dict passed to `jax.jit`."""
    return donating_step(_value_and_grad_step(loss_fn, optimizer), compiler_options)


def _value_and_grad_step(loss_fn: LossFn, optimizer: optax.GradientTransformation):
    grad_fn = eqx.filter_value_and_grad(loss_fn, has_aux=True)

    def step(model, opt_state, batch, key):
        (_, aux), grads = grad_fn(model, batch, key)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, aux

    return step


def donating_step(step, compiler_options: CompilerOptions = "auto") -> "CompiledStep":
    """`step(model, opt_state, batch, key)` compiled with `eqx.filter_jit`, donating the model
    and the optimiser state only."""
    return CompiledStep(step, compiler_options)


class CompiledStep:
    """A training step `(model, opt_state, batch, key) -> (model, opt_state, aux)` compiled with
    `eqx.filter_jit`. The model and optimiser state are donated; the batch and key are not.
    `lower(...)` gives the `jax.stages.Lowered` step (for `.compile()`, cost and memory
    analysis); `num_compilations()` counts the executables compiled so far."""

    def __init__(self, step, compiler_options: CompilerOptions = "auto"):
        # filter_jit donates every argument but the first: the batch and key go first.
        self._jitted = eqx.filter_jit(
            lambda batch_and_key, model, opt_state: step(model, opt_state, *batch_and_key),
            donate="all-except-first",
            compiler_options=resolve_compiler_options(compiler_options),
        )

    def __call__(self, model, opt_state, batch, key):
        return self._jitted((batch, key), model, opt_state)

    def lower(self, model, opt_state, batch, key):
        return self._jitted.lower((batch, key), model, opt_state)

    def num_compilations(self) -> int:
        return self._jitted._cached._cache_size()


def init_optimizer_state(model: PyTree, optimizer: optax.GradientTransformation) -> PyTree:
    """`optimizer.init` on the model's trainable (inexact array) leaves."""
    return optimizer.init(eqx.filter(model, eqx.is_inexact_array))


def paper_optimizer(
    model: eqx.Module,
    *,
    learning_rate: float | optax.Schedule = 1e-3,
    weight_decay: float = 1e-3,
) -> optax.GradientTransformation:
    """The paper's Table 3 optimiser: AdamW for NoProp-DT and the backprop baseline, Adam for
    NoProp-CT and NoProp-FM; learning rate 1e-3 (a number or an optax schedule), weight decay
    1e-3."""
    from ._backprop import BackpropBaseline
    from ._dt import NoPropDT

    if isinstance(model, NoPropDT | BackpropBaseline):
        return optax.adamw(learning_rate, weight_decay=weight_decay)
    return optax.adam(learning_rate)


def _count_correct(model, x, y, num_valid, predict_kwargs, key):
    predictions = model.predict(x, key=key, **predict_kwargs)
    valid = jnp.arange(x.shape[0]) < num_valid
    return jnp.sum((predictions == y) & valid)


@functools.cache
def _compiled_count_correct():
    # Built on first use: the compiler options depend on the backend.
    return eqx.filter_jit(_count_correct, compiler_options=resolve_compiler_options("auto"))


def evaluate_accuracy(
    model: eqx.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = 1000,
    key: PRNGKeyArray | None = None,
    **predict_kwargs,
) -> float:
    """Test accuracy in [0, 1], evaluating each example once. `key` makes inference stochastic
    (DT's Eq. 3 sampler, a random z_0 for CT/FM); other keywords go to `model.predict`
    (e.g. `solver=diffrax.Tsit5()`, `num_steps=20`)."""
    if len(x) != len(y):
        raise ValueError(f"expected as many labels as images, got {len(y)} labels, {len(x)} images")
    batch_size = min(batch_size, len(x))
    correct = 0
    for i, (xb, yb, n) in enumerate(eval_batches(x, y, batch_size)):
        k = None if key is None else jax.random.fold_in(key, i)
        correct += int(_compiled_count_correct()(model, xb, yb, n, predict_kwargs, k))
    return correct / len(x)
