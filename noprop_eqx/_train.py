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

from ._xla import CompilerOptions, jit_options
from .data import eval_batches

LossFn = Callable[[PyTree, Any, PRNGKeyArray], tuple[Array, dict[str, Array]]]


def make_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    compute_dtype: Any = None,
    compiler_options: CompilerOptions = "auto",
):
    """`step(model, opt_state, batch, key) -> (model, opt_state, aux)`: value-and-grad of
    `loss_fn(model, batch, key) -> (loss, aux)`, the optax update and its application, compiled
    as one `eqx.filter_jit` region. Gradients flow to every inexact array of the model.

    The model and optimiser state passed in are donated (their buffers are reused for the
    results): use the returned ones. The batch and key are not donated.
    `compute_dtype`: None (compute in the parameters' dtype, float32) or e.g. `jnp.bfloat16`
    to run `loss_fn` under `mixed_precision` (float32 master parameters and optimiser state).
    `compiler_options`: "auto" (tuned per backend, see `noprop_eqx.default_compiler_options`),
    None (XLA's defaults) or a dict passed to `jax.jit`."""
    if compute_dtype is not None:
        loss_fn = mixed_precision(loss_fn, compute_dtype)
    return donating_step(_value_and_grad_step(loss_fn, optimizer), compiler_options)


def check_compute_dtype(dtype: Any) -> Any:
    """`dtype` as a JAX floating dtype (None stays None), or a clear error."""
    if dtype is None:
        return None
    try:
        dtype = jnp.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"expected compute_dtype to be a floating dtype, got {dtype!r}") from error
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"expected compute_dtype to be a floating dtype, got {dtype}")
    return dtype


def cast_floating(tree: PyTree, dtype: Any) -> PyTree:
    """`tree` with every floating-point array leaf cast to `dtype`; other leaves unchanged.
    Differentiable: the gradient of a cast leaf comes back in the leaf's original dtype.
    `dtype=None` returns `tree` unchanged."""
    if dtype is None:
        return tree

    def cast(leaf):
        if eqx.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.astype(dtype)
        return leaf

    return jax.tree.map(cast, tree)


def mixed_precision(loss_fn: LossFn, compute_dtype: Any = jnp.bfloat16) -> LossFn:
    """`loss_fn` computed in `compute_dtype`: the model's floating-point arrays and the batch's
    images are cast to `compute_dtype` on the way in, the loss and its aux terms are cast back to
    float32 on the way out. The gradient with respect to the (float32) model is float32, so the
    optimiser keeps float32 master weights. Operations that mix a cast array with a float32 one
    (fresh Gaussian noise, say) run in float32 under JAX's type promotion; the convolutions and
    dense layers on the images, where the FLOPs are, run in `compute_dtype`.

    Composes with any loss of the form `loss_fn(model, (images, labels), key) -> (loss, aux)`:

        step = make_step(mixed_precision(NoPropDT.loss_fn, jnp.bfloat16), optimizer)
    """
    compute_dtype = check_compute_dtype(compute_dtype)

    def loss(model, batch, key):
        x, y = batch
        value, aux = loss_fn(
            cast_floating(model, compute_dtype), (jnp.asarray(x).astype(compute_dtype), y), key
        )
        return cast_floating((value, aux), jnp.float32)

    return loss


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

    - `step(model, opt_state, batch, key)`: one step.
    - `step.scan(model, opt_state, batches, keys)`: K steps in one compiled call, a `lax.scan`
      of the same step over K stacked batches and K keys (see `scan`).
    - `lower(...)` gives the `jax.stages.Lowered` step (for `.compile()`, cost and memory
      analysis); `num_compilations()` counts the single-step executables compiled so far;
      `fn` is the uncompiled step function.
    """

    def __init__(self, step, compiler_options: CompilerOptions = "auto"):
        self.fn = step  # the uncompiled step, for composing (e.g. several steps in one scan)
        self._jit_kwargs = jit_options(compiler_options)
        # filter_jit donates every argument but the first: the batch and key go first.
        self._jitted = eqx.filter_jit(
            lambda batch_and_key, model, opt_state: step(model, opt_state, *batch_and_key),
            donate="all-except-first",
            **self._jit_kwargs,
        )
        self._scanned = None

    def __call__(self, model, opt_state, batch, key):
        return self._jitted((batch, key), model, opt_state)

    def scan(self, model, opt_state, batches, keys):
        """K training steps in one compiled call: step k sees batch k and key k, exactly as K
        calls of `step` would (equal up to float rounding).

        **Arguments:** `batches`: (images, labels) with a leading axis of K batches; `keys`: K
        keys (a stacked key array). **Returns:** `(model, opt_state, aux)`, each aux entry
        stacked along a leading axis of K.

        On a GPU this removes the per-step dispatch cost: a paper-network NoProp-DT epoch on an
        H200 took 1.12 s as one scan against 2.16 s as 469 calls with the batches already on
        the device (`benchmarks/epoch_time.py`). On XLA:CPU convolutions inside the scan's loop
        body run far slower: there, call the step once per batch. Each distinct K compiles once.
        """
        if self._scanned is None:
            self._scanned = eqx.filter_jit(
                _scan_steps(self.fn), donate="all-except-first", **self._jit_kwargs
            )
        return self._scanned((batches, keys), model, opt_state)

    def lower(self, model, opt_state, batch, key):
        return self._jitted.lower((batch, key), model, opt_state)

    def num_compilations(self) -> int:
        return self._jitted._cached._cache_size()


def _scan_steps(step):
    def run(batches_and_keys, model, opt_state):
        (xs, ys), keys = batches_and_keys
        arrays, static = eqx.partition((model, opt_state), eqx.is_array)

        def body(arrays, inputs):
            m, o = eqx.combine(arrays, static)
            xb, yb, k = inputs
            m, o, aux = step(m, o, (xb, yb), k)
            return eqx.filter((m, o), eqx.is_array), aux

        arrays, aux = jax.lax.scan(body, arrays, (xs, ys, keys))
        model, opt_state = eqx.combine(arrays, static)
        return model, opt_state, aux

    return run


def init_optimizer_state(model: PyTree, optimizer: optax.GradientTransformation) -> PyTree:
    """`optimizer.init` on the model's trainable (inexact array) leaves."""
    return optimizer.init(eqx.filter(model, eqx.is_inexact_array))


