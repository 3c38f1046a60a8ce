"""A resumable, observable training loop built from plain functions.

Nothing here holds hidden state: `build_model` makes a variant from a configuration dict,
`epoch_keys` derives an epoch's keys from the run's base key and the epoch number alone (so a
resumed run draws exactly the numbers an uninterrupted one would), and `train_epoch` runs one
shuffled pass of a compiled step, returning the new model, optimizer state and the epoch's mean
loss terms.
"""

import functools
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree

from ._backprop import BackpropBaseline
from ._ct import NoPropCT
from ._dt import NoPropDT
from ._embeddings import PrototypeEmbedding
from ._fm import NoPropFM
from ._train import evaluate_accuracy
from .data import num_train_batches, train_batches
from .noise_schedules import CosineNoiseSchedule, LearnedNoiseSchedule

VARIANTS: dict[str, type[eqx.Module]] = {
    "DT": NoPropDT,
    "CT": NoPropCT,
    "FM": NoPropFM,
    "BP": BackpropBaseline,
}
EMBEDDINGS = ("one-hot", "learned", "prototype")
SOLVERS: dict[str, Callable[[], diffrax.AbstractSolver]] = {
    "euler": diffrax.Euler,
    "heun": diffrax.Heun,
    "tsit5": diffrax.Tsit5,
}
# The read-outs `--eval-solver` can name: the ODE solvers, and NoProp-CT's Eq. 3 recurrence on
# a grid of `--eval-steps` steps (`NoPropCT.recurrence`).
EVAL_SOLVERS = (*sorted(SOLVERS), "recurrence")


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown variant {variant!r}: expected one of {', '.join(VARIANTS)} "
            "(DT/CT/FM = NoProp-DT/CT/FM, BP = the backprop baseline)"
        )
    return variant


def resolve_embed_dim(
    embedding: str, embed_dim: int | None, num_classes: int, image_shape: tuple[int, ...]
) -> int:
    """The embedding dimension a variant will get: m for one-hot, C·H·W for prototype,
    `embed_dim` (default 20) for learned. An explicit `embed_dim` that contradicts a fixed
    dimension is an error rather than being silently ignored."""
    if embedding not in EMBEDDINGS:
        raise ValueError(f"expected embedding to be one of {EMBEDDINGS}, got {embedding!r}")
    if embed_dim is not None and not (isinstance(embed_dim, int) and embed_dim > 0):
        raise ValueError(f"expected embed_dim to be a positive int, got {embed_dim!r}")
    fixed = {"one-hot": num_classes, "prototype": math.prod(image_shape)}.get(embedding)
    if fixed is None:
        return 20 if embed_dim is None else embed_dim
    if embed_dim is not None and embed_dim != fixed:
        what = (
            f"the number of classes ({num_classes})"
            if embedding == "one-hot"
            else f"the image size C*H*W = {'*'.join(map(str, image_shape))} = {fixed}"
        )
        raise ValueError(
            f"--embed-dim {embed_dim} does not fit the {embedding} embedding, whose dimension "
            f"is {what}; drop --embed-dim or pass --embed-dim {fixed}"
        )
    return fixed


