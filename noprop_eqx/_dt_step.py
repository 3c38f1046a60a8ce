"""NoProp-DT training steps that differentiate one block at a time.

The T block terms of Eq. 8 are independent: block t sees only its own sample
z_{t-1} ~ q(z_{t-1} | y), so its gradient needs only its own activations. `dt_value_and_grad`
therefore runs a `lax.scan` over the stacked blocks whose body takes the value and gradient of
ONE block term, and sums the gradients of the shared parameters (W_embed, the readout, a
trainable schedule) in the scan carry. Rolled, the residuals of a single block are alive at any
time (smallest memory); fully unrolled, XLA sees T small independent gradient computations,
which is the fastest DT step measured on CPU. Either way the result equals
`eqx.filter_value_and_grad(NoPropDT.loss_fn, has_aux=True)` up to float rounding, with the same
random draws for the same key.
"""

import functools
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from ._checks import check_batch
from ._dt import NoPropDT
from ._losses import (
    expected_embedding,
    kl_to_standard_normal,
    readout_cross_entropy,
    sample_q,
    weighted_denoising_term,
)
from ._train import cast_floating, check_compute_dtype, donating_step, make_step
from ._xla import CompilerOptions, jit_options
from .models import apply_batched
from .noise_schedules import alpha_bar_grid

Memory = Literal["auto", "blockwise", "low", "low-calls", "low-scan", "default"]
MEMORY_MODES = ("auto", "blockwise", "low", "low-calls", "low-scan", "default")


def default_dt_memory(backend: str | None = None) -> str:
    """What `make_dt_step(memory="auto")` builds on `backend` (default: JAX's default backend):
    "blockwise" on CPU, "default" (one gradient of the whole loss, the blocks run as
    `NoPropDT.strategy` says, "vmap" under "auto") elsewhere. Measured on the paper MNIST
    network, batch 128, T = 10, ms per step: 2-core Xeon blockwise 551, default (loop) 639,
    backprop 590; NVIDIA H200 blockwise 5.56, default with vmap 3.84, backprop 6.13
    (`benchmarks/train_throughput.py`)."""
    backend = jax.default_backend() if backend is None else backend
    return "blockwise" if backend == "cpu" else "default"


def dt_value_and_grad(
    model: NoPropDT,
    batch: tuple[Float[ArrayLike, "batch c h w"], ArrayLike],
    key: PRNGKeyArray,
    *,
    unroll: int | bool = 1,
    compute_dtype: Any = None,
) -> tuple[tuple[Float[Array, ""], dict[str, Array]], PyTree]:
    """`((loss, aux), grads)` of `NoPropDT.loss_fn(model, batch, key)` (Eq. 8), computed block by
    block:

        loss = [CE(readout(z_T), y) + KL(q(z_0|y) ‖ N(0, I))]
               + Σ_t (η/2) mean_batch[(SNR(t) - SNR(t-1)) ‖û_θt(z_{t-1}, x) - u_y‖²],

    which is Eq. 8's (T/2) η mean_t[...] written as a sum. The first bracket (the "head") is
    differentiated once; each summand is differentiated inside a `lax.scan` over the blocks, so
    the peak memory holds the residuals of one block instead of T (`unroll` is passed to
    `lax.scan`: True unrolls the T gradient computations into straight-line code).
    `compute_dtype` (e.g. `jnp.bfloat16`) computes every term as `mixed_precision` does: model
    arrays and images cast on the way in, terms cast to float32 on the way out. `grads` has
    the structure of `eqx.filter(model, eqx.is_inexact_array)`; `aux` has the keys of
    `NoPropDT.loss_fn`'s.

    Keys are used exactly as `NoPropDT.loss_fn` uses them: k_z, k_drop = split(key); block t's
    input is drawn with split(k_z, T + 1)[t] and the readout's with [T]; block t's dropout keys
    are split(k_drop, (T, batch))[t].

    Speed: on XLA:CPU (jax 0.10) convolutions inside a while loop (the rolled scan's body) run
    tens of times slower than the same convolutions outside one (benchmarks/README.md); unrolled,
    this is the fastest DT gradient on CPU.
    """
    if not isinstance(model, NoPropDT):
        raise TypeError(f"expected a NoPropDT model, got {type(model).__name__}")
    x, y = check_batch(batch, model.image_shape, model.num_classes)
    terms = dt_local_terms(model, x, y, key, unroll=unroll, compute_dtype=compute_dtype)
    shared_grads = jax.tree.map(jnp.add, terms.head_grads, terms.block_shared_grads)
    return finish_dt_terms(
        model, terms.ce, terms.kl, terms.per_block, shared_grads, terms.block_grads
    )


