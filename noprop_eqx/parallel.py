"""NoProp on a device mesh: data parallelism for every variant, block parallelism for NoProp-DT.

A mesh has two named axes, `data` and `blocks` (`make_mesh`). Batches are split over `data`.
NoProp-DT's stacked blocks, and their optimiser state, are split over `blocks`: the T blocks of
Eq. 8 are trained independently, so a device computes only its own blocks' terms and gradients,
and the only traffic across the `blocks` axis is the gradient of the shared parameters (the class
embedding, the readout, a trainable schedule) and the loss scalars. Everything else is
replicated.

    mesh = npx.parallel.make_mesh(data=4, blocks=2)          # 8 devices
    model, opt_state = npx.parallel.place(model, opt_state, mesh)
    step = npx.parallel.make_dt_step(optimizer, mesh)  # or make_step(loss_fn, optimizer, mesh)
    model, opt_state, aux = step(model, opt_state, batch, key)   # batch: numpy or jax, global
    accuracy = npx.parallel.evaluate_accuracy(model, x_test, y_test, mesh)

A step computes exactly what the single-device step computes (`make_dt_step`, `make_step`): the
same random draws, the same loss and gradients up to float rounding (tested on 8-10 CPU devices
against the single-device step). Across several processes (`initialize`, then the same code in
every process), each process passes the same global batch and puts only its own rows on its
devices; `gather` brings a sharded model back to every host, for checkpoints.

Built on JAX's SPMD machinery only: `jax.make_mesh`, `NamedSharding`, `jax.shard_map` (the DT
step) and XLA's sharding propagation under `eqx.filter_jit` (the data-parallel step).
"""

import functools
import os
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import PRNGKeyArray, PyTree

from ._dt import NoPropDT
from ._dt_step import default_low_memory, dt_local_terms, finish_dt_terms
from ._train import CompiledStep, LossFn, check_compute_dtype, mixed_precision
from ._xla import jit_options
from .data import eval_batches

AXES = ("data", "blocks")

__all__ = [
    "AXES",
    "MeshError",
    "ParallelStep",
    "batch_sharding",
    "evaluate_accuracy",
    "gather",
    "initialize",
    "make_dt_step",
    "make_mesh",
    "make_step",
    "model_shardings",
    "parse_mesh",
    "place",
    "shard_batch",
]


class MeshError(ValueError):
    """A mesh that does not fit the devices, the model or the batch."""


def parse_mesh(spec: str) -> dict[str, int]:
    """`"data=4,blocks=2"` -> `{"data": 4, "blocks": 2}` (a missing axis has size 1)."""
    sizes = {name: 1 for name in AXES}
    if not isinstance(spec, str) or not spec.strip():
        raise MeshError(f"expected a mesh like 'data=4,blocks=2', got {spec!r}")
    for part in spec.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name not in AXES:
            raise MeshError(
                f"expected a mesh like 'data=4,blocks=2' (axes {', '.join(AXES)}), got {spec!r}"
            )
        try:
            size = int(value)
        except ValueError:
            size = 0
        if size < 1:
            raise MeshError(
                f"expected a positive size for the mesh axis {name!r}, got {value!r} "
                f"(in {spec!r}; the form is 'data=4,blocks=2')"
            )
        sizes[name] = size
    return sizes