def build_model(
    variant: str,
    *,
    num_classes: int,
    image_shape: tuple[int, int, int],
    backbone: str = "paper",
    embedding: str = "one-hot",
    embed_dim: int | None = None,
    num_blocks: int = 10,
    x_train: np.ndarray | None = None,
    y_train: np.ndarray | None = None,
    prototype_scale: str | None = None,
    fixed_embedding: bool = False,
    ct_gamma_init: Sequence[float] | None = None,
    ct_fixed_schedule: bool = False,
    ct_weighting: str | None = None,
    fm_z_input: str | None = None,
    dt_alpha_bar_max: float | None = None,
    key: PRNGKeyArray,
) -> eqx.Module:
    """One of `VARIANTS` with the given backbone ("paper" or "simple") and embedding.
    "prototype" needs the training images and labels (`x_train`, `y_train`) and takes
    `prototype_scale` (see `PrototypeEmbedding`; None means raw) and `fixed_embedding` (keep
    the prototypes as built instead of training them); `num_blocks` (T, paper: 10) applies to
    DT and BP; `ct_gamma_init` (CT only; None: `LearnedNoiseSchedule`'s default) sets the
    learned schedule's starting γ at t = 1 and t = 0, and `ct_fixed_schedule` (CT only) holds
    it there (`LearnedNoiseSchedule(fixed=True)`); `ct_weighting` (CT only; None: the paper's
    "snr-prime") weights CT's denoising term (`NoPropCT(weighting=...)`); `fm_z_input` (FM
    only; None: the paper's "full") is what FM's network sees of z (`NoPropFM(z_input=...)`);
    `dt_alpha_bar_max` (DT only; None: `CosineNoiseSchedule`'s 0.9999) sets the ceiling on ᾱ
    of DT's cosine schedule."""
    if fixed_embedding and embedding != "prototype":
        raise ValueError(
            f"fixed_embedding applies to the prototype embedding only, got {embedding!r} "
            "(one-hot embeddings are always fixed)"
        )
    cls = VARIANTS[check_variant(variant)]
    extra = dict(num_blocks=num_blocks) if variant in ("DT", "BP") else {}
    if ct_fixed_schedule and variant != "CT":
        raise ValueError(f"ct_fixed_schedule applies to variant 'CT' only, got {variant!r}")
    if ct_weighting is not None:
        if variant != "CT":
            raise ValueError(f"ct_weighting applies to variant 'CT' only, got {variant!r}")
        extra["weighting"] = ct_weighting
    if fm_z_input is not None:
        if variant != "FM":
            raise ValueError(f"fm_z_input applies to variant 'FM' only, got {variant!r}")
        extra["z_input"] = fm_z_input
    if variant == "CT" and (ct_gamma_init is not None or ct_fixed_schedule):
        # NoPropCT draws its schedule's key as the third of jr.split(key, 3).
        k_schedule = jr.split(key, 3)[2]
        extra["schedule"] = LearnedNoiseSchedule(
            *(ct_gamma_init or ()), fixed=ct_fixed_schedule, key=k_schedule
        )
    if variant == "DT" and dt_alpha_bar_max is not None:
        extra["schedule"] = CosineNoiseSchedule(alpha_bar_max=dt_alpha_bar_max)
    dim = resolve_embed_dim(embedding, embed_dim, num_classes, image_shape)
    spec: Any = embedding
    if embedding == "prototype":
        if x_train is None or y_train is None:
            raise ValueError("the prototype embedding needs the training images and labels")
        spec = PrototypeEmbedding(
            x_train, y_train, num_classes, scale=prototype_scale or "raw", fixed=fixed_embedding
        )
    return cls(
        num_classes,
        tuple(image_shape),
        backbone=backbone,
        embedding=spec,
        embed_dim=dim,
        key=key,
        **extra,
    )


def run_keys(seed: int, variant: str) -> tuple[PRNGKeyArray, PRNGKeyArray]:
    """(model key, training key) of a `noprop-eqx train` run: functions of the seed and the
    variant only, not of which other variants run."""
    k_model, k_train = jr.split(jr.fold_in(jr.key(seed), list(VARIANTS).index(variant)))
    return k_model, k_train


def epoch_keys(base_key: PRNGKeyArray, epoch: int) -> tuple[PRNGKeyArray, PRNGKeyArray]:
    """(shuffle key, step key) of 1-based `epoch`: functions of `base_key` and `epoch` only."""
    return tuple(jr.split(jr.fold_in(base_key, epoch)))  # type: ignore[return-value]


_AUGMENT_STREAM = 0x61756721  # fold_in data naming the augmentation keys' stream


def augment_key(base_key: PRNGKeyArray, epoch: int) -> PRNGKeyArray:
    """The augmentation key of 1-based `epoch` (batch i uses `fold_in` of it with i): a function
    of `base_key` and `epoch` only, and apart from both keys of `epoch_keys`, so turning
    augmentation on leaves the shuffle and the step keys as they were."""
    return jr.fold_in(jr.fold_in(base_key, epoch), _AUGMENT_STREAM)