class DTTerms(NamedTuple):
    """The parts of Eq. 8 and their gradients that one device computes (`dt_local_terms`):
    sums over its examples divided by the GLOBAL batch size, so that summing them over the
    devices that split a batch gives the batch means."""

    ce: Array
    kl: Array
    per_block: Array  # (T_local,): mean_batch[(SNR(t) - SNR(t-1)) ‖û_θt - u_y‖²] per own block
    head_grads: PyTree  # gradient of CE + KL with respect to the shared (non-block) arrays
    block_shared_grads: PyTree  # gradient of the own blocks' terms, shared arrays
    block_grads: PyTree  # gradient of the own blocks' terms, own blocks (leading axis T_local)


def finish_dt_terms(model, ce, kl, per_block, shared_grads, block_grads):
    """`((loss, aux), grads)` from whole-batch, all-block terms (see `dt_value_and_grad`)."""
    denoise = 0.5 * model.num_blocks * model.eta * jnp.mean(per_block)
    loss = ce + kl + denoise
    aux = dict(loss=loss, ce=ce, kl=kl, denoise=denoise, denoise_per_block=per_block)
    grads = eqx.tree_at(lambda m: m.blocks, shared_grads, block_grads, is_leaf=lambda n: n is None)
    return (loss, aux), grads


