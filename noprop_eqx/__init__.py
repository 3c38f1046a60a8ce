"""noprop-eqx: NoProp (Li, Teh, Pascanu 2025) in JAX, Equinox and Diffrax."""

from . import (
    data as data,
    models as models,
    noise_schedules as noise_schedules,
    parallel as parallel,
    utils as utils,
)
from ._backprop import BackpropBaseline as BackpropBaseline
from ._batch_norm import (
    has_batch_norm as has_batch_norm,
    recalibrate_batch_norm as recalibrate_batch_norm,
)
from ._checkpoint import (
    load_checkpoint as load_checkpoint,
    load_run as load_run,
    save_checkpoint as save_checkpoint,
)
from ._config import ConfigError as ConfigError, RunConfig as RunConfig
from ._continuous import AbstractContinuousNoProp as AbstractContinuousNoProp
from ._ct import NoPropCT as NoPropCT
from ._dt import NoPropDT as NoPropDT, default_dt_strategy as default_dt_strategy
from ._dt_step import (
    DTTerms as DTTerms,
    default_dt_memory as default_dt_memory,
    default_low_memory as default_low_memory,
    dt_local_terms as dt_local_terms,
    dt_value_and_grad as dt_value_and_grad,
    make_dt_step as make_dt_step,
)
from ._embeddings import (
    AbstractClassEmbedding as AbstractClassEmbedding,
    LearnedEmbedding as LearnedEmbedding,
    OneHotEmbedding as OneHotEmbedding,
    PrototypeEmbedding as PrototypeEmbedding,
)
from ._evaluate import evaluate_run as evaluate_run, evaluate_runs as evaluate_runs
from ._fm import NoPropFM as NoPropFM
from ._loop import (
    augment_key as augment_key,
    build_model as build_model,
    default_steps_per_call as default_steps_per_call,
    epoch_keys as epoch_keys,
    inference_key as inference_key,
    stochastic_accuracy as stochastic_accuracy,
    train_epoch as train_epoch,
)
from ._losses import (
    ct_denoising_weight as ct_denoising_weight,
    expected_embedding as expected_embedding,
    flow_matching_term as flow_matching_term,
    kl_to_standard_normal as kl_to_standard_normal,
    readout_cross_entropy as readout_cross_entropy,
    sample_q as sample_q,
    sample_times as sample_times,
    weighted_denoising_term as weighted_denoising_term,
)
from ._records import RunFileError as RunFileError
from ._run import TrainingDiverged as TrainingDiverged, train as train
from ._run_seeds import protocol_statistic as protocol_statistic
from ._seeds import (
    SeedsStep as SeedsStep,
    default_seeds_form as default_seeds_form,
    make_seeds_step as make_seeds_step,
    stack_trees as stack_trees,
    unstack_tree as unstack_tree,
)
from ._solve import ODESolution as ODESolution, integrate as integrate
from ._train import (
    CompiledStep as CompiledStep,
    cast_floating as cast_floating,
    evaluate_accuracy as evaluate_accuracy,
    init_optimizer_state as init_optimizer_state,
    make_step as make_step,
    mixed_precision as mixed_precision,
    paper_optimizer as paper_optimizer,
)
from ._xla import (
    CPU_COMPILER_OPTIONS as CPU_COMPILER_OPTIONS,
    default_compiler_options as default_compiler_options,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "RunConfig",
    "RunFileError",
    "TrainingDiverged",
    "train",
    "CPU_COMPILER_OPTIONS",
    "AbstractClassEmbedding",
    "AbstractContinuousNoProp",
    "BackpropBaseline",
    "CompiledStep",
    "LearnedEmbedding",
    "NoPropCT",
    "NoPropDT",
    "NoPropFM",
    "ODESolution",
    "SeedsStep",
    "default_seeds_form",
    "make_seeds_step",
    "protocol_statistic",
    "stack_trees",
    "unstack_tree",
    "OneHotEmbedding",
    "PrototypeEmbedding",
    "augment_key",
    "build_model",
    "cast_floating",
    "ct_denoising_weight",
    "data",
    "default_compiler_options",
    "DTTerms",
    "default_low_memory",
    "default_dt_memory",
    "dt_local_terms",
    "default_dt_strategy",
    "default_steps_per_call",
    "dt_value_and_grad",
    "epoch_keys",
    "evaluate_accuracy",
    "evaluate_run",
    "evaluate_runs",
    "has_batch_norm",
    "expected_embedding",
    "flow_matching_term",
    "inference_key",
    "init_optimizer_state",
    "integrate",
    "kl_to_standard_normal",
    "load_checkpoint",
    "load_run",
    "make_dt_step",
    "make_step",
    "mixed_precision",
    "models",
    "noise_schedules",
    "paper_optimizer",
    "readout_cross_entropy",
    "recalibrate_batch_norm",
    "sample_q",
    "sample_times",
    "save_checkpoint",
    "stochastic_accuracy",
    "train_epoch",
    "utils",
    "weighted_denoising_term",
]