def solver_kwargs(variant: str, solver: str = "heun", num_steps: int = 20) -> dict:
    """Keywords for `model.predict` of a CT/FM model (none for DT/BP)."""
    if variant not in ("CT", "FM"):
        return {}
    if solver not in EVAL_SOLVERS:
        raise ValueError(f"expected a solver in {list(EVAL_SOLVERS)}, got {solver!r}")
    if solver == "recurrence" and variant != "CT":
        raise ValueError(
            f"the 'recurrence' read-out (Eq. 3 on a time grid) needs a noise schedule, which "
            f"NoProp-CT has and {variant} has not; read {variant} out with an ODE solver, one "
            f"of {sorted(SOLVERS)}"
        )
    if solver == "tsit5":
        controller = diffrax.PIDController(rtol=1e-3, atol=1e-3)
        return dict(solver=diffrax.Tsit5(), stepsize_controller=controller)
    if not (isinstance(num_steps, int) and num_steps >= 1):
        raise ValueError(f"expected a positive number of solver steps, got {num_steps!r}")
    if solver == "recurrence":
        return dict(sampler="recurrence", num_steps=num_steps)
    return dict(solver=SOLVERS[solver](), num_steps=num_steps)


class ProgressBar:
    """A tiny progress bar on a text stream: `update(done, **fields)` redraws at most every
    `interval` seconds. On a terminal it redraws one line; otherwise (a log file) it prints a
    line at each tenth of the way."""

    def __init__(
        self, total: int, *, desc: str = "", stream: TextIO | None = None, interval: float = 0.25
    ):
        self.total, self.desc, self.interval = total, desc, interval
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = self._last = time.perf_counter()
        self._tenth = 0

    def _line(self, done: int, fields: Mapping[str, str]) -> str:
        width = 24
        filled = int(width * done / max(self.total, 1))
        extra = " ".join(f"{k} {v}" for k, v in fields.items())
        return f"{self.desc} |{'#' * filled}{'.' * (width - filled)}| {done}/{self.total} {extra}"

    def due(self, done: int) -> bool:
        """Whether `update(done, ...)` would draw (so callers can skip computing its fields)."""
        if done >= self.total:
            return True
        if self.tty:
            return time.perf_counter() - self._last >= self.interval
        return done * 10 >= (self._tenth + 1) * self.total

    def update(self, done: int, **fields: str) -> None:
        if not self.due(done):
            return
        if self.tty:
            self.stream.write("\r" + self._line(done, fields))
        else:
            self._tenth = done * 10 // max(self.total, 1)
            self.stream.write(self._line(done, fields) + "\n")
        self.stream.flush()
        self._last = time.perf_counter()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _scalar_means(totals: dict, count: int) -> dict[str, float | list[float]]:
    out: dict[str, float | list[float]] = {}
    for name, value in totals.items():
        value = np.asarray(value) / count
        out[name] = float(value) if value.ndim == 0 else [float(v) for v in value]
    return out


def _rate(steps: int, batch_size: int, elapsed: float, first: float, images: int) -> float:
    """Images per second over the `steps` after the first call (which may include
    compilation); over all `images` so far while there are none."""
    if steps == 0:
        return images / max(elapsed, 1e-9)
    return steps * batch_size / max(elapsed - first, 1e-9)


def default_steps_per_call(num_batches: int, backend: str | None = None) -> int:
    """What `steps_per_call="auto"` means for an epoch of `num_batches` on `backend` (default:
    JAX's default backend): 1 on CPU (convolutions inside a scan's loop body are slow on
    XLA:CPU), elsewhere the epoch in about 10 scanned calls (the progress bar still moves)."""
    backend = jax.default_backend() if backend is None else backend
    return 1 if backend == "cpu" else max(1, math.ceil(num_batches / 10))