def dt_local_terms(
    model: NoPropDT,
    x: Array,
    y: Array,
    key: PRNGKeyArray,
    *,
    unroll: int | bool = 1,
    compute_dtype: Any = None,
    block_offset: int | Array = 0,
    batch_offset: int | Array = 0,
    global_batch: int | None = None,
) -> DTTerms:
    """The terms of Eq. 8 for the blocks `model.blocks` holds and the examples `(x, y)`, which
    may be a slice of the whole: blocks `block_offset ...` of `model.num_blocks` and examples
    `batch_offset ...` of a batch of `global_batch` (default: `len(x)`, the whole batch). Every
    random draw is the one the whole-batch, all-block computation makes for the same blocks
    and examples, so devices that each hold a slice together compute exactly
    `dt_value_and_grad` (see `noprop_eqx.parallel`)."""
    compute_dtype = check_compute_dtype(compute_dtype)
    if compute_dtype is not None:
        x = x.astype(compute_dtype)
    num_blocks, eta = model.num_blocks, model.eta
    local_batch = x.shape[0]
    global_batch = local_batch if global_batch is None else global_batch
    local_blocks = {a.shape[0] for a in jax.tree.leaves(eqx.filter(model.blocks, eqx.is_array))}
    (local_blocks,) = local_blocks
    k_z, k_drop = jr.split(key)
    keys_z = jr.split(k_z, num_blocks + 1)
    keys_drop = jax.lax.dynamic_slice(
        jr.split(k_drop, (num_blocks, global_batch)),
        (block_offset, batch_offset),
        (local_blocks, local_batch),
    )

    def sample(u_y, alpha_bar, key):
        """z ~ q(z | y) for the local examples, with the whole batch's per-example keys."""
        keys = jax.lax.dynamic_slice_in_dim(jr.split(key, global_batch), batch_offset, local_batch)
        return jax.vmap(lambda u, k: sample_q(u, alpha_bar, key=k))(u_y, keys)

    def batch_mean(values):
        return jnp.sum(values) / global_batch

    block_arrays, block_static = eqx.partition(model.blocks, eqx.is_array)
    shared = eqx.tree_at(lambda m: m.blocks, model, None)
    shared_diff, shared_static = eqx.partition(shared, eqx.is_inexact_array)

    def head_term(diff):
        """CE(readout(z_T), y) + KL(q(z_0|y) ‖ N(0, I)), batch means."""
        m = eqx.combine(cast_floating(diff, compute_dtype), shared_static)
        w_embed = m.embedding.matrix()
        u_y = w_embed[y]
        alpha_bar = alpha_bar_grid(m.schedule, num_blocks)
        z_last = sample(u_y, alpha_bar[num_blocks], keys_z[num_blocks])
        ce = batch_mean(jax.vmap(readout_cross_entropy)(jax.vmap(m.readout)(z_last), y))
        kl = batch_mean(jax.vmap(kl_to_standard_normal, (0, None))(u_y, alpha_bar[0]))
        return cast_floating((ce + kl, (ce, kl)), jnp.float32)

    def block_term(diff, t, keys_drop_t):
        """(η/2) mean_batch[(SNR(t) - SNR(t-1)) ‖û_θt(z_{t-1}, x) - u_y‖²] for one block."""
        arrays_t, shared_diff_t = cast_floating(diff, compute_dtype)
        m = eqx.combine(shared_diff_t, shared_static)
        block = eqx.combine(arrays_t, block_static)
        w_embed = m.embedding.matrix()
        u_y = w_embed[y]
        alpha_bar = alpha_bar_grid(m.schedule, num_blocks)
        snr = alpha_bar / (1.0 - alpha_bar)
        z = sample(u_y, alpha_bar[t], keys_z[t])
        logits = apply_batched(block, z, x, keys=keys_drop_t)
        u_hat = jax.vmap(expected_embedding, (0, None))(logits, w_embed)
        weight = snr[t + 1] - snr[t]
        per_block = batch_mean(jax.vmap(weighted_denoising_term, (0, 0, None))(u_hat, u_y, weight))
        return cast_floating((0.5 * eta * per_block, per_block), jnp.float32)

    (_, (ce, kl)), head_grads = eqx.filter_value_and_grad(head_term, has_aux=True)(shared_diff)
    block_grad_fn = eqx.filter_value_and_grad(block_term, has_aux=True)

    def body(shared_grads, inputs):
        arrays_t, t, keys_drop_t = inputs
        (_, per_block), (grads_t, shared_grads_t) = block_grad_fn(
            (arrays_t, shared_diff), t, keys_drop_t
        )
        shared_grads = jax.tree.map(jnp.add, shared_grads, shared_grads_t)
        return shared_grads, (grads_t, per_block)

    zeros = jax.tree.map(jnp.zeros_like, head_grads)
    xs = (block_arrays, block_offset + jnp.arange(local_blocks), keys_drop)
    if unroll is not True:
        block_shared_grads, (block_grads, per_block) = jax.lax.scan(body, zeros, xs, unroll=unroll)
        return DTTerms(ce, kl, per_block, head_grads, block_shared_grads, block_grads)
    # Unrolled as straight-line code, without `lax.scan`: a scan of length 1 stays a loop on
    # XLA:CPU (jax 0.10), whose convolutions then run over ten times slower.
    carry, outputs = zeros, []
    for t in range(local_blocks):
        carry, out = body(carry, jax.tree.map(lambda a, t=t: a[t], xs))
        outputs.append(out)
    block_grads, per_block = jax.tree.map(lambda *a: jnp.stack(a), *outputs)
    return DTTerms(ce, kl, per_block, head_grads, carry, block_grads)


