"""XLA compiler options for the compiled training and evaluation steps, per backend.

On XLA:CPU (jaxlib 0.10) the experimental YNNPACK fusions make the convolution-heavy NoProp steps
slower: with them switched off, the paper-network NoProp-DT step runs about 1.5x faster
(`benchmarks/train_throughput.py --compiler-options none|auto` measures it). The options apply
to the steps this library compiles only, never process-wide, and are checked once against the
installed jaxlib: an option it does not know is dropped with a warning.
"""

import functools
import warnings
from typing import Literal

import jax

CPU_COMPILER_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": ""}

CompilerOptions = dict[str, str] | Literal["auto"] | None


def default_compiler_options(backend: str | None = None) -> dict[str, str]:
    """The options `"auto"` stands for on `backend` (default: JAX's default backend):
    `CPU_COMPILER_OPTIONS` on CPU where the installed jaxlib accepts them, nothing elsewhere."""
    backend = jax.default_backend() if backend is None else backend
    return dict(_accepted_cpu_options()) if backend == "cpu" else {}


def resolve_compiler_options(options: CompilerOptions) -> dict[str, str] | None:
    """`"auto"` → `default_compiler_options()`; None → XLA's defaults; a dict is used as given.
    Returns None for "no options", the form `jax.jit(compiler_options=...)` expects."""
    if options == "auto":
        options = default_compiler_options()
    elif options is not None and not isinstance(options, dict):
        raise TypeError(f"expected compiler_options to be 'auto', None or a dict, got {options!r}")
    return dict(options) if options else None


def jit_options(options: CompilerOptions) -> dict[str, dict[str, str]]:
    """Keyword arguments for `jax.jit`/`eqx.filter_jit`: `{"compiler_options": ...}` when
    `options` resolves to any, else nothing (so no keyword reaches a JAX/Equinox version that
    would not know it on backends that need none)."""
    resolved = resolve_compiler_options(options)
    return {"compiler_options": resolved} if resolved else {}


@functools.cache
def _accepted_cpu_options() -> tuple[tuple[str, str], ...]:
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(1.0).compile()
    except Exception as error:  # the option is unknown to this jaxlib
        warnings.warn(
            f"noprop_eqx: this jaxlib rejects the CPU compiler options {CPU_COMPILER_OPTIONS} "
            f"({type(error).__name__}: {error}); compiling with XLA's defaults instead",
            stacklevel=3,
        )
        return ()
    return tuple(CPU_COMPILER_OPTIONS.items())