def make_mesh(data: int = 1, blocks: int = 1, *, devices=None) -> Mesh:
    """A mesh of `data * blocks` devices with the axes ("data", "blocks"), taken from the first
    devices of `devices` (default `jax.devices()`, every process's). Axis types are `Auto`:
    XLA propagates the shardings of the step's inputs."""
    for name, size in (("data", data), ("blocks", blocks)):
        if not (isinstance(size, int) and size >= 1):
            raise MeshError(f"expected {name} to be a positive int, got {size!r}")
    devices = list(jax.devices() if devices is None else devices)
    if data * blocks > len(devices):
        raise MeshError(
            f"a mesh data={data}, blocks={blocks} needs {data * blocks} devices, "
            f"got {len(devices)} ({devices[0].platform}); on CPU, "
            "`jax.config.update('jax_num_cpu_devices', N)` before any JAX computation (or "
            "XLA_FLAGS=--xla_force_host_platform_device_count=N) gives N devices"
        )
    grid = np.array(devices[: data * blocks], dtype=object).reshape(data, blocks)
    return Mesh(grid, AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def _sizes(mesh: Mesh) -> tuple[int, int]:
    if tuple(mesh.axis_names) != AXES:
        raise MeshError(f"expected a mesh with the axes {AXES} (make_mesh), got {mesh.axis_names}")
    return mesh.shape["data"], mesh.shape["blocks"]


def model_shardings(model: PyTree, mesh: Mesh) -> PyTree:
    """A `NamedSharding` for every array of `model` (None elsewhere): a NoProp-DT model's
    stacked blocks are split over `blocks` along their leading axis, everything else is
    replicated. Errors if T does not divide by the `blocks` size, or a non-DT model is given a
    `blocks` axis larger than 1."""
    _, num_block_devices = _sizes(mesh)
    if num_block_devices > 1:
        _check_blocks(model, num_block_devices)

    def shard(leaf, spec):
        return NamedSharding(mesh, spec) if eqx.is_array(leaf) else None

    shardings = jax.tree.map(lambda leaf: shard(leaf, P()), model)
    if num_block_devices == 1:
        return shardings
    block_shardings = jax.tree.map(lambda leaf: shard(leaf, P("blocks")), model.blocks)
    return eqx.tree_at(lambda m: m.blocks, shardings, block_shardings)


def _check_blocks(model: PyTree, num_block_devices: int) -> None:
    if not isinstance(model, NoPropDT):
        raise MeshError(
            f"a mesh with blocks={num_block_devices} splits NoProp-DT's blocks, got a "
            f"{type(model).__name__}: use blocks=1 (data parallel) for it"
        )
    if model.num_blocks % num_block_devices:
        works = [n for n in range(1, model.num_blocks + 1) if model.num_blocks % n == 0]
        raise MeshError(
            f"blocks={num_block_devices} does not divide the model's T={model.num_blocks} "
            f"blocks evenly; sizes that do: {works}"
        )


def _opt_state_shardings(optimizer_state: PyTree, params_shardings: PyTree, mesh: Mesh) -> PyTree:
    """Optimiser-state leaves shaped like parameters (Adam's moments) are sharded like them;
    the rest (step counts) are replicated."""
    replicated = NamedSharding(mesh, P())
    flat_params = jax.tree.leaves(params_shardings)
    params_def = jax.tree.structure(params_shardings)

    def is_params(node):
        return jax.tree.structure(node) == params_def

    def shard(node):
        if is_params(node):
            return jax.tree.unflatten(params_def, flat_params)
        return jax.tree.map(lambda leaf: replicated if eqx.is_array(leaf) else None, node)

    return jax.tree.map(shard, optimizer_state, is_leaf=is_params)


def place(model: PyTree, opt_state: PyTree | None, mesh: Mesh) -> tuple[PyTree, PyTree | None]:
    """`(model, opt_state)` put on `mesh` as `model_shardings` says (the optimiser state's
    parameter-shaped leaves like their parameters). Works across processes: every process
    passes the same full arrays and keeps its own part."""
    shardings = model_shardings(model, mesh)
    model = _put(model, shardings)
    if opt_state is not None:
        params_shardings = _params_only(model, shardings)
        opt_state = _put(opt_state, _opt_state_shardings(opt_state, params_shardings, mesh))
    return model, opt_state


def _params_only(model: PyTree, shardings: PyTree) -> PyTree:
    """The shardings of `eqx.filter(model, eqx.is_inexact_array)` (None where filtered out)."""
    return jax.tree.map(lambda leaf, s: s if eqx.is_inexact_array(leaf) else None, model, shardings)


def _put(tree: PyTree, shardings: PyTree) -> PyTree:
    def put(leaf, sharding):
        if sharding is None or not eqx.is_array(leaf):
            return leaf
        return _put_leaf(leaf, sharding)

    return jax.tree.map(put, tree, shardings, is_leaf=lambda n: n is None)


def _put_leaf(leaf, sharding: NamedSharding) -> jax.Array:
    """`leaf` (the full array, the same in every process) on `sharding`; each process puts
    only the parts its own devices hold."""
    if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
        return leaf
    if jax.process_count() == 1:
        return jax.device_put(leaf, sharding)
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over `data` (replicated over `blocks`)."""
    _sizes(mesh)
    return NamedSharding(mesh, P("data"))


def shard_batch(batch: PyTree, mesh: Mesh, sharding: NamedSharding | None = None) -> PyTree:
    """Every array of `batch` (the GLOBAL batch, the same in every process) split by rows over
    the mesh's `data` axis. Each process puts only the rows its own devices hold."""
    num_data = mesh.shape["data"]
    for leaf in jax.tree.leaves(batch):
        rows = np.shape(leaf)[0]
        if rows % num_data:
            raise MeshError(
                f"expected a batch size divisible by the mesh's data={num_data}, got {rows} "
                "rows: pick a batch size that is a multiple of it"
            )
    sharding = batch_sharding(mesh) if sharding is None else sharding
    return jax.tree.map(lambda leaf: _put_leaf(leaf, sharding), batch)


class ParallelStep:
    """A training step on a mesh, `step(model, opt_state, batch, key) -> (model, opt_state,
    aux)`, called as the single-device `CompiledStep` is: the batch is the global batch (numpy
    or jax), put on the mesh by rows (`shard_batch`); the model and optimiser state must have
    been `place`d on the same mesh. `aux` is replicated. `compiled` is the underlying
    `CompiledStep` (its `lower(...)` gives the compiled HLO, with its collectives)."""

    def __init__(self, step_fn: Callable, mesh: Mesh, compiler_options: Any):
        self.mesh = mesh
        self.compiled = CompiledStep(step_fn, compiler_options)
        self.fn = step_fn

    def __call__(self, model, opt_state, batch, key):
        batch = shard_batch(batch, self.mesh)
        return self.compiled(model, opt_state, batch, key)

    def lower(self, model, opt_state, batch, key):
        return self.compiled.lower(model, opt_state, shard_batch(batch, self.mesh), key)


def _constrain(model, opt_state, mesh):
    """Keeps the updated model and optimiser state on the shardings they came in with."""
    shardings = model_shardings(model, mesh)
    model = eqx.filter_shard(model, shardings)
    params = _params_only(model, shardings)
    opt_state = eqx.filter_shard(opt_state, _opt_state_shardings(opt_state, params, mesh))
    return model, opt_state


def make_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    compute_dtype: Any = None,
    compiler_options: Any = "auto",
) -> ParallelStep:
    """Data parallel `make_step` for any loss (NoProp-DT, -CT, -FM, the backprop baseline, or a
    user's): the batch is split over the mesh's `data` axis, the model and optimiser state are
    replicated, and XLA averages the gradients across `data` (an all-reduce). The loss, its
    random draws and the update are those of `noprop_eqx.make_step(loss_fn, optimizer)`.
    A mesh with `blocks` > 1 is for `make_dt_step`."""
    num_data, num_block_devices = _sizes(mesh)
    if num_block_devices != 1:
        raise MeshError(
            f"make_step is data parallel: expected a mesh with blocks=1, got "
            f"blocks={num_block_devices} (NoProp-DT's blocks split with make_dt_step)"
        )
    if compute_dtype is not None:
        loss_fn = mixed_precision(loss_fn, compute_dtype)
    grad_fn = eqx.filter_value_and_grad(loss_fn, has_aux=True)

    def step(model, opt_state, batch, key):
        batch = eqx.filter_shard(batch, batch_sharding(mesh))
        (_, aux), grads = grad_fn(model, batch, key)
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        model, opt_state = _constrain(eqx.apply_updates(model, updates), opt_state, mesh)
        return model, opt_state, aux

    return ParallelStep(step, mesh, compiler_options)