def train_epoch(
    step: Callable,
    model: PyTree,
    opt_state: PyTree,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    key: PRNGKeyArray,
    epoch: int,
    desc: str = "",
    stream: TextIO | None = None,
    progress: bool = True,
    steps_per_call: int | str = 1,
    augment: Callable[..., Any] | None = None,
) -> tuple[PyTree, PyTree, dict[str, Any]]:
    """One shuffled pass over `(x, y)` with `step(model, opt_state, batch, key)`.

    Keys come from `epoch_keys(key, epoch)`; batch i gets `fold_in(step_key, i)`.
    `steps_per_call` > 1 runs that many steps per compiled call through `step.scan` (a
    `CompiledStep` from `make_step`/`make_dt_step`): the same batches and keys, so the same
    trajectory up to float rounding, without the per-step dispatch cost; a shorter last call
    compiles once more. "auto": `default_steps_per_call`.

    `augment(images, *, key)`, if given, transforms each batch's images before its step (for
    example `functools.partial(data.random_shift, max_shift=2, fill=ds.background)`); batch i
    gets `fold_in(augment_key(key, epoch), i)`.

    **Returns:** `(model, opt_state, stats)` with `stats["loss_terms"]` the epoch means of every
    entry of the step's `aux` (vectors, such as DT's per-block loss, stay vectors),
    `stats["time"]` the wall time of the epoch, `stats["first_step_time"]` that of its first
    call (which includes compilation in a fresh process) and `stats["images_per_s"]`, the
    throughput of the other calls (of all calls when there is only one).
    """
    k_shuffle, k_steps = epoch_keys(key, epoch)
    total = num_train_batches(len(x), batch_size)
    if steps_per_call == "auto":
        steps_per_call = default_steps_per_call(total)
    if not (isinstance(steps_per_call, int) and steps_per_call >= 1):
        raise ValueError(
            f"expected steps_per_call a positive int or 'auto', got {steps_per_call!r}"
        )
    if steps_per_call > 1 and not hasattr(step, "scan"):
        raise TypeError(
            "steps_per_call > 1 needs a step with a .scan method (a CompiledStep from make_step "
            f"or make_dt_step), got {type(step).__name__}"
        )
    bar = ProgressBar(total, desc=desc, stream=stream) if progress else None
    totals: dict | None = None
    start = time.perf_counter()
    first_step, first_count = 0.0, 0
    batches = train_batches(x, y, batch_size, key=k_shuffle)
    if augment is not None:
        k_augment = augment_key(key, epoch)
        batches = (
            (augment(bx, key=jr.fold_in(k_augment, i)), by) for i, (bx, by) in enumerate(batches)
        )
    done = 0
    while done < total:
        if steps_per_call == 1:
            batch = next(batches)
            model, opt_state, aux = step(model, opt_state, batch, jr.fold_in(k_steps, done))
            count = 1
        else:
            chunk = [next(batches) for _ in range(min(steps_per_call, total - done))]
            count = len(chunk)
            stack_x = np.stack if augment is None else jnp.stack  # augmented: device arrays
            stacked = (stack_x([b[0] for b in chunk]), np.stack([b[1] for b in chunk]))
            keys = jax.vmap(jr.fold_in, (None, 0))(k_steps, jnp.arange(done, done + count))
            model, opt_state, aux = step.scan(model, opt_state, stacked, keys)
            aux = jax.tree.map(lambda a: jnp.sum(a, axis=0), aux)
        totals = aux if totals is None else jax.tree.map(jnp.add, totals, aux)
        done += count
        if first_count == 0:  # includes compilation in a fresh process: timed apart
            jax.block_until_ready(totals)
            first_step, first_count = time.perf_counter() - start, count
        if bar is not None and bar.due(done):  # only then wait for the device
            elapsed = time.perf_counter() - start
            running = float(totals["loss"]) / done
            rate = _rate(done - first_count, batch_size, elapsed, first_step, done * batch_size)
            bar.update(done, loss=f"{running:.4f}", **{"img/s": f"{rate:.0f}"})
    if totals is None:
        raise ValueError("expected at least one training example, got none")
    totals = jax.device_get(totals)
    elapsed = time.perf_counter() - start
    if bar is not None:
        bar.close()
    steady = (
        (total - first_count, elapsed - first_step) if total > first_count else (total, elapsed)
    )
    stats = dict(
        loss_terms=_scalar_means(totals, total),
        time=elapsed,
        first_step_time=first_step,
        images_per_s=steady[0] * batch_size / max(steady[1], 1e-9),
        num_batches=total,
    )
    return model, opt_state, stats