def paper_optimizer(
    model: eqx.Module,
    *,
    learning_rate: float | optax.Schedule = 1e-3,
    weight_decay: float | int = 1e-3,
) -> optax.GradientTransformation:
    """The paper's Table 3 optimiser: learning rate 1e-3 (a number or an optax schedule) and
    weight decay 1e-3 for every method.

    - NoProp-DT and the backprop baseline: AdamW, decoupled decay (`optax.adamw`).
    - NoProp-CT and NoProp-FM: Adam with the decay as an L2 term added to the gradient before
      Adam's normalisation, as PyTorch's `Adam(weight_decay=...)` does
      (`optax.chain(optax.add_decayed_weights(wd), optax.adam(lr))`). `weight_decay=0` gives
      plain Adam.

    A fixed embedding (`PrototypeEmbedding(..., fixed=True)`), a fixed schedule
    (`LearnedNoiseSchedule(..., fixed=True)`) and the population statistics of `BatchNorm`
    layers are left out of the weight decay, so that training leaves them exactly as they are
    (their gradient is zero, so Adam leaves them alone)."""
    from ._backprop import BackpropBaseline
    from ._batch_norm import has_batch_norm
    from ._dt import NoPropDT

    fixed, batch_norm = _has_fixed_embedding(model), has_batch_norm(model)
    fixed_schedule = has_fixed_schedule(model)
    mask = (
        functools.partial(_decay_mask, fixed, batch_norm, fixed_schedule)
        if fixed or batch_norm or fixed_schedule
        else None
    )
    if isinstance(model, NoPropDT | BackpropBaseline):
        return optax.adamw(learning_rate, weight_decay=weight_decay, mask=mask)
    if weight_decay == 0:
        return optax.adam(learning_rate)
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=mask), optax.adam(learning_rate)
    )


def weight_decay_mode(variant: str, weight_decay: float | int | None) -> str:
    """How `paper_optimizer` applies weight decay to a variant ("DT", "CT", "FM", "BP"):
    "decoupled" (AdamW: DT, BP), "l2" (an L2 gradient term before Adam: CT, FM with a
    non-zero decay) or "none" (plain Adam: CT, FM with no decay; `None` marks a run saved
    before CT/FM had weight decay, which trained with plain Adam)."""
    if variant not in ("DT", "CT", "FM", "BP"):
        raise ValueError(f"expected variant to be one of DT, CT, FM, BP, got {variant!r}")
    if variant in ("DT", "BP"):
        return "decoupled"
    return "l2" if weight_decay else "none"


def _has_fixed_embedding(model: eqx.Module) -> bool:
    from ._embeddings import is_fixed_embedding

    return is_fixed_embedding(getattr(model, "embedding", None))


def has_fixed_schedule(model: eqx.Module) -> bool:
    return bool(getattr(getattr(model, "schedule", None), "fixed", False))


def _decay_mask(
    fixed_embedding: bool, batch_norm: bool, fixed_schedule: bool, params: PyTree
) -> PyTree:
    """The weight-decay mask: True everywhere but a fixed embedding, a fixed schedule and the
    population statistics of every BatchNorm layer."""
    from .models._batch_norm import is_batch_norm

    def frozen_statistics(n):
        return eqx.tree_at(lambda b: (b.mean, b.var), n, (False, False))

    mask = jax.tree.map(lambda _: True, params)
    if fixed_embedding:
        mask = eqx.tree_at(lambda m: m.embedding.weight, mask, False)
    if fixed_schedule:
        mask = eqx.tree_at(lambda m: m.schedule, mask, jax.tree.map(lambda _: False, mask.schedule))
    if batch_norm:
        mask = jax.tree.map(
            lambda n: frozen_statistics(n) if is_batch_norm(n) else n, mask, is_leaf=is_batch_norm
        )
    return mask


def _count_correct(model, x, y, num_valid, predict_kwargs, key):
    predictions = model.predict(x, key=key, **predict_kwargs)
    valid = jnp.arange(x.shape[0]) < num_valid
    return jnp.sum((predictions == y) & valid)


@functools.cache
def _compiled_count_correct():
    # Built on first use: the compiler options depend on the backend.
    return eqx.filter_jit(_count_correct, **jit_options("auto"))


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