def make_dt_step(
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    *,
    memory: str = "blockwise",
    compute_dtype: Any = None,
    compiler_options: Any = "auto",
) -> ParallelStep:
    """NoProp-DT's step on a 2-D mesh, `jax.shard_map` over ("data", "blocks"): device (d, b)
    holds rows d of the batch and blocks b of the stacked blocks (T / blocks of them) and
    computes only those blocks' Eq. 8 terms on those rows, as `dt_value_and_grad` does.
    `memory`: "blockwise" (the own blocks' gradients unrolled, one call), or one block's
    activations alive at a time: "low-calls" (one call per local block, each writing its
    gradient into a donated buffer), "low-scan" (a rolled `lax.scan`, one call), "low" (the
    one `noprop_eqx.default_low_memory` names for the backend). Then:

    - the own blocks' gradients are summed over `data` (an all-reduce of a 1/blocks share of
      the block parameters per device);
    - the shared parameters' gradients (embedding, readout, a trainable schedule) and the loss
      scalars are summed over both axes: the only traffic across `blocks`;
    - the optimiser update runs where the parameters live (blocks on their own devices).

    Equals `noprop_eqx.make_dt_step(optimizer)` on one device (same draws, same loss and
    gradients up to float rounding)."""
    num_data, num_block_devices = _sizes(mesh)
    if memory not in _MEMORY:
        raise ValueError(f"expected memory to be one of {_MEMORY}, got {memory!r}")
    if memory == "low":
        memory = default_low_memory()
    compute_dtype = check_compute_dtype(compute_dtype)
    local = functools.partial(
        _local_terms, mesh=mesh, unroll=memory == "blockwise", compute_dtype=compute_dtype
    )
    if memory == "low-calls":
        return _BlockByBlockMeshStep(optimizer, mesh, local, compiler_options)

    def step(model, opt_state, batch, key):
        x, y, params, static, block_part, shared_part = _split(model, batch, mesh)
        ce, kl, per_block, shared_grads, block_grads = jax.shard_map(
            functools.partial(local, static),
            mesh=mesh,
            in_specs=(P("blocks"), P(), P("data"), P("data"), P()),
            out_specs=(P(), P(), P("blocks"), P(), P("blocks")),
            # Local gradients, summed explicitly: with check_vma=True, JAX would insert its
            # own sums into the gradients of the replicated inputs, once per block.
            check_vma=False,
        )(block_part, shared_part, x, y, key)
        (_, aux), grads = finish_dt_terms(model, ce, kl, per_block, shared_grads, block_grads)
        return (*_update(optimizer, model, opt_state, params, grads, mesh), aux)

    return ParallelStep(step, mesh, compiler_options)