def make_dt_step(
    optimizer: optax.GradientTransformation,
    *,
    memory: Memory = "auto",
    compute_dtype: Any = None,
    compiler_options: CompilerOptions = "auto",
):
    """`step(model, opt_state, batch, key) -> (model, opt_state, aux)` for NoProp-DT, with the
    signature and semantics of `make_step(NoPropDT.loss_fn, optimizer)`: the same loss, the same
    gradients (up to float rounding) for the same key.

    - `memory="auto"` (default): the fastest measured on the backend (`default_dt_memory`):
      "blockwise" on CPU, "default" elsewhere.
    - `memory="blockwise"`: one value-and-grad per block, unrolled
      (`dt_value_and_grad(..., unroll=True)`). The fastest DT step on CPU.
    - `memory="low"`: the smallest temporary memory, one block's activations at a time, in
      the fastest form measured on the backend (`default_low_memory`): "low-calls" on CPU,
      "low-scan" elsewhere.
    - `memory="low-calls"`: one compiled call per block, each writing its block's gradient
      into a gradient buffer in place, then one call for the optimiser update
      (`BlockByBlockStep`). T + 1 dispatches a step.
    - `memory="low-scan"`: the per-block value-and-grad inside a rolled `lax.scan`, one
      compiled call. Slow on XLA:CPU, where convolutions in a loop body are slow.
    - `memory="default"`: `make_step(NoPropDT.loss_fn, optimizer)`, one value-and-grad of the
      whole loss, running the blocks as the model's `strategy` says.

    All but "low-calls" are one `eqx.filter_jit` region (a `CompiledStep`).
    `compute_dtype` and `compiler_options` as for `make_step`.
    """
    if memory not in MEMORY_MODES:
        raise ValueError(f"expected memory to be one of {MEMORY_MODES}, got {memory!r}")
    if memory == "auto":
        memory = default_dt_memory()
    if memory == "low":
        memory = default_low_memory()
    if memory == "default":
        return make_step(
            NoPropDT.loss_fn,
            optimizer,
            compute_dtype=compute_dtype,
            compiler_options=compiler_options,
        )
    compute_dtype = check_compute_dtype(compute_dtype)
    if memory == "low-calls":
        return BlockByBlockStep(optimizer, compute_dtype, compiler_options)
    unroll = memory == "blockwise"

    def step(model, opt_state, batch, key):
        (_, aux), grads = dt_value_and_grad(
            model, batch, key, unroll=unroll, compute_dtype=compute_dtype
        )
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, aux

    return donating_step(step, compiler_options)


def default_low_memory(backend: str | None = None) -> str:
    """What `make_dt_step(memory="low")` builds on `backend` (default: JAX's default backend):
    "low-calls" on CPU, where a `lax.scan` over convolutions is slow (paper MNIST network,
    batch 128, T = 10, 2-core CPU: see benchmarks/README.md), "low-scan" elsewhere (on an H200
    the rolled scan took 7.3 ms a step against 3.84 for the default; "low-calls" is not
    measured there)."""
    backend = jax.default_backend() if backend is None else backend
    return "low-calls" if backend == "cpu" else "low-scan"


