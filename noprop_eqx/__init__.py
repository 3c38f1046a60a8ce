"""noprop-eqx: NoProp (Li, Teh, Pascanu 2025) in JAX, Equinox and Diffrax."""

from . import data as data, models as models, noise_schedules as noise_schedules, utils as utils
from ._backprop import BackpropBaseline as BackpropBaseline
from ._ct import NoPropCT as NoPropCT
from ._dt import NoPropDT as NoPropDT
from ._embeddings import (
    AbstractClassEmbedding as AbstractClassEmbedding,
    LearnedEmbedding as LearnedEmbedding,
    OneHotEmbedding as OneHotEmbedding,
    PrototypeEmbedding as PrototypeEmbedding,
)
from ._fm import NoPropFM as NoPropFM
from ._losses import (
    expected_embedding as expected_embedding,
    flow_matching_term as flow_matching_term,
    kl_to_standard_normal as kl_to_standard_normal,
    readout_cross_entropy as readout_cross_entropy,
    sample_q as sample_q,
    weighted_denoising_term as weighted_denoising_term,
)
from ._solve import ODESolution as ODESolution, integrate as integrate
from ._train import (
    evaluate_accuracy as evaluate_accuracy,
    init_optimizer_state as init_optimizer_state,
    make_step as make_step,
    paper_optimizer as paper_optimizer,
)

__version__ = "0.1.0"

__all__ = [
    "AbstractClassEmbedding",
    "BackpropBaseline",
    "LearnedEmbedding",
    "NoPropCT",
    "NoPropDT",
    "NoPropFM",
    "ODESolution",
    "OneHotEmbedding",
    "PrototypeEmbedding",
    "data",
    "evaluate_accuracy",
    "expected_embedding",
    "flow_matching_term",
    "init_optimizer_state",
    "integrate",
    "kl_to_standard_normal",
    "make_step",
    "models",
    "noise_schedules",
    "paper_optimizer",
    "readout_cross_entropy",
    "sample_q",
    "utils",
    "weighted_denoising_term",
]