_MEMORY = ("blockwise", "low", "low-calls", "low-scan")


def _split(model, batch, mesh):
    """The batch on the mesh, and the model as (params, static, blocks-only, shared-only)."""
    if not isinstance(model, NoPropDT):
        raise TypeError(f"expected a NoPropDT model, got {type(model).__name__}")
    x, y = eqx.filter_shard(batch, batch_sharding(mesh))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    # Two trees of the model's structure: the blocks' arrays only, the rest only.
    block_part = eqx.tree_at(lambda m: m.blocks, _nones(params), params.blocks)
    shared_part = eqx.tree_at(lambda m: m.blocks, params, _nones(params.blocks))
    return x, y, params, static, block_part, shared_part


def _update(optimizer, model, opt_state, params, grads, mesh):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return _constrain(eqx.apply_updates(model, updates), opt_state, mesh)


def _psum(tree, axes, mesh):
    """psum over the axes of more than one device (XLA keeps a trivial one)."""
    axes = tuple(a for a in axes if mesh.shape[a] > 1)
    return jax.lax.psum(tree, axes) if axes else tree


def _local_terms(
    static, block_part, shared_part, x, y, key, t=None, *, mesh, unroll, compute_dtype
):
    """Inside `shard_map`, on device (d, b): the terms of its own blocks (all of them, or only
    its local block `t`) on its own rows, then the sums across devices."""
    num_data, num_block_devices = _sizes(mesh)
    model = eqx.combine(block_part, shared_part, static)
    local_blocks = model.num_blocks // num_block_devices
    offset = jax.lax.axis_index("blocks") * local_blocks
    first = 1.0
    if t is not None:  # one block: slice it out; the head counts in call t = 0 only
        one = jax.tree.map(
            lambda a: jax.lax.dynamic_slice_in_dim(a, t, 1),
            eqx.filter(model.blocks, eqx.is_array),
        )
        rest = eqx.filter(model.blocks, eqx.is_array, inverse=True)
        model = eqx.tree_at(lambda m: m.blocks, model, eqx.combine(one, rest))
        offset, first = offset + t, (t == 0).astype(jnp.float32)
    terms = dt_local_terms(
        model,
        x,
        y,
        key,
        unroll=True if t is not None else unroll,
        compute_dtype=compute_dtype,
        block_offset=offset,
        batch_offset=jax.lax.axis_index("data") * x.shape[0],
        global_batch=x.shape[0] * num_data,
    )
    # The head (CE + KL) is computed identically by every device of a `blocks` row: its share
    # 1/blocks makes one sum over both axes count it once.
    shared = jax.tree.map(
        lambda h, b: first * h / num_block_devices + b,
        terms.head_grads,
        terms.block_shared_grads,
    )
    shared = _psum(shared, ("data", "blocks"), mesh)
    ce, kl = _psum((first * terms.ce, first * terms.kl), ("data",), mesh)
    block_grads, per_block = _psum((terms.block_grads, terms.per_block), ("data",), mesh)
    return ce, kl, per_block, shared, block_grads