class BlockByBlockStep:
    """NoProp-DT's step as T + 1 compiled calls: call t computes block t's terms of Eq. 8 (and
    the CE + KL head in call 0) with `dt_local_terms` and adds them to a gradient buffer
    in place (donated); the last call applies the optimiser. Only one block's activations are
    alive at any time, and each call is straight-line code (no loop body), which XLA:CPU
    runs at full speed. Same keys, loss and gradients as `dt_value_and_grad`.

    `step(model, opt_state, batch, key) -> (model, opt_state, aux)`, like `CompiledStep`;
    `temp_bytes(model, opt_state, batch, key)` is the step's temporary memory: the largest
    call's temporaries plus the gradient buffer."""

    def __init__(self, optimizer, compute_dtype=None, compiler_options: CompilerOptions = "auto"):
        self.optimizer = optimizer
        jit_kwargs = jit_options(compiler_options)

        def block_call(inputs, grads, t):
            model, x, y, key = inputs
            blocks = eqx.filter(model.blocks, eqx.is_array)
            one = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, t, 1), blocks)
            model_t = eqx.tree_at(
                lambda m: m.blocks,
                model,
                eqx.combine(one, eqx.filter(model.blocks, eqx.is_array, inverse=True)),
            )
            terms = dt_local_terms(
                model_t, x, y, key, unroll=True, compute_dtype=compute_dtype, block_offset=t
            )
            first = (t == 0).astype(jnp.float32)
            shared = jax.tree.map(
                lambda g, h, b: g + first * h + b,
                grads.shared,
                terms.head_grads,
                terms.block_shared_grads,
            )
            block_grads = jax.tree.map(
                lambda g, b: jax.lax.dynamic_update_slice_in_dim(g, b, t, 0),
                grads.blocks,
                terms.block_grads,
            )
            return _Grads(shared, block_grads), (terms.ce, terms.kl, terms.per_block[0])

        def update(grads, model, opt_state):
            full = eqx.tree_at(
                lambda m: m.blocks, grads.shared, grads.blocks, is_leaf=lambda n: n is None
            )
            params = eqx.filter(model, eqx.is_inexact_array)
            updates, opt_state = optimizer.update(full, opt_state, params)
            return eqx.apply_updates(model, updates), opt_state

        self._block_call = eqx.filter_jit(block_call, donate="all-except-first", **jit_kwargs)
        self._update = eqx.filter_jit(update, donate="all-except-first", **jit_kwargs)
        self.fn = None  # not one function: no `scan` of several steps

    def _zero_grads(self, model) -> "_Grads":
        shared = eqx.filter(eqx.tree_at(lambda m: m.blocks, model, None), eqx.is_inexact_array)
        blocks = eqx.filter(model.blocks, eqx.is_array)
        zeros = functools.partial(jax.tree.map, lambda a: jnp.zeros(a.shape, a.dtype))
        return _Grads(zeros(shared), zeros(blocks))

    def __call__(self, model, opt_state, batch, key):
        if not isinstance(model, NoPropDT):
            raise TypeError(f"expected a NoPropDT model, got {type(model).__name__}")
        x, y = check_batch(batch, model.image_shape, model.num_classes)
        grads = self._zero_grads(model)
        per_block = []
        for t in range(model.num_blocks):
            grads, (ce_t, kl_t, value_t) = self._block_call(
                (model, x, y, key), grads, jnp.asarray(t)
            )
            if t == 0:
                ce, kl = ce_t, kl_t
            per_block.append(value_t)
        per_block = jnp.stack(per_block)
        denoise = 0.5 * model.num_blocks * model.eta * jnp.mean(per_block)
        loss = ce + kl + denoise
        aux = dict(loss=loss, ce=ce, kl=kl, denoise=denoise, denoise_per_block=per_block)
        model, opt_state = self._update(grads, model, opt_state)
        return model, opt_state, aux

    def num_compilations(self) -> int:
        """The most executables any of the step's compiled calls holds (1 once warm)."""
        return max(f._cached._cache_size() for f in (self._block_call, self._update))

    def temp_bytes(self, model, opt_state, batch, key) -> int:
        """The largest call's temporary bytes plus the gradient buffer's (XLA's estimate)."""
        x, y = check_batch(batch, model.image_shape, model.num_classes)
        grads = self._zero_grads(model)
        calls = [
            self._block_call.lower((model, x, y, key), grads, jnp.asarray(0)),
            self._update.lower(grads, model, opt_state),
        ]
        temps = [c.lowered.compile().memory_analysis().temp_size_in_bytes for c in calls]
        buffer = sum(a.nbytes for a in jax.tree.leaves(grads))
        return int(max(temps) + buffer)


class _Grads(NamedTuple):
    shared: PyTree
    blocks: PyTree