def train_epoch_seeds(
    step: Callable,
    models: PyTree,
    opt_states: PyTree,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    keys: Sequence[PRNGKeyArray],
    epoch: int,
    desc: str = "",
    stream: TextIO | None = None,
    progress: bool = True,
    augment: Callable[..., Any] | None = None,
) -> tuple[PyTree, PyTree, list[dict[str, Any]]]:
    """`train_epoch` for several seeds at once: `step` is a `SeedsStep`, `models` and
    `opt_states` are stacked along a leading seed axis, and seed i's batches and step keys
    are exactly those `train_epoch(..., key=keys[i], epoch=epoch)` would use (its own data
    order, augmentation and keys). Returns the stacked models and optimiser states and one
    `stats` dict per seed (as `train_epoch`'s; the times are those of the joint epoch)."""
    count = len(keys)
    total = num_train_batches(len(x), batch_size)
    streams = []
    for key in keys:
        k_shuffle, k_steps = epoch_keys(key, epoch)
        batches = train_batches(x, y, batch_size, key=k_shuffle)
        if augment is not None:
            batches = _augmented(batches, augment, augment_key(key, epoch))
        streams.append((batches, k_steps))
    bar = ProgressBar(total, desc=desc, stream=stream) if progress else None
    totals = None
    start = time.perf_counter()
    first_step = 0.0
    for done in range(total):
        chunk = [next(batches) for batches, _ in streams]
        stack_x = np.stack if augment is None else jnp.stack
        stacked = (stack_x([b[0] for b in chunk]), np.stack([b[1] for b in chunk]))
        step_keys = jnp.stack([jr.fold_in(k_steps, done) for _, k_steps in streams])
        models, opt_states, aux = step(models, opt_states, stacked, step_keys)
        totals = aux if totals is None else jax.tree.map(jnp.add, totals, aux)
        if done == 0:
            jax.block_until_ready(totals)
            first_step = time.perf_counter() - start
        if bar is not None and bar.due(done + 1):
            elapsed = time.perf_counter() - start
            images = (done + 1) * batch_size * count
            rate = _rate(done, batch_size * count, elapsed, first_step, images)
            running = float(jnp.mean(totals["loss"])) / (done + 1)
            # All seeds' images, and one seed's share as in the epoch lines.
            shown = f"{rate:.0f} ({rate / count:.0f} a seed)"
            bar.update(done + 1, loss=f"{running:.4f}", **{"img/s": shown})
    if totals is None:
        raise ValueError("expected at least one training example, got none")
    totals = jax.device_get(totals)
    elapsed = time.perf_counter() - start
    if bar is not None:
        bar.close()
    steady = (total - 1, elapsed - first_step) if total > 1 else (total, elapsed)
    stats = [
        dict(
            loss_terms=_scalar_means(jax.tree.map(lambda a, i=i: a[i], totals), total),
            time=elapsed,
            first_step_time=first_step,
            images_per_s=steady[0] * batch_size / max(steady[1], 1e-9),
            num_batches=total,
            seeds_in_step=count,
        )
        for i in range(count)
    ]
    return models, opt_states, stats


def _augmented(batches, augment, k_augment):
    """Batch i's images through `augment` with `fold_in(k_augment, i)`, as `train_epoch` does."""
    for i, (bx, by) in enumerate(batches):
        yield augment(bx, key=jr.fold_in(k_augment, i)), by


def inference_key(seed: int) -> PRNGKeyArray:
    """The key of a run's final stochastic read-out (`noprop-eqx train` with `--seed seed`):
    `fold_in(key(seed), 1_000_003)`, split once per inference run by `stochastic_accuracy`."""
    return jr.fold_in(jr.key(seed), 1_000_003)


def stochastic_accuracy(
    model: eqx.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    key: PRNGKeyArray,
    runs: int = 5,
    evaluate: Callable[..., float] | None = None,
    **predict_kwargs,
) -> dict[str, Any]:
    """Accuracy over `runs` independent stochastic inference passes (`key` split `runs` ways):
    mean, standard error (std / √runs, ddof=1) and the individual accuracies. `evaluate(x, y,
    key=..., **predict_kwargs)` replaces `evaluate_accuracy(model, ...)` when given (for
    example `parallel.evaluate_accuracy` on a mesh)."""
    if runs < 2:
        raise ValueError(f"expected at least 2 runs for a standard error, got {runs}")
    if evaluate is None:
        evaluate = functools.partial(evaluate_accuracy, model)
    accs = [evaluate(x, y, key=k, **predict_kwargs) for k in jr.split(key, runs)]
    return dict(
        mean=float(np.mean(accs)),
        se=float(np.std(accs, ddof=1) / np.sqrt(runs)),
        runs=[float(a) for a in accs],
    )