class _BlockByBlockMeshStep:
    """`make_dt_step(..., memory="low-calls")` on a mesh: call t computes every device's local
    block t (`shard_map`) and writes its gradient into a donated buffer in place; a last call
    applies the optimiser. One block's activations per device at a time."""

    def __init__(self, optimizer, mesh, local, compiler_options):
        self.mesh, self.optimizer = mesh, optimizer
        jit_kwargs = jit_options(compiler_options)

        def block_call(inputs, buffer, t):
            model, batch, key = inputs
            x, y, _, static, block_part, shared_part = _split(model, batch, mesh)
            gb_blocks, gb_shared, ce, kl = buffer

            def on_device(block_part, shared_part, x, y, key, t, gb_blocks, gb_shared):
                ce, kl, per_block, shared, block_grads = local(
                    static, block_part, shared_part, x, y, key, t
                )
                gb_blocks = jax.tree.map(
                    lambda g, b: jax.lax.dynamic_update_slice_in_dim(g, b, t, 0),
                    gb_blocks,
                    block_grads,
                )
                gb_shared = jax.tree.map(jnp.add, gb_shared, shared)
                return gb_blocks, gb_shared, ce, kl, per_block

            gb_blocks, gb_shared, ce_t, kl_t, per_block = jax.shard_map(
                on_device,
                mesh=mesh,
                in_specs=(P("blocks"), P(), P("data"), P("data"), P(), P(), P("blocks"), P()),
                out_specs=(P("blocks"), P(), P(), P(), P("blocks")),
                check_vma=False,
            )(block_part, shared_part, x, y, key, t, gb_blocks, gb_shared)
            return (gb_blocks, gb_shared, ce + ce_t, kl + kl_t), per_block

        def update(buffer, model, opt_state, per_block):
            gb_blocks, shared, ce, kl = buffer
            params = eqx.filter(model, eqx.is_inexact_array)
            (_, aux), grads = finish_dt_terms(model, ce, kl, per_block, shared, gb_blocks)
            return (*_update(optimizer, model, opt_state, params, grads, mesh), aux)

        self._block_call = eqx.filter_jit(block_call, donate="all-except-first", **jit_kwargs)
        self._update = eqx.filter_jit(update, donate="all-except-first", **jit_kwargs)

    def __call__(self, model, opt_state, batch, key):
        batch = shard_batch(batch, self.mesh)
        num_block_devices = self.mesh.shape["blocks"]
        local_blocks = model.num_blocks // num_block_devices
        params = eqx.filter(model, eqx.is_inexact_array)
        zeros = functools.partial(jax.tree.map, jnp.zeros_like)
        shared = eqx.tree_at(lambda m: m.blocks, params, None)
        buffer = (zeros(params.blocks), zeros(shared), jnp.zeros(()), jnp.zeros(()))
        per_block = []
        for t in range(local_blocks):
            buffer, value = self._block_call((model, batch, key), buffer, jnp.asarray(t))
            per_block.append(value)
        # Call t gave block b * local_blocks + t of every blocks-device b: put them in order.
        per_block = jnp.stack(per_block).T.reshape(-1)
        return self._update(buffer, model, opt_state, per_block)


def _nones(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda _: None, tree)


@functools.cache
def _count_correct(mesh: Mesh, spec: P):
    sharding = NamedSharding(mesh, spec)

    @eqx.filter_jit
    def count(model, x, y, num_valid, predict_kwargs, key):
        x = eqx.filter_shard(x, sharding)
        kwargs = dict(predict_kwargs)
        if key is not None:
            kwargs["key"] = key
        hits = (model.predict(x, **kwargs) == y) & (jnp.arange(x.shape[0]) < num_valid)
        return jnp.sum(hits)

    return count


def evaluate_accuracy(
    model: eqx.Module,
    x: np.ndarray,
    y: np.ndarray,
    mesh: Mesh,
    *,
    batch_size: int = 1000,
    key: PRNGKeyArray | None = None,
    **predict_kwargs,
) -> float:
    """`noprop_eqx.evaluate_accuracy` on a mesh: the model replicated, each test batch of
    `batch_size` rows split over all the mesh's devices. The batches, their padding and the
    keys are those of `noprop_eqx.evaluate_accuracy`, so the accuracy is the same, stochastic
    read-outs included (their draws depend on the batch shape). A batch size that does not
    divide by the number of devices is evaluated whole on every device."""
    if len(x) != len(y):
        raise ValueError(f"expected as many labels as images, got {len(y)} labels, {len(x)} images")
    batch_size = min(batch_size, len(x))
    spec = P(AXES) if batch_size % mesh.devices.size == 0 else P()
    sharding = NamedSharding(mesh, spec)
    replicated = jax.tree.map(
        lambda leaf: NamedSharding(mesh, P()) if eqx.is_array(leaf) else None, model
    )
    model = _put(gather(model), replicated)
    count = _count_correct(mesh, spec)
    correct = 0
    for i, (xb, yb, n) in enumerate(eval_batches(x, y, batch_size)):
        k = None if key is None else jax.random.fold_in(key, i)
        xb, yb = _put((xb, yb), (sharding, sharding))
        correct += int(count(model, xb, yb, n, tuple(sorted(predict_kwargs.items())), k))
    return correct / len(x)


def gather(tree: PyTree) -> PyTree:
    """Every JAX array of `tree` as a full numpy array in this process (from every process's
    devices): what a checkpoint writes."""

    def get(leaf):
        if not isinstance(leaf, jax.Array):
            return leaf
        if leaf.is_fully_addressable:
            return np.asarray(leaf)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

    return jax.tree.map(get, tree)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_count: int | None = None,
) -> None:
    """`jax.distributed.initialize` for a run over several processes (hosts). Arguments left as
    None come from the environment as JAX reads it (cluster autodetection, or
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID). On CPU the processes exchange
    data with gloo, and `local_device_count` sets each process's number of CPU devices. Call it
    first, before any other JAX computation, in every process."""
    if local_device_count is not None:
        jax.config.update("jax_num_cpu_devices", local_device_count)
    if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
